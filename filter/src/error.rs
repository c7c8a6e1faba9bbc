//! The error every configuration section reports: a leaf module, so that sections and the
//! configuration that gathers them never import each other back.

use std::fmt;

/// A configuration problem, naming the offending field by its JSON path
/// (for example `rate_limits.plans.free.requests.capacity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration at `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}
