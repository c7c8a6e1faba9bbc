//! Deny patterns: an operator's regular expressions that refuse a text matching any of them.
//! The filter's own policy on top of the shared text rules (`voxgate_rules::text`), which are
//! checked first: an invisible character cannot split a phrase past a pattern.
//! Messages name the pattern by index, never the text.

use regex_lite::{Regex, RegexBuilder};

use crate::error::ConfigError;
use crate::decision::{Code, Rejection};

/// Most deny patterns, and longest pattern, accepted.
const MAX_PATTERNS: usize = 256;
const MAX_PATTERN_LEN: usize = 4096;
/// Compiled size limit per pattern (regex-lite's own measure), and nesting limit.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;
const PATTERN_NEST_LIMIT: u32 = 64;

#[derive(Debug, Clone, Default)]
pub(crate) struct DenyPatterns {
    deny: Vec<Regex>,
}

impl DenyPatterns {
    pub fn new(patterns: &[String]) -> Result<Self, ConfigError> {
        if patterns.len() > MAX_PATTERNS {
            return Err(ConfigError::new("text.deny_patterns", format!("at most {MAX_PATTERNS} patterns")));
        }
        let deny = patterns
            .iter()
            .enumerate()
            .map(|(index, pattern)| {
                let field = format!("text.deny_patterns[{index}]");
                if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
                    return Err(ConfigError::new(field, format!("must be 1 to {MAX_PATTERN_LEN} bytes long")));
                }
                RegexBuilder::new(pattern)
                    .size_limit(PATTERN_SIZE_LIMIT)
                    .nest_limit(PATTERN_NEST_LIMIT)
                    .build()
                    .map_err(|e| ConfigError::new(field, format!("invalid regular expression: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(DenyPatterns { deny })
    }

    /// Refuses `text` (the value of field `param`) if it matches a pattern.
    pub fn check(&self, param: &'static str, text: &str) -> Result<(), Rejection> {
        match self.deny.iter().position(|pattern| pattern.is_match(text)) {
            Some(index) => Err(Rejection {
                param: Some(param),
                ..Rejection::new(Code::DeniedText, format!("`{param}` matches deny pattern {index}"))
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(patterns: &[&str]) -> DenyPatterns {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        DenyPatterns::new(&patterns).unwrap()
    }

    #[test]
    fn deny_patterns_name_the_pattern_not_the_text() {
        let p = patterns(&["(?i)forbidden phrase", r"\bsecret\b"]);
        let r = p.check("input", "a FORBIDDEN Phrase").unwrap_err();
        assert_eq!((r.code.as_str(), r.message.as_str()), ("denied_text", "`input` matches deny pattern 0"));
        assert_eq!(p.check("input", "top secret!").unwrap_err().message, "`input` matches deny pattern 1");
        assert!(p.check("input", "secretive").is_ok());
    }

    #[test]
    fn bad_patterns_name_their_index() {
        let patterns = vec!["ok".to_string(), "(unclosed".to_string()];
        let e = DenyPatterns::new(&patterns).unwrap_err();
        assert_eq!(e.field, "text.deny_patterns[1]");
        let e = DenyPatterns::new(&[String::new()]).unwrap_err();
        assert_eq!(e.field, "text.deny_patterns[0]");
        let huge = vec!["a{1000}{1000}".to_string()];
        assert_eq!(DenyPatterns::new(&huge).unwrap_err().field, "text.deny_patterns[0]");
    }
}
