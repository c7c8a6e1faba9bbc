//! Reading request bodies: the size limit, the content type, and typed access to the fields
//! of a JSON object or a URL-encoded form, each failure mapped to a precise API error.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value};

use super::errors::ApiError;

/// The body encodings the API understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
    /// An empty body whose content type is neither of the above (or missing).
    Empty,
    Other,
}

/// Classifies the request by its `Content-Type`, ignoring parameters such as `charset`.
pub fn body_kind(headers: &HeaderMap, body: &[u8]) -> BodyKind {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match media_type.as_deref() {
        Some("application/json") => BodyKind::Json,
        Some("application/x-www-form-urlencoded") => BodyKind::Form,
        _ if body.is_empty() => BodyKind::Empty,
        _ => BodyKind::Other,
    }
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(ApiError::body_too_large(limit)),
        Err(_) => Err(ApiError::invalid(
            "unreadable_body",
            "the request body could not be read",
        )),
    }
}

/// Parses a JSON object; anything else is `invalid_json`.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid(
            "invalid_json",
            "the request body must be a JSON object",
        )),
        Err(error) => Err(ApiError::invalid(
            "invalid_json",
            format!(
                "malformed JSON at line {} column {}",
                error.line(),
                error.column()
            ),
        )),
    }
}

/// Parses a URL-encoded form or query string into its pairs, in order.
pub fn form_pairs(encoded: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_bytes(encoded)
        .map_err(|_| ApiError::invalid("invalid_form", "malformed URL-encoded parameters"))
}

/// A string field; JSON `null` counts as absent.
pub fn json_str<'a>(
    map: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(wrong_type(field, "a string")),
    }
}

/// A number field; JSON `null` counts as absent.
pub fn json_f64(map: &Map<String, Value>, field: &'static str) -> Result<Option<f64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(value)) => value
            .as_f64()
            .map(Some)
            .ok_or_else(|| wrong_type(field, "a number")),
        Some(_) => Err(wrong_type(field, "a number")),
    }
}

/// A boolean field; JSON `null` counts as absent.
pub fn json_bool(map: &Map<String, Value>, field: &'static str) -> Result<Option<bool>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(wrong_type(field, "true or false")),
    }
}

/// A field given either as a string or as a non-negative integer (speaker ids), as text.
pub fn json_str_or_index(
    map: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(Value::Number(value)) if value.is_u64() => Ok(Some(value.to_string())),
        Some(_) => Err(wrong_type(field, "a string or a non-negative integer")),
    }
}

fn wrong_type(field: &'static str, expected: &str) -> ApiError {
    ApiError::invalid_param(
        field,
        "invalid_type",
        format!("`{field}` must be {expected}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("header"),
        );
        headers
    }

    #[test]
    fn content_types_are_classified_without_parameters() {
        assert_eq!(
            body_kind(&headers("application/json; charset=utf-8"), b"{}"),
            BodyKind::Json
        );
        assert_eq!(
            body_kind(&headers("Application/JSON"), b"{}"),
            BodyKind::Json
        );
        assert_eq!(
            body_kind(&headers("application/x-www-form-urlencoded"), b"text=hi"),
            BodyKind::Form
        );
        assert_eq!(body_kind(&headers("text/plain"), b"hello"), BodyKind::Other);
        assert_eq!(body_kind(&HeaderMap::new(), b"hello"), BodyKind::Other);
        assert_eq!(body_kind(&HeaderMap::new(), b""), BodyKind::Empty);
        assert_eq!(body_kind(&headers("text/plain"), b""), BodyKind::Empty);
    }

    #[tokio::test]
    async fn body_over_the_limit_is_413() {
        let error = read_body(Body::from(vec![b'x'; 11]), 10).await.unwrap_err();
        assert_eq!(error.code(), "body_too_large");
        assert_eq!(
            read_body(Body::from("0123456789"), 10).await.expect("fits"),
            "0123456789"
        );
    }

    #[test]
    fn json_errors_name_the_position_not_the_content() {
        let error = json_object(br#"{"input": "secret words"#).unwrap_err();
        assert_eq!(error.code(), "invalid_json");
        let error = json_object(b"[1, 2]").unwrap_err();
        assert_eq!(error.code(), "invalid_json");
    }

    #[test]
    fn typed_fields() {
        let map = json_object(
            json!({"s": "x", "n": 1.5, "b": true, "i": 3, "z": null, "neg": -1})
                .to_string()
                .as_bytes(),
        )
        .expect("object");
        assert_eq!(json_str(&map, "s").expect("string"), Some("x"));
        assert_eq!(json_str(&map, "z").expect("null"), None);
        assert_eq!(json_str(&map, "missing").expect("absent"), None);
        assert_eq!(json_str(&map, "n").unwrap_err().code(), "invalid_type");
        assert_eq!(json_f64(&map, "n").expect("number"), Some(1.5));
        assert_eq!(json_f64(&map, "s").unwrap_err().code(), "invalid_type");
        assert_eq!(json_bool(&map, "b").expect("bool"), Some(true));
        assert_eq!(json_bool(&map, "i").unwrap_err().code(), "invalid_type");
        assert_eq!(
            json_str_or_index(&map, "i").expect("index"),
            Some("3".to_owned())
        );
        assert_eq!(
            json_str_or_index(&map, "s").expect("name"),
            Some("x".to_owned())
        );
        assert_eq!(
            json_str_or_index(&map, "neg").unwrap_err().code(),
            "invalid_type"
        );
    }

    #[test]
    fn form_pairs_decode_percent_and_plus() {
        let pairs = form_pairs(b"text=Hello+world%21&speaker_id=").expect("form");
        assert_eq!(
            pairs,
            vec![
                ("text".to_owned(), "Hello world!".to_owned()),
                ("speaker_id".to_owned(), String::new())
            ]
        );
    }
}
