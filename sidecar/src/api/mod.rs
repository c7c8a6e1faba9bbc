//! The HTTP API: the routes, JSON answers for unknown routes and wrong methods, and the
//! middleware that serves each request in a span carrying its request id and counts every
//! answer by route, voice and status.

pub mod coqui;
pub mod errors;
pub mod extract;
pub mod meta;
pub mod openai;
pub mod request_id;
pub mod speech;
pub mod state;
pub mod synthesis;

use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tracing::Instrument;

use crate::metrics;
use errors::{ApiError, ErrorCode};
pub use state::{AppState, Limits, LoadedVoices};

/// The voice that served a speech request, kept in the response extensions for the metrics.
#[derive(Debug, Clone)]
pub struct VoiceLabel(pub String);

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/audio/speech", post(openai::speech))
        .route("/api/tts", get(coqui::tts).post(coqui::tts))
        .route("/v1/audio/voices", get(meta::voices))
        .route("/v1/models", get(meta::models))
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/metrics", get(meta::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(count_answer))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

async fn count_answer(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let span = request_id::span(request.headers());
    let response = next.run(request).instrument(span.clone()).await.into_response();
    let _entered = span.enter();
    let voice = response
        .extensions()
        .get::<VoiceLabel>()
        .map_or("none", |label| label.0.as_str());
    metrics::request_answered(&route, voice, response.status().as_u16());
    if let Some(&ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        tracing::debug!(%route, status = response.status().as_u16(), code, "request refused");
        metrics::request_rejected(code);
    }
    response
}
