//! A request refused for one of the shared rules, and the one error body both sides send.

use serde_json::json;

/// A refused request: what the client must change, and which field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub status: u16,
    /// Stable machine-readable reason (`unknown_voice`, `unsupported_response_format`, …).
    pub code: &'static str,
    /// Names the problem; never repeats the submitted text.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<&'static str>,
}

impl RuleError {
    /// A refusal with no field at fault.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        RuleError {
            status,
            code,
            message: message.into(),
            param: None,
        }
    }

    /// 400 for field `param`.
    pub fn invalid(param: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        RuleError {
            status: 400,
            code,
            message: message.into(),
            param: Some(param),
        }
    }
}

/// 404 for a path no route serves: the paths each API serves are the same on both sides, so
/// either answers a stray path alike.
pub fn unknown_route() -> RuleError {
    RuleError::new(404, "unknown_route", "no route serves this path")
}

/// The OpenAI error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

/// The JSON error body: `param` is always present, `null` when no field is at fault.
pub fn error_body(status: u16, code: &str, message: &str, param: Option<&str>) -> String {
    json!({
        "error": { "type": error_type(status), "code": code, "message": message, "param": param }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_openai_shape_with_param() {
        let body: serde_json::Value =
            serde_json::from_str(&error_body(400, "unknown_voice", "no", Some("voice"))).unwrap();
        assert_eq!(
            body,
            json!({"error": {"type": "invalid_request_error", "code": "unknown_voice", "message": "no", "param": "voice"}})
        );
        let body: serde_json::Value =
            serde_json::from_str(&error_body(429, "rate_limited", "wait", None)).unwrap();
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert!(body["error"]["param"].is_null());
        assert_eq!(error_type(503), "server_error");
        assert_eq!(error_type(401), "authentication_error");
    }
}
