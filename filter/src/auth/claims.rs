//! Registered-claim rules: `exp`/`nbf`/`iat` against the clock with skew, `sub`, `aud`
//! against a provider's audiences, and required scopes from `scope` or `scp`.

use serde_json::{Map, Value};

use super::forward::header_value;
use super::reject;
use crate::decision::{Code, Rejection};

pub(crate) type Claims = Map<String, Value>;

/// A NumericDate claim (RFC 7519 §2): seconds since the epoch, fractions truncated.
fn numeric_date(claims: &Claims, name: &str) -> Result<Option<u64>, Rejection> {
    let Some(value) = claims.get(name) else { return Ok(None) };
    let seconds = match value {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64)),
        _ => None,
    };
    seconds
        .map(Some)
        .ok_or_else(|| reject::invalid_token(Code::TokenMalformed, "a time claim is not a non-negative number"))
}

/// What a provider demands of a token's time claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeRules {
    pub require_exp: bool,
    /// Longest accepted lifetime: `exp` less `iat`, else less `nbf`, else less now.
    pub max_lifetime_s: Option<u64>,
}

/// Checks the token's validity window and returns its `exp`, if any.
pub(crate) fn check_times(
    claims: &Claims,
    now_s: u64,
    skew_s: u64,
    rules: TimeRules,
) -> Result<Option<u64>, Rejection> {
    let exp = numeric_date(claims, "exp")?;
    match exp {
        None if rules.require_exp => {
            return Err(reject::invalid_token(Code::ExpiryMissing, "the token has no expiry"));
        }
        Some(exp) if now_s > exp.saturating_add(skew_s) => {
            return Err(reject::invalid_token(Code::TokenExpired, "the token has expired"));
        }
        _ => {}
    }
    let nbf = numeric_date(claims, "nbf")?;
    if let Some(nbf) = nbf {
        if now_s.saturating_add(skew_s) < nbf {
            return Err(reject::invalid_token(Code::TokenNotYetValid, "the token is not valid yet"));
        }
    }
    let iat = numeric_date(claims, "iat")?;
    if let Some(iat) = iat {
        if iat > now_s.saturating_add(skew_s) {
            return Err(reject::invalid_token(Code::TokenIssuedInFuture, "the token was issued in the future"));
        }
    }
    if let (Some(max_lifetime_s), Some(exp)) = (rules.max_lifetime_s, exp) {
        // A token without `iat` or `nbf` is judged by what is left of it: the same bound
        // holds for every later use, so a cached token never outgrows it.
        let start = iat.or(nbf).unwrap_or(now_s);
        if exp.saturating_sub(start) > max_lifetime_s {
            return Err(reject::invalid_token(
                Code::TokenLifetimeTooLong,
                "the token is valid for longer than its issuer's tokens may be",
            ));
        }
    }
    Ok(exp)
}

/// The `iss` claim, which selects the provider.
pub(crate) fn issuer(claims: &Claims) -> Result<&str, Rejection> {
    match claims.get("iss") {
        Some(Value::String(iss)) => Ok(iss),
        Some(_) => Err(reject::invalid_token(Code::TokenMalformed, "the issuer claim is not a string")),
        None => Err(reject::invalid_token(Code::WrongIssuer, "the token names no issuer")),
    }
}

/// The `sub` claim: every accepted token names its subject, which keys rate limits.
pub(crate) fn subject(claims: &Claims) -> Result<&str, Rejection> {
    match claims.get("sub") {
        Some(Value::String(sub)) => check_subject(sub),
        None => Err(reject::invalid_token(Code::SubjectMissing, "the token names no subject")),
        Some(_) => Err(reject::invalid_token(Code::TokenMalformed, "the subject claim is not a string")),
    }
}

/// A subject, from whichever credential named it, must reach the sidecar unchanged in
/// `x-voxgate-subject` and the logs as it is: a subject the header would have to clean up
/// (control, line-separator, bidirectional or invisible characters, surrounding spaces, too
/// long) would be forwarded as another identity than the one the buckets were charged to,
/// could alias a different subject, or forge a log line.
pub(crate) fn check_subject(sub: &str) -> Result<&str, Rejection> {
    if sub.is_empty() {
        return Err(reject::invalid_token(Code::SubjectMissing, "the token names no subject"));
    }
    if header_value(sub).as_deref() != Some(sub) {
        return Err(reject::invalid_token(
            Code::TokenMalformed,
            "the subject has a control, line-separator, bidirectional or invisible character, surrounding spaces, or is too long",
        ));
    }
    Ok(sub)
}

/// The `aud` claim (a string or an array of strings) must name one of `accepted`.
pub(crate) fn check_audience(claims: &Claims, accepted: &[String]) -> Result<(), Rejection> {
    let matches = |aud: &str| accepted.iter().any(|a| a == aud);
    let found = match claims.get("aud") {
        None => false,
        Some(Value::String(aud)) => matches(aud),
        Some(Value::Array(auds)) => {
            let mut found = false;
            for aud in auds {
                match aud {
                    Value::String(aud) => found |= matches(aud),
                    _ => return Err(audience_malformed()),
                }
            }
            found
        }
        Some(_) => return Err(audience_malformed()),
    };
    if found {
        Ok(())
    } else {
        Err(reject::wrong_audience())
    }
}

fn audience_malformed() -> Rejection {
    reject::invalid_token(Code::TokenMalformed, "the audience claim is not a string or an array of strings")
}

/// Every required scope must be granted by `scope` (space-separated, RFC 8693) or `scp`
/// (an array, or a space-separated string, as identity providers variously issue it).
pub(crate) fn check_scopes(claims: &Claims, required: &[String], required_text: &str) -> Result<(), Rejection> {
    if required.is_empty() {
        return Ok(());
    }
    let granted = |scope: &str| {
        ["scope", "scp"].iter().any(|name| match claims.get(*name) {
            Some(Value::String(list)) => list.split_ascii_whitespace().any(|s| s == scope),
            Some(Value::Array(list)) => list.iter().any(|s| s.as_str() == Some(scope)),
            _ => false,
        })
    };
    if required.iter().all(|scope| granted(scope)) {
        Ok(())
    } else {
        Err(reject::insufficient_scope(required_text))
    }
}
