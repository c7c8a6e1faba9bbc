//! Which body a speech API reads for a `Content-Type`, and decoding it: a strict JSON object
//! or strict form pairs, UTF-8 only. A 415 names what the API accepts.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{RuleCode, RuleError};
use crate::media::{self, MediaType};
use crate::{form, json};

/// The speech APIs, as far as their bodies differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechApi {
    /// `POST /v1/audio/speech`: a JSON object.
    OpenAi,
    /// `GET|POST /api/tts`: a JSON object, a form, or nothing (the query string carries it).
    Coqui,
}

/// How a body is to be read, decided from its `Content-Type` alone (before it arrives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Form,
    /// No `Content-Type`: only an empty body is acceptable (Coqui, text in the query).
    None,
}

/// A decoded body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Json(Map<String, Value>),
    Pairs(BTreeMap<String, String>),
}

/// The body format for `content_type`, or 415.
pub fn body_format(api: SpeechApi, content_type: Option<&str>) -> Result<BodyFormat, RuleError> {
    let media = match content_type.map(media::parse) {
        None => None,
        Some(Ok(media)) => Some(media),
        Some(Err(())) => return Err(unsupported_media_type(api)),
    };
    match (api, media) {
        (_, Some(MediaType::Json)) => Ok(BodyFormat::Json),
        (SpeechApi::Coqui, Some(MediaType::Form)) => Ok(BodyFormat::Form),
        (SpeechApi::Coqui, None) => Ok(BodyFormat::None),
        _ => Err(unsupported_media_type(api)),
    }
}

/// Decodes a complete body of a speech request.
pub fn parse_body(
    api: SpeechApi,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Body, RuleError> {
    let format = body_format(api, content_type)?;
    let text = utf8(body)?;
    match format {
        BodyFormat::Json => json::parse_object(text).map(Body::Json),
        BodyFormat::Form => form::parse_pairs(text).map(Body::Pairs),
        BodyFormat::None if body.is_empty() => Ok(Body::Pairs(BTreeMap::new())),
        BodyFormat::None => Err(unsupported_media_type(api)),
    }
}

/// The JSON object of an OpenAI speech request body, the only body that API reads.
pub fn json_body(content_type: Option<&str>, body: &[u8]) -> Result<Map<String, Value>, RuleError> {
    body_format(SpeechApi::OpenAi, content_type)?;
    json::parse_object(utf8(body)?)
}

fn utf8(body: &[u8]) -> Result<&str, RuleError> {
    std::str::from_utf8(body).map_err(|e| {
        RuleError::new(RuleCode::InvalidUtf8,
            format!(
                "the request body is not valid UTF-8 (byte {})",
                e.valid_up_to()
            ),
        )
    })
}

fn unsupported_media_type(api: SpeechApi) -> RuleError {
    let accepted = match api {
        SpeechApi::Coqui => "application/json or application/x-www-form-urlencoded (UTF-8)",
        SpeechApi::OpenAi => "application/json (UTF-8)",
    };
    RuleError::new(RuleCode::UnsupportedMediaType,
        format!("the request body must be {accepted}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(api: SpeechApi, content_type: Option<&str>, body: &[u8]) -> &'static str {
        parse_body(api, content_type, body).unwrap_err().code.as_str()
    }

    #[test]
    fn each_api_reads_its_bodies() {
        let json = Some("application/json; charset=utf-8");
        let form = Some("application/x-www-form-urlencoded");
        assert!(matches!(parse_body(SpeechApi::OpenAi, json, br#"{"input": "a"}"#), Ok(Body::Json(_))));
        assert!(matches!(parse_body(SpeechApi::Coqui, form, b"text=a"), Ok(Body::Pairs(_))));
        assert_eq!(parse_body(SpeechApi::Coqui, None, b""), Ok(Body::Pairs(BTreeMap::new())));
        assert_eq!(code(SpeechApi::OpenAi, form, b"input=a"), "unsupported_media_type");
        assert_eq!(code(SpeechApi::OpenAi, None, b""), "unsupported_media_type");
        assert_eq!(code(SpeechApi::Coqui, None, b"text=a"), "unsupported_media_type");
        assert_eq!(code(SpeechApi::Coqui, Some("text/plain"), b""), "unsupported_media_type");
        assert_eq!(code(SpeechApi::OpenAi, Some("application/json; charset=latin1"), b"{}"), "unsupported_media_type");
        assert_eq!(code(SpeechApi::OpenAi, json, b"{\"input\": \"\xff\"}"), "invalid_utf8");
        assert!(json_body(json, br#"{"input": "a"}"#).is_ok());
        assert_eq!(json_body(form, b"input=a").unwrap_err().code.as_str(), "unsupported_media_type");
        assert_eq!(json_body(json, b"[]").unwrap_err().code.as_str(), "invalid_body");
        let error = parse_body(SpeechApi::OpenAi, form, b"").unwrap_err();
        assert_eq!((error.status(), error.param), (415, None));
    }
}
