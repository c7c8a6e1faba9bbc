//! `POST /v1/audio/speech`, OpenAI's speech request: its fields are read by the shared rules
//! (`voxgate_rules::openai`, the same code the filter runs), then the voice and speaker are
//! resolved against the loaded voices and the request is answered.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;
use super::extract;
use super::speech::{self, SpeechRequest};
use super::state::{AppState, LoadedVoices};
use super::VoiceLabel;
use crate::tenants::Tenant;
use voxgate_rules::OpenAiSpeech;

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
    let request = match read_request(state, headers, body).await {
        Ok(request) => request,
        Err(error) => return (None, Err(error)),
    };
    let label = VoiceLabel(request.voice.info().name.clone());
    (
        Some(label),
        speech::respond(state, request, Tenant::from_headers(headers)).await,
    )
}

async fn read_request(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<SpeechRequest, ApiError> {
    let limits = state.limits();
    let bytes = extract::read_body(body, limits.max_body_bytes).await?;
    let map = extract::json_object(headers, &bytes)?;
    let fields = OpenAiSpeech::parse(&map, &limits.text)?;
    resolve(fields, state.voices()?)
}

/// Picks the voice by the shared rules (`voxgate_rules::voices`), then the speaker.
fn resolve(fields: OpenAiSpeech<'_>, voices: &LoadedVoices) -> Result<SpeechRequest, ApiError> {
    let voice = voices.resolve(fields.voice, fields.model)?;
    let speaker = speech::resolve_speaker(&voice, fields.speaker.as_deref(), "speaker")?;
    Ok(SpeechRequest {
        options: speech::options_for(&voice, speaker, fields.speed() as f32),
        voice,
        text: fields.input.to_owned(),
        format: fields.format,
        stream: fields.stream,
    })
}
