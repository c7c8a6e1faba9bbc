//! `POST /v1/audio/speech`, OpenAI's speech request: `model`, `input`, `voice`,
//! `response_format`, `speed`, plus `stream`/`stream_format` for chunked audio and `speaker`
//! for multi-speaker voices. Each field is checked and refused with its own error code;
//! `instructions` and fields unknown here are accepted and ignored, as VITS voices take no
//! style prompt.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::errors::ApiError;
use super::extract::{self, BodyKind};
use super::speech::{self, SpeechRequest};
use super::state::{AppState, LoadedVoices};
use super::VoiceLabel;
use crate::tenants::Tenant;
use voxgate_rules::{ResponseFormat, StreamMode};

/// The fields of a speech request once their types and ranges are checked.
#[derive(Debug, Clone, PartialEq)]
struct SpeechFields {
    model: Option<String>,
    input: String,
    voice: Option<String>,
    speaker: Option<String>,
    format: ResponseFormat,
    speed: f32,
    stream: StreamMode,
}

pub async fn speech(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let (voice, result) = handle(&state, &headers, body).await;
    let mut response = result.into_response();
    if let Some(voice) = voice {
        response.extensions_mut().insert(voice);
    }
    response
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> (Option<VoiceLabel>, Result<Response, ApiError>) {
    let fields = match read_fields(state, headers, body).await {
        Ok(fields) => fields,
        Err(error) => return (None, Err(error)),
    };
    let request = match state.voices().and_then(|voices| resolve(fields, voices)) {
        Ok(request) => request,
        Err(error) => return (None, Err(error)),
    };
    let label = VoiceLabel(request.voice.info().name.clone());
    (
        Some(label),
        speech::respond(state, request, Tenant::from_headers(headers)).await,
    )
}

async fn read_fields(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<SpeechFields, ApiError> {
    let limits = state.limits();
    let body = extract::read_body(body, limits.max_body_bytes).await?;
    if extract::body_kind(headers, &body) != BodyKind::Json {
        return Err(ApiError::unsupported_media_type(
            "the body must be JSON with Content-Type: application/json",
        ));
    }
    parse_fields(&extract::json_object(&body)?, limits.max_input_chars)
}

fn parse_fields(
    map: &Map<String, Value>,
    max_input_chars: usize,
) -> Result<SpeechFields, ApiError> {
    let input = extract::json_str(map, "input")?
        .ok_or_else(|| ApiError::invalid_param("input", "missing_field", "`input` is required"))?;
    speech::check_input(input, "input", max_input_chars)?;
    let speed = speech::check_speed(extract::json_f64(map, "speed")?.unwrap_or(1.0))?;
    let format = ResponseFormat::parse(extract::json_str(map, "response_format")?)?;
    let stream = StreamMode::parse(
        extract::json_bool(map, "stream")?,
        extract::json_str(map, "stream_format")?,
    )?;
    Ok(SpeechFields {
        model: extract::json_str(map, "model")?.map(str::to_owned),
        input: input.to_owned(),
        voice: extract::json_str(map, "voice")?.map(str::to_owned),
        speaker: extract::json_str_or_index(map, "speaker")?,
        format,
        speed,
        stream,
    })
}

/// Picks the voice by the shared rules (`voxgate_rules::voices`), then the speaker.
fn resolve(fields: SpeechFields, voices: &LoadedVoices) -> Result<SpeechRequest, ApiError> {
    let voice = voices.resolve(fields.voice.as_deref(), fields.model.as_deref())?;
    let speaker = speech::resolve_speaker(&voice, fields.speaker.as_deref(), "speaker")?;
    Ok(SpeechRequest {
        options: speech::options_for(&voice, speaker, fields.speed),
        voice,
        text: fields.input,
        format: fields.format,
        stream: fields.stream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<SpeechFields, ApiError> {
        match body {
            Value::Object(map) => parse_fields(&map, 4096),
            _ => panic!("test bodies are objects"),
        }
    }

    #[test]
    fn minimal_request_gets_defaults() {
        let fields = parse(json!({"input": "Hello."})).expect("valid");
        assert_eq!(
            fields,
            SpeechFields {
                model: None,
                input: "Hello.".to_owned(),
                voice: None,
                speaker: None,
                format: ResponseFormat::Mp3,
                speed: 1.0,
                stream: StreamMode::Off,
            }
        );
    }

    #[test]
    fn full_request_is_read() {
        let fields = parse(json!({
            "model": "tts-1", "input": "Hi there.", "voice": "alloy", "speaker": 2,
            "response_format": "PCM", "speed": 1.5, "stream": true
        }))
        .expect("valid");
        assert_eq!(fields.model.as_deref(), Some("tts-1"));
        assert_eq!(fields.voice.as_deref(), Some("alloy"));
        assert_eq!(fields.speaker.as_deref(), Some("2"));
        assert_eq!(fields.format, ResponseFormat::Pcm);
        assert_eq!(fields.speed, 1.5);
        assert_eq!(fields.stream, StreamMode::Audio);
    }

    #[test]
    fn each_bad_field_has_its_code() {
        let cases = [
            (json!({}), "missing_field"),
            (json!({"input": null}), "missing_field"),
            (json!({"input": 5}), "invalid_type"),
            (json!({"input": ""}), "empty_input"),
            (json!({"input": "a".repeat(4097)}), "input_too_long"),
            (json!({"input": "Hi.", "speed": 5}), "invalid_speed"),
            (json!({"input": "Hi.", "speed": 0.1}), "invalid_speed"),
            (json!({"input": "Hi.", "speed": "fast"}), "invalid_type"),
            (
                json!({"input": "Hi.", "response_format": "aac"}),
                "unsupported_response_format",
            ),
            (
                json!({"input": "Hi.", "response_format": "ogg"}),
                "unsupported_response_format",
            ),
            (json!({"input": "Hi.", "stream": "yes"}), "invalid_type"),
            (
                json!({"input": "Hi.", "stream_format": "events"}),
                "unsupported_stream_format",
            ),
            (json!({"input": "Hi.", "speaker": -1}), "invalid_type"),
            (json!({"input": "Hi.", "voice": 3}), "invalid_type"),
        ];
        for (body, code) in cases {
            let shown = body.to_string();
            assert_eq!(parse(body).unwrap_err().code(), code, "{shown}");
        }
    }
}
