//! Endpoints about the service rather than speech: the voice list, the OpenAI model list,
//! liveness, readiness and the Prometheus scrape page.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::state::AppState;
use crate::voice::Voice;
use voxgate_rules::voices::MODEL_NAMES;

/// `GET /v1/audio/voices`: the voices, the default one and the alias table (what each
/// OpenAI voice name and operator alias means). The filter's voice rules are rendered from
/// this answer (`tools/render_envoy.py`).
pub async fn voices(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let voices = state.voices()?;
    let default_name = &voices.default_voice().info().name;
    let list: Vec<Value> = voices
        .all()
        .iter()
        .map(|voice| describe_voice(voice, &voice.info().name == default_name))
        .collect();
    Ok(Json(
        json!({ "default_voice": default_name, "aliases": voices.table().aliases(), "voices": list }),
    ))
}

fn describe_voice(voice: &Voice, is_default: bool) -> Value {
    let info = voice.info();
    json!({
        "name": info.name,
        "format": info.format.as_str(),
        "sample_rate": info.sample_rate,
        "language": info.language,
        "num_speakers": info.speakers.count(),
        "speakers": info.speakers.names_by_id(),
        "speaker_ids": info.speakers.ids(),
        "default": is_default,
    })
}

/// `GET /v1/models`, in OpenAI's list shape: the model aliases, then every voice by name.
pub async fn models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let voices = state.voices()?;
    let model =
        |id: &str| json!({ "id": id, "object": "model", "created": 0, "owned_by": "voxgate" });
    let data: Vec<Value> = MODEL_NAMES
        .iter()
        .map(|alias| model(alias))
        .chain(voices.all().iter().map(|voice| model(&voice.info().name)))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

/// `GET /healthz`: the process is alive and serving HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 once the voices are loaded, 503 before and while shutting down.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.is_draining() {
        return Err(ApiError::shutting_down());
    }
    let voices = state.voices()?;
    Ok(Json(
        json!({ "status": "ready", "voices": voices.all().len() }),
    ))
}

/// `GET /metrics`: Prometheus text exposition format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = (StatusCode::OK, state.metrics().render()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
