//! Reading request bodies: the size limit, then the shared body rules
//! (`voxgate_rules::body`: content type, strict JSON or form decoding).

use axum::body::{Body as HttpBody, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value};
use voxgate_rules::body::{self, Body, SpeechApi};

use super::errors::ApiError;

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(body: HttpBody, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(ApiError::body_too_large(limit)),
        Err(_) => Err(ApiError::invalid(
            "unreadable_body",
            "the request body could not be read",
        )),
    }
}

/// Decodes a Coqui request body as the request's `Content-Type` says.
pub fn decode(headers: &HeaderMap, bytes: &[u8]) -> Result<Body, ApiError> {
    Ok(body::parse_body(SpeechApi::Coqui, content_type(headers), bytes)?)
}

/// The JSON object of an OpenAI request body.
pub fn json_object(headers: &HeaderMap, bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    Ok(body::json_body(content_type(headers), bytes)?)
}

/// A `Content-Type` that is not visible ASCII is passed on as a malformed value (415).
fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or("\u{FFFD}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("header"),
        );
        headers
    }

    #[tokio::test]
    async fn body_over_the_limit_is_413() {
        let error = read_body(HttpBody::from(vec![b'x'; 11]), 10)
            .await
            .unwrap_err();
        assert_eq!(error.code(), "body_too_large");
        assert_eq!(
            read_body(HttpBody::from("0123456789"), 10)
                .await
                .expect("fits"),
            "0123456789"
        );
    }

    #[test]
    fn bodies_follow_the_shared_rules() {
        let json = headers("Application/JSON; charset=utf-8");
        assert!(json_object(&json, br#"{"input": "a"}"#).is_ok());
        let json_code = |headers: &HeaderMap, bytes: &[u8]| json_object(headers, bytes).unwrap_err().code();
        assert_eq!(json_code(&json, br#"{"input": "a", "input": "b"}"#), "duplicate_field");
        assert_eq!(json_code(&headers("text/plain"), b"hi"), "unsupported_media_type");
        assert_eq!(json_code(&headers("application/json; charset=latin1"), b"{}"), "unsupported_media_type");
        let code = |headers: &HeaderMap, bytes: &[u8]| decode(headers, bytes).unwrap_err().code();
        assert_eq!(code(&HeaderMap::new(), b"text=a"), "unsupported_media_type");
        let form = headers("application/x-www-form-urlencoded");
        assert_eq!(code(&form, b"text=%zz"), "invalid_encoding");
        assert_eq!(code(&form, b"text=a&text=b"), "duplicate_field");
        assert!(matches!(decode(&HeaderMap::new(), b""), Ok(Body::Pairs(p)) if p.is_empty()));
    }
}
