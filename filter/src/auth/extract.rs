//! Finding the token in the request headers: `Authorization: Bearer <token>` (what OpenAI
//! clients send), or the raw token in a configured header. A request carrying more than one
//! token is refused rather than guessed at.

use super::reject;
use crate::decision::{Code, Rejection};

pub(crate) const AUTHORIZATION: &str = "authorization";

/// The token of the request, `Ok(None)` when it carries none.
/// `token_header` is the extra header holding a raw token, if one is configured.
pub(crate) fn token_from_headers(
    headers: &[(String, String)],
    token_header: Option<&str>,
) -> Result<Option<String>, Rejection> {
    let authorization = single_value(headers, AUTHORIZATION)?;
    let raw = match token_header {
        Some(name) => single_value(headers, name)?,
        None => None,
    };
    let bearer = match authorization {
        None => None,
        Some(value) => match bearer_token(value) {
            Some(token) => Some(token),
            // Other credentials in `Authorization` may be meant for someone else when the
            // token travels in its own header.
            None if raw.is_some() => None,
            None => return Err(reject::scheme_unsupported()),
        },
    };
    let token = match (bearer, raw) {
        (Some(_), Some(_)) => {
            return Err(reject::invalid_request(Code::TokenAmbiguous, "the request carries more than one token"));
        }
        (Some(token), None) => token?,
        (None, Some(value)) => raw_token(value)?,
        (None, None) => return Ok(None),
    };
    Ok(Some(token.to_string()))
}

/// The value of a header that may appear at most once.
fn single_value<'a>(headers: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, Rejection> {
    let mut values = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
    let first = values.next().map(|(_, v)| v.as_str());
    if values.next().is_some() {
        return Err(reject::invalid_request(Code::TokenAmbiguous, "a credentials header appears more than once"));
    }
    Ok(first)
}

/// `Some` when the scheme is Bearer (case-insensitive); the token inside may still be malformed.
fn bearer_token(value: &str) -> Option<Result<&str, Rejection>> {
    let value = value.trim();
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(raw_token(rest))
}

fn raw_token(value: &str) -> Result<&str, Rejection> {
    let token = value.trim();
    if token.is_empty() || token.contains(|c: char| c.is_ascii_whitespace() || c.is_control()) {
        return Err(reject::invalid_token(Code::TokenMalformed, "the bearer token is empty or contains spaces"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn code(result: Result<Option<String>, Rejection>) -> &'static str {
        result.unwrap_err().code.as_str()
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc.def.ghi", "bearer abc.def.ghi", "BEARER   abc.def.ghi  "] {
            let found = token_from_headers(&headers(&[("Authorization", value)]), None).unwrap();
            assert_eq!(found.as_deref(), Some("abc.def.ghi"));
        }
    }

    #[test]
    fn no_credentials_is_not_an_error() {
        assert_eq!(token_from_headers(&headers(&[("accept", "*/*")]), None).unwrap(), None);
    }

    #[test]
    fn duplicate_authorization_is_ambiguous() {
        let h = headers(&[("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")]);
        assert_eq!(code(token_from_headers(&h, None)), "token_ambiguous");
    }

    #[test]
    fn other_schemes_get_a_challenge_without_error() {
        let rejection = token_from_headers(&headers(&[("authorization", "Basic dXNlcjpwYXNz")]), None).unwrap_err();
        assert_eq!((rejection.status(), rejection.code.as_str()), (401, "auth_scheme_unsupported"));
        assert_eq!(rejection.headers, vec![("WWW-Authenticate".to_string(), "Bearer realm=\"voxgate\"".to_string())]);
    }

    #[test]
    fn empty_or_spaced_bearer_tokens_are_malformed() {
        for value in ["Bearer", "Bearer   ", "Bearer a.b.c d"] {
            assert_eq!(code(token_from_headers(&headers(&[("authorization", value)]), None)), "token_malformed");
        }
    }

    #[test]
    fn configured_header_carries_a_raw_token() {
        let h = headers(&[("x-api-token", " a.b.c ")]);
        assert_eq!(token_from_headers(&h, Some("x-api-token")).unwrap().as_deref(), Some("a.b.c"));
        let h = headers(&[("x-api-token", "a.b.c"), ("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(token_from_headers(&h, Some("x-api-token")).unwrap().as_deref(), Some("a.b.c"));
    }

    #[test]
    fn a_token_in_two_places_is_ambiguous() {
        let h = headers(&[("x-api-token", "a.b.c"), ("authorization", "Bearer a.b.c")]);
        assert_eq!(code(token_from_headers(&h, Some("x-api-token"))), "token_ambiguous");
        let h = headers(&[("x-api-token", "a.b.c"), ("X-Api-Token", "a.b.c")]);
        assert_eq!(code(token_from_headers(&h, Some("x-api-token"))), "token_ambiguous");
    }
}
