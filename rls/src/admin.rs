//! The admin HTTP server: `GET /metrics` (Prometheus text), `GET /readyz` (whether the
//! storage answers now: a failing Redis takes the service out of rotation) and `GET /healthz`
//! (the process serves; a storage outage is not a reason to restart it).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::service::RateLimiter;

#[derive(Clone)]
struct Admin {
    limiter: Arc<RateLimiter>,
    metrics: PrometheusHandle,
}

pub fn router(limiter: Arc<RateLimiter>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/readyz", get(readyz))
        .route("/healthz", get(healthz))
        .with_state(Admin { limiter, metrics })
}

async fn scrape(State(admin): State<Admin>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        admin.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(admin): State<Admin>) -> Response {
    let store = admin.limiter.store();
    match store.ping().await {
        Ok(()) => json_response(
            StatusCode::OK,
            json!({"status": "ready", "storage": store.kind()}),
        ),
        Err(error) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unavailable", "storage": store.kind(), "error": error.to_string()}),
        ),
    }
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({"status": "ok"}))
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
