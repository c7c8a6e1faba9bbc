//! The request id every log line of a request carries: Envoy's `x-request-id` (the client's,
//! or one Envoy generated), so a line of the sidecar's log finds the access-log entry of the
//! same request.
//!
//! The id comes from the client, so only an id of up to [`MAX_LEN`] characters of
//! `[A-Za-z0-9._:-]` is logged as sent; anything else is logged as `invalid`, a request
//! without one as `-`.

use axum::http::HeaderMap;
use tracing::Span;

pub const HEADER: &str = "x-request-id";

/// Longer than any UUID or trace id a proxy generates.
pub const MAX_LEN: usize = 128;

/// The id to log for a request with these headers.
pub fn of(headers: &HeaderMap) -> &str {
    let Some(value) = headers.get(HEADER) else {
        return "-";
    };
    match value.to_str() {
        Ok(id) if is_loggable(id) => id,
        _ => "invalid",
    }
}

fn is_loggable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The span a request is served in: its fields appear on every line logged inside it.
pub fn span(headers: &HeaderMap) -> Span {
    tracing::info_span!("request", request_id = %of(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, value.try_into().unwrap());
        headers
    }

    #[test]
    fn ids_are_logged_as_sent_only_when_they_are_plain() {
        assert_eq!(of(&HeaderMap::new()), "-");
        assert_eq!(
            of(&headers(b"0ade89ae-f968-4b5a-ba48-fbc742204377")),
            "0ade89ae-f968-4b5a-ba48-fbc742204377"
        );
        assert_eq!(of(&headers(b"trace:1.2_3")), "trace:1.2_3");
        assert_eq!(of(&headers(b"a b")), "invalid");
        assert_eq!(of(&headers(b"id\" text=\"x")), "invalid");
        assert_eq!(of(&headers(&[b'a'; MAX_LEN + 1])), "invalid");
        assert_eq!(of(&headers(b"")), "invalid");
        assert_eq!(of(&headers(&[0xe9])), "invalid");
    }
}
