//! The 401/403 answers of authentication, with their RFC 6750 `WWW-Authenticate` challenges.
//!
//! Descriptions are fixed texts: they name the problem and never echo the token or any claim.

use crate::decision::Rejection;

/// The realm named in every challenge.
pub const REALM: &str = "voxgate";

/// Every `code` an authentication refusal can carry, for metrics defined up front.
pub const REJECTION_CODES: &[&str] = &[
    "token_missing",
    "auth_scheme_unsupported",
    "token_ambiguous",
    "token_malformed",
    "token_too_large",
    "algorithm_not_allowed",
    "wrong_issuer",
    "keys_unavailable",
    "unknown_key",
    "token_expired",
    "token_not_yet_valid",
    "token_issued_in_future",
    "expiry_missing",
    "token_lifetime_too_long",
    "subject_missing",
    "bad_signature",
    "token_unverified",
    "api_key_unknown",
    "api_key_revoked",
    "wrong_audience",
    "insufficient_scope",
];

const AUTHENTICATE: &str = "WWW-Authenticate";

/// 401 for a request without a token (RFC 6750 §3.1: no `error` attribute).
pub fn token_missing() -> Rejection {
    Rejection::new(401, "token_missing", "a bearer token is required")
        .with_header(AUTHENTICATE, format!("Bearer realm=\"{REALM}\""))
}

/// 401 for credentials of another scheme (`Basic …`): like a missing token, no `error`.
pub(crate) fn scheme_unsupported() -> Rejection {
    Rejection::new(401, "auth_scheme_unsupported", "only bearer tokens are accepted")
        .with_header(AUTHENTICATE, format!("Bearer realm=\"{REALM}\""))
}

/// 401 for a request that carries more than one token.
pub(crate) fn invalid_request(code: &'static str, description: &'static str) -> Rejection {
    challenge(401, code, "invalid_request", description, None)
}

/// 401 for a token that is malformed, forged, expired or otherwise unacceptable.
pub(crate) fn invalid_token(code: &'static str, description: &'static str) -> Rejection {
    challenge(401, code, "invalid_token", description, None)
}

/// 403 for an authentic token issued for another audience.
pub(crate) fn wrong_audience() -> Rejection {
    challenge(403, "wrong_audience", "insufficient_scope", "the token was not issued for this service", None)
}

/// 403 for an authentic token that lacks a required scope; `scope` lists what is required.
pub(crate) fn insufficient_scope(required: &str) -> Rejection {
    challenge(403, "insufficient_scope", "insufficient_scope", "the token lacks a required scope", Some(required))
}

fn challenge(
    status: u16,
    code: &'static str,
    error: &'static str,
    description: &'static str,
    scope: Option<&str>,
) -> Rejection {
    let mut value = format!("Bearer realm=\"{REALM}\", error=\"{error}\", error_description=\"{description}\"");
    if let Some(scope) = scope {
        value.push_str(&format!(", scope=\"{scope}\""));
    }
    Rejection::new(status, code, description).with_header(AUTHENTICATE, value)
}
