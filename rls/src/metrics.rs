//! Prometheus metrics of the rate-limit service: names, descriptions and buckets, the recorder
//! behind `GET /metrics`, and one small function per event the service records.
//!
//! Label values never come from request input: limits are the filter's fixed limit names (or
//! `unmatched`), so cardinality stays bounded whatever clients send.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use voxgate_filter::ratelimit::cluster::GlobalLimit;

pub const REQUESTS: &str = "voxgate_rls_requests_total";
pub const DESCRIPTORS: &str = "voxgate_rls_descriptors_total";
pub const STORAGE_SECONDS: &str = "voxgate_rls_storage_seconds";
pub const STORAGE_ERRORS: &str = "voxgate_rls_storage_errors_total";
pub const STORAGE_UP: &str = "voxgate_rls_storage_up";
pub const LIMITS: &str = "voxgate_rls_limits";

/// The `limit` label of descriptors that match no configured limit.
pub const UNMATCHED: &str = "unmatched";

/// A Redis round trip on a local network takes well under a millisecond: the buckets start
/// there and end at the largest storage timeout worth configuring.
const STORAGE_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    Ok,
    OverLimit,
    /// A gRPC error status: an invalid request, or the storage unavailable.
    Error,
}

impl RequestResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestResult::Ok => "ok",
            RequestResult::OverLimit => "over_limit",
            RequestResult::Error => "error",
        }
    }
}

/// Installs the global recorder and returns the handle that renders the scrape page. No
/// listener of its own: the admin server serves the text.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(STORAGE_SECONDS.to_owned()), STORAGE_BUCKETS)?
        .install_recorder()?;
    describe();
    // Every series exists from the start, so that rates over them are defined before the
    // first event.
    for result in [
        RequestResult::Ok,
        RequestResult::OverLimit,
        RequestResult::Error,
    ] {
        counter!(REQUESTS, "result" => result.as_str()).absolute(0);
    }
    for limit in GlobalLimit::ALL.iter().map(|l| l.name()).chain([UNMATCHED]) {
        for decision in ["ok", "over_limit"] {
            counter!(DESCRIPTORS, "limit" => limit, "decision" => decision).absolute(0);
        }
    }
    for kind in ["timeout", "redis", "full"] {
        counter!(STORAGE_ERRORS, "kind" => kind).absolute(0);
    }
    Ok(handle)
}

fn describe() {
    describe_counter!(
        REQUESTS,
        "ShouldRateLimit calls, by result (ok, over_limit, error: a gRPC error status)."
    );
    describe_counter!(
        DESCRIPTORS,
        "Descriptors decided, by limit and decision; `unmatched` ones match no configured limit and do not count."
    );
    describe_histogram!(
        STORAGE_SECONDS,
        Unit::Seconds,
        "Time one storage call took (the Redis round trip)."
    );
    describe_counter!(
        STORAGE_ERRORS,
        "Storage calls that failed, by kind (timeout, redis: an error or a lost connection, full: --max-counters reached)."
    );
    describe_gauge!(
        STORAGE_UP,
        "1 when the last storage call succeeded, 0 when it failed."
    );
    describe_gauge!(LIMITS, "Limits configured: one per limit and plan.");
}

pub fn request(result: RequestResult) {
    counter!(REQUESTS, "result" => result.as_str()).increment(1);
}

pub fn descriptor(limit: &'static str, over_limit: bool) {
    let decision = if over_limit { "over_limit" } else { "ok" };
    counter!(DESCRIPTORS, "limit" => limit, "decision" => decision).increment(1);
}

pub fn storage_seconds(seconds: f64) {
    histogram!(STORAGE_SECONDS).record(seconds);
}

pub fn storage_error(kind: &'static str) {
    counter!(STORAGE_ERRORS, "kind" => kind).increment(1);
}

pub fn storage_up(up: bool) {
    gauge!(STORAGE_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn limits(count: usize) {
    gauge!(LIMITS).set(count as f64);
}
