//! `GET|POST /api/tts`, compatible with Coqui's TTS server: `text`, `speaker_id`,
//! `language_id` and `style_wav` (ignored), read like Coqui reads them (request header
//! first, then query string, then a form or JSON body), answered with a WAV file. The
//! extra `voice` parameter picks a voice other than the default.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use voxgate_rules::body::Body as RequestBody;
use voxgate_rules::coqui;
use voxgate_rules::{form, CoquiParams, ResponseFormat, StreamMode};

use super::errors::ApiError;
use super::extract;
use super::speech::{self, SpeechRequest};
use super::state::{AppState, LoadedVoices};
use super::VoiceLabel;
use crate::tenants::Tenant;

/// Coqui's server reads `text`, `speaker-id` and `language-id` request headers before the
/// query string. (The filter refuses requests that carry them, since it validates the query
/// or the body; these headers only reach a sidecar called directly.)
fn from_headers(headers: &HeaderMap) -> CoquiParams {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    CoquiParams {
        text: get("text"),
        speaker_id: get("speaker-id"),
        language_id: get("language-id"),
        voice: None,
    }
}

pub async fn tts(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (voice, result) = handle(&state, &method, &uri, &headers, body).await;
    let mut response = result.into_response();
    if let Some(voice) = voice {
        response.extensions_mut().insert(voice);
    }
    response
}

async fn handle(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> (Option<VoiceLabel>, Result<Response, ApiError>) {
    let params = match read_params(state, method, uri, headers, body).await {
        Ok(params) => params,
        Err(error) => return (None, Err(error)),
    };
    let request = match state.voices().and_then(|voices| resolve(params, voices)) {
        Ok(request) => request,
        Err(error) => return (None, Err(error)),
    };
    let label = VoiceLabel(request.voice.info().name.clone());
    (
        Some(label),
        speech::respond(state, request, Tenant::from_headers(headers)).await,
    )
}

async fn read_params(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<CoquiParams, ApiError> {
    let limits = state.limits();
    let bytes = extract::read_body(body, limits.max_body_bytes).await?;
    // A GET's body, and its Content-Type, are not read (the filter refuses a GET with a body).
    let from_body = if method == Method::GET && bytes.is_empty() {
        CoquiParams::default()
    } else {
        match extract::decode(headers, &bytes)? {
            RequestBody::Json(map) => CoquiParams::from_json(&map)?,
            RequestBody::Pairs(pairs) => CoquiParams::from_pairs(pairs),
        }
    };
    let query = form::parse_pairs(uri.query().unwrap_or(""))?;
    let params = from_headers(headers)
        .or(CoquiParams::from_pairs(query))
        .or(from_body);
    params.check_text(&limits.text)?;
    Ok(params)
}

fn resolve(params: CoquiParams, voices: &LoadedVoices) -> Result<SpeechRequest, ApiError> {
    let voice = voices.resolve(params.voice(), None)?;
    coqui::check_language(params.language(), &voice.info().name, &voice.info().language)?;
    let speaker = speech::resolve_speaker(&voice, params.speaker_id.as_deref(), "speaker_id")?;
    Ok(SpeechRequest {
        options: speech::options_for(&voice, speaker, 1.0),
        voice,
        text: params.text.unwrap_or_default(),
        format: ResponseFormat::Wav,
        stream: StreamMode::Off,
    })
}
