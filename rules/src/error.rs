//! A request refused for one of the shared rules, and the one error body both sides send.

use serde_json::json;

/// Every refusal of the shared rules, and the one place that gives each its HTTP status and
/// its stable machine-readable name (the `code` of the error body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleCode {
    UnknownRoute,
    UnsupportedMediaType,
    InvalidBody,
    InvalidUtf8,
    MalformedJson,
    DuplicateField,
    InvalidEncoding,
    MissingField,
    InvalidType,
    EmptyInput,
    InputTooLong,
    ForbiddenCharacter,
    InvalidSpeed,
    UnknownModel,
    UnknownVoice,
    UnknownSpeaker,
    UnsupportedLanguage,
    UnsupportedResponseFormat,
    UnsupportedStreamFormat,
}

impl RuleCode {
    fn spec(self) -> (u16, &'static str) {
        match self {
            RuleCode::UnknownRoute => (404, "unknown_route"),
            RuleCode::UnsupportedMediaType => (415, "unsupported_media_type"),
            RuleCode::InvalidBody => (400, "invalid_body"),
            RuleCode::InvalidUtf8 => (400, "invalid_utf8"),
            RuleCode::MalformedJson => (400, "malformed_json"),
            RuleCode::DuplicateField => (400, "duplicate_field"),
            RuleCode::InvalidEncoding => (400, "invalid_encoding"),
            RuleCode::MissingField => (400, "missing_field"),
            RuleCode::InvalidType => (400, "invalid_type"),
            RuleCode::EmptyInput => (400, "empty_input"),
            RuleCode::InputTooLong => (400, "input_too_long"),
            RuleCode::ForbiddenCharacter => (400, "forbidden_character"),
            RuleCode::InvalidSpeed => (400, "invalid_speed"),
            RuleCode::UnknownModel => (400, "unknown_model"),
            RuleCode::UnknownVoice => (400, "unknown_voice"),
            RuleCode::UnknownSpeaker => (400, "unknown_speaker"),
            RuleCode::UnsupportedLanguage => (400, "unsupported_language"),
            RuleCode::UnsupportedResponseFormat => (400, "unsupported_response_format"),
            RuleCode::UnsupportedStreamFormat => (400, "unsupported_stream_format"),
        }
    }

    pub fn status(self) -> u16 {
        self.spec().0
    }

    pub fn as_str(self) -> &'static str {
        self.spec().1
    }
}

impl PartialEq<&str> for RuleCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A refused request: what the client must change, and which field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub code: RuleCode,
    /// Names the problem; never repeats the submitted text.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<&'static str>,
}

impl RuleError {
    /// A refusal with no field at fault.
    pub fn new(code: RuleCode, message: impl Into<String>) -> Self {
        RuleError {
            code,
            message: message.into(),
            param: None,
        }
    }

    /// A refusal of field `param`.
    pub fn invalid(param: &'static str, code: RuleCode, message: impl Into<String>) -> Self {
        RuleError {
            param: Some(param),
            ..RuleError::new(code, message)
        }
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

/// 404 for a path no route serves: the paths each API serves are the same on both sides, so
/// either answers a stray path alike.
pub fn unknown_route() -> RuleError {
    RuleError::new(RuleCode::UnknownRoute, "no route serves this path")
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
