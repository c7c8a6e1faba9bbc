//! The 401/403 answers of authentication, with their RFC 6750 `WWW-Authenticate` challenges.
//!
//! Descriptions are fixed texts: they name the problem and never echo the token or any claim.

use crate::decision::{Code, Rejection};

/// The realm named in every challenge.
pub const REALM: &str = "voxgate";

const AUTHENTICATE: &str = "WWW-Authenticate";

/// 401 for a request without a token (RFC 6750 §3.1: no `error` attribute).
pub fn token_missing() -> Rejection {
    Rejection::new(Code::TokenMissing, "a bearer token is required")
        .with_header(AUTHENTICATE, format!("Bearer realm=\"{REALM}\""))
}

/// 401 for credentials of another scheme (`Basic …`): like a missing token, no `error`.
pub(crate) fn scheme_unsupported() -> Rejection {
    Rejection::new(Code::AuthSchemeUnsupported, "only bearer tokens are accepted")
        .with_header(AUTHENTICATE, format!("Bearer realm=\"{REALM}\""))
}

/// 401 for a request that carries more than one token.
pub(crate) fn invalid_request(code: Code, description: &'static str) -> Rejection {
    challenge(code, "invalid_request", description, None)
}

/// 401 for a token that is malformed, forged, expired or otherwise unacceptable.
pub(crate) fn invalid_token(code: Code, description: &'static str) -> Rejection {
    challenge(code, "invalid_token", description, None)
}

/// 403 for an authentic token issued for another audience.
pub(crate) fn wrong_audience() -> Rejection {
    challenge(Code::WrongAudience, "insufficient_scope", "the token was not issued for this service", None)
}

/// 403 for an authentic token that lacks a required scope; `scope` lists what is required.
pub(crate) fn insufficient_scope(required: &str) -> Rejection {
    challenge(Code::InsufficientScope, "insufficient_scope", "the token lacks a required scope", Some(required))
}

fn challenge(code: Code, error: &'static str, description: &'static str, scope: Option<&str>) -> Rejection {
    let mut value = format!("Bearer realm=\"{REALM}\", error=\"{error}\", error_description=\"{description}\"");
    if let Some(scope) = scope {
        value.push_str(&format!(", scope=\"{scope}\""));
    }
    Rejection::new(code, description).with_header(AUTHENTICATE, value)
}
