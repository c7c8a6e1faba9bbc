//! voxgate-rls: the rate-limit service of voxgate's cluster tier. It speaks Envoy's RLS
//! protocol (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) and enforces the
//! limits the filter's own configuration declares in `rate_limits.cluster`, with counters in
//! Redis (any number of service processes) or in memory (a single Envoy).
//!
//! This file runs the two servers, gRPC and admin HTTP, until shutdown.

pub mod admin;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinError;
use tonic::transport::server::TcpIncoming;

use crate::service::RateLimiter;

/// How long the calls in flight may take to finish once shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `limiter` over gRPC on `grpc` and the admin pages on `admin` until `shutdown`
/// completes, then lets the calls in flight finish (for at most `DRAIN_TIMEOUT`). An error is
/// a server that stopped by itself.
pub async fn serve(
    limiter: Arc<RateLimiter>,
    metrics: PrometheusHandle,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let (stop, stopped) = watch::channel(false);
    let signal = |mut stopped: watch::Receiver<bool>| async move {
        // A dropped sender also means stop.
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    // Rate-limit answers are small and awaited by a request: no Nagle delay.
    let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
    let mut grpc_server = tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming_shutdown(
            service::grpc(limiter.clone()),
            incoming,
            signal(stopped.clone()),
        ),
    );
    let admin_router = admin::router(limiter, metrics);
    let mut admin_server = tokio::spawn(async move {
        axum::serve(admin, admin_router)
            .with_graceful_shutdown(signal(stopped))
            .await
    });
    tokio::select! {
        () = shutdown => {}
        result = &mut grpc_server => {
            admin_server.abort();
            return Err(ended_early("gRPC", result));
        }
        result = &mut admin_server => {
            grpc_server.abort();
            return Err(ended_early("admin", result));
        }
    }
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let _ = (&mut grpc_server).await;
        let _ = (&mut admin_server).await;
    })
    .await;
    if drained.is_err() {
        grpc_server.abort();
        admin_server.abort();
    }
    Ok(())
}

/// Why the `server` task ended before shutdown, in words.
fn ended_early<E: std::fmt::Display>(
    server: &str,
    result: Result<Result<(), E>, JoinError>,
) -> String {
    let why = match result {
        Ok(Ok(())) => "without an error".to_string(),
        Ok(Err(error)) => error.to_string(),
        Err(error) => error.to_string(),
    };
    format!("the {server} server stopped: {why}")
}
