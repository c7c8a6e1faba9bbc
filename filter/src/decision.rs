//! The one shape every refusal takes, whichever step of the pipeline made it.
//!
//! A `Rejection` becomes an HTTP answer with the error body the sidecar sends too
//! (`voxgate_rules::error`): `{"error":{"type":…,"code":…,"message":…,"param":…}}`.
//! Messages name the problem and never carry the token or the submitted text.

/// A refusal decided by the filter, answered locally so the sidecar never sees the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status: 400, 401, 403, 404, 405, 413, 415, 429, 500 or 503.
    pub status: u16,
    /// Stable machine-readable reason, also the metric label and log reason code
    /// (for example `token_expired`, `input_too_long`, `rate_limited`).
    pub code: &'static str,
    /// Human-readable explanation without user data.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<&'static str>,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`, rate-limit headers).
    pub headers: Vec<(String, String)>,
}

impl From<voxgate_rules::RuleError> for Rejection {
    fn from(error: voxgate_rules::RuleError) -> Self {
        Rejection { param: error.param, ..Rejection::new(error.status, error.code, error.message) }
    }
}

impl Rejection {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Rejection { status, code, message: message.into(), param: None, headers: Vec::new() }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The OpenAI error `type` for this status.
    pub fn error_type(&self) -> &'static str {
        voxgate_rules::error::error_type(self.status)
    }

    /// The JSON body sent to the client.
    pub fn body(&self) -> String {
        voxgate_rules::error::error_body(self.status, self.code, &self.message, self.param)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_error_shape() {
        let r = Rejection::new(429, "rate_limited", "slow down");
        let v: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(v["error"]["message"], "slow down");
        assert!(v["error"]["param"].is_null());
    }
}
