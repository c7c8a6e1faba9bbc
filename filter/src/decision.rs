//! The one shape every refusal takes, whichever step of the pipeline made it.
//!
//! A `Rejection` becomes an HTTP answer with the OpenAI error body
//! `{"error":{"type":…,"code":…,"message":…}}`. Messages name the problem and never
//! carry the token or the submitted text.

/// A refusal decided by the filter, answered locally so the sidecar never sees the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status: 400, 401, 403, 404, 405, 413, 415, 429, 500 or 503.
    pub status: u16,
    /// Stable machine-readable reason, also the metric label and log reason code
    /// (for example `token_expired`, `text_too_long`, `rate_limited`).
    pub code: &'static str,
    /// Human-readable explanation without user data.
    pub message: String,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`, rate-limit headers).
    pub headers: Vec<(String, String)>,
}

impl Rejection {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Rejection { status, code, message: message.into(), headers: Vec::new() }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The OpenAI error `type` for this status.
    pub fn error_type(&self) -> &'static str {
        match self.status {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON body sent to the client.
    pub fn body(&self) -> String {
        serde_json::json!({
            "error": { "type": self.error_type(), "code": self.code, "message": self.message }
        })
        .to_string()
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
    }
}
