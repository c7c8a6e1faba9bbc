//! The one shape every refusal takes, whichever step of the pipeline made it.
//!
//! A `Rejection` becomes an HTTP answer with the error body the sidecar sends too
//! (`voxgate_rules::error`): `{"error":{"type":…,"code":…,"message":…,"param":…}}`.
//! Its `Code` gives both its status and its name, so the two cannot disagree.
//! Messages name the problem and never carry the token or the submitted text.

use std::fmt;

use voxgate_rules::RuleCode;

/// Every refusal the filter answers, and the one place that gives each its HTTP status and its
/// stable name: the error body's `code`, the metric label (`voxgate_decision{reason}`), the log
/// line's `reason` and Envoy's response code details (`voxgate.<code>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// A refusal of the request rules the sidecar shares (`voxgate_rules`).
    Rule(RuleCode),
    InvalidPath,
    MethodNotAllowed,
    UnexpectedBody,
    InvalidContentLength,
    BodyTooLarge,
    AmbiguousParameters,
    UnsupportedParameterSource,
    DeniedText,
    TokenMissing,
    AuthSchemeUnsupported,
    TokenAmbiguous,
    TokenMalformed,
    TokenTooLarge,
    AlgorithmNotAllowed,
    WrongIssuer,
    KeysUnavailable,
    UnknownKey,
    TokenExpired,
    TokenNotYetValid,
    TokenIssuedInFuture,
    ExpiryMissing,
    TokenLifetimeTooLong,
    SubjectMissing,
    BadSignature,
    TokenUnverified,
    ApiKeyUnknown,
    ApiKeyRevoked,
    WrongAudience,
    InsufficientScope,
    AuthFailures,
    RateLimited,
    TooManyInFlight,
    TextExceedsPlan,
    RateLimitUnavailable,
    FilterNotConfigured,
    InternalError,
}

impl Code {
    fn spec(self) -> (u16, &'static str) {
        match self {
            Code::Rule(rule) => (rule.status(), rule.as_str()),
            Code::InvalidPath => (400, "invalid_path"),
            Code::MethodNotAllowed => (405, "method_not_allowed"),
            Code::UnexpectedBody => (400, "unexpected_body"),
            Code::InvalidContentLength => (400, "invalid_content_length"),
            Code::BodyTooLarge => (413, "body_too_large"),
            Code::AmbiguousParameters => (400, "ambiguous_parameters"),
            Code::UnsupportedParameterSource => (400, "unsupported_parameter_source"),
            Code::DeniedText => (400, "denied_text"),
            Code::TokenMissing => (401, "token_missing"),
            Code::AuthSchemeUnsupported => (401, "auth_scheme_unsupported"),
            Code::TokenAmbiguous => (401, "token_ambiguous"),
            Code::TokenMalformed => (401, "token_malformed"),
            Code::TokenTooLarge => (401, "token_too_large"),
            Code::AlgorithmNotAllowed => (401, "algorithm_not_allowed"),
            Code::WrongIssuer => (401, "wrong_issuer"),
            Code::KeysUnavailable => (401, "keys_unavailable"),
            Code::UnknownKey => (401, "unknown_key"),
            Code::TokenExpired => (401, "token_expired"),
            Code::TokenNotYetValid => (401, "token_not_yet_valid"),
            Code::TokenIssuedInFuture => (401, "token_issued_in_future"),
            Code::ExpiryMissing => (401, "expiry_missing"),
            Code::TokenLifetimeTooLong => (401, "token_lifetime_too_long"),
            Code::SubjectMissing => (401, "subject_missing"),
            Code::BadSignature => (401, "bad_signature"),
            Code::TokenUnverified => (401, "token_unverified"),
            Code::ApiKeyUnknown => (401, "api_key_unknown"),
            Code::ApiKeyRevoked => (401, "api_key_revoked"),
            Code::WrongAudience => (403, "wrong_audience"),
            Code::InsufficientScope => (403, "insufficient_scope"),
            Code::AuthFailures => (429, "auth_failures"),
            Code::RateLimited => (429, "rate_limited"),
            Code::TooManyInFlight => (429, "too_many_in_flight"),
            Code::TextExceedsPlan => (400, "text_exceeds_plan"),
            Code::RateLimitUnavailable => (503, "rate_limit_unavailable"),
            Code::FilterNotConfigured => (503, "filter_not_configured"),
            Code::InternalError => (500, "internal_error"),
        }
    }

    pub fn status(self) -> u16 {
        self.spec().0
    }

    pub fn as_str(self) -> &'static str {
        self.spec().1
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal decided by the filter, answered locally so the sidecar never sees the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What was refused: the status and the stable name of the answer.
    pub code: Code,
    /// Human-readable explanation without user data.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<&'static str>,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`, rate-limit headers).
    pub headers: Vec<(String, String)>,
}

impl From<voxgate_rules::RuleError> for Rejection {
    fn from(error: voxgate_rules::RuleError) -> Self {
        Rejection { param: error.param, ..Rejection::new(Code::Rule(error.code), error.message) }
    }
}

impl Rejection {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Rejection { code, message: message.into(), param: None, headers: Vec::new() }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The OpenAI error `type` for this status.
    pub fn error_type(&self) -> &'static str {
        voxgate_rules::error::error_type(self.status())
    }

    /// The JSON body sent to the client.
    pub fn body(&self) -> String {
        voxgate_rules::error::error_body(self.status(), self.code.as_str(), &self.message, self.param)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_error_shape() {
        let r = Rejection::new(Code::RateLimited, "slow down");
        let v: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(v["error"]["message"], "slow down");
        assert!(v["error"]["param"].is_null());
    }

    #[test]
    fn a_shared_rule_keeps_its_status_and_name() {
        let r = Rejection::from(voxgate_rules::error::unknown_route());
        assert_eq!((r.status(), r.code.as_str()), (404, "unknown_route"));
        assert_eq!(Code::WrongAudience.status(), 403);
        assert_eq!(Code::Rule(voxgate_rules::RuleCode::UnsupportedMediaType).to_string(), "unsupported_media_type");
    }
}
