//! Prometheus metrics of the sidecar: their names, descriptions and buckets, the recorder
//! behind `GET /metrics`, and one small function per event the service records.
//!
//! Label values are never taken from request input: routes come from the router's patterns,
//! voices from the loaded catalog and reasons from fixed error codes, so cardinality stays bounded.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "voxgate_sidecar_requests_total";
pub const REJECTIONS: &str = "voxgate_sidecar_rejections_total";
pub const SYNTHESIS_SECONDS: &str = "voxgate_sidecar_synthesis_seconds";
pub const AUDIO_SECONDS: &str = "voxgate_sidecar_audio_seconds";
pub const REAL_TIME_FACTOR: &str = "voxgate_sidecar_real_time_factor";
pub const SENTENCES: &str = "voxgate_sidecar_sentences_total";
pub const CANCELLED: &str = "voxgate_sidecar_synthesis_cancelled_total";
pub const INTERRUPTED: &str = "voxgate_sidecar_inference_interrupted_total";
pub const AUDIO_CHARGED: &str = "voxgate_sidecar_reported_audio_milliseconds_total";
pub const QUEUE_DEPTH: &str = "voxgate_sidecar_queue_depth";
pub const IN_FLIGHT: &str = "voxgate_sidecar_in_flight";
pub const REQUESTS_IN_PROGRESS: &str = "voxgate_sidecar_requests_in_progress";
pub const WORKERS: &str = "voxgate_sidecar_workers";
pub const VOICES: &str = "voxgate_sidecar_voices";
pub const READY: &str = "voxgate_sidecar_ready";
pub const PHONEMIZERS_REPLACED: &str = "voxgate_sidecar_phonemizers_replaced_total";
pub const PHONEMIZER_CRASHES: &str = "voxgate_sidecar_phonemizer_crashes_total";

const SYNTHESIS_BUCKETS: &[f64] = &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const AUDIO_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
const REAL_TIME_FACTOR_BUCKETS: &[f64] = &[0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0];

/// Why a synthesis stopped before its last sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    ClientDisconnected,
    DeadlineExceeded,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::ClientDisconnected => "client_disconnected",
            CancelReason::DeadlineExceeded => "deadline_exceeded",
        }
    }
}

/// Installs the global recorder and returns the handle that renders the scrape page.
/// No listener of its own is started: the API serves the text on `GET /metrics`.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(SYNTHESIS_SECONDS.to_owned()),
            SYNTHESIS_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(AUDIO_SECONDS.to_owned()), AUDIO_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(REAL_TIME_FACTOR.to_owned()),
            REAL_TIME_FACTOR_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    gauge!(QUEUE_DEPTH).set(0.0);
    gauge!(IN_FLIGHT).set(0.0);
    gauge!(REQUESTS_IN_PROGRESS).set(0.0);
    gauge!(READY).set(0.0);
    Ok(handle)
}

fn describe() {
    describe_counter!(
        REQUESTS,
        "HTTP requests answered, by route, voice and status."
    );
    describe_counter!(
        REJECTIONS,
        "Requests answered with an error, by reason (the error code)."
    );
    describe_histogram!(
        SYNTHESIS_SECONDS,
        Unit::Seconds,
        "Inference time spent on one request, all its sentences together."
    );
    describe_histogram!(
        AUDIO_SECONDS,
        Unit::Seconds,
        "Seconds of audio produced per request; the sum is the total produced."
    );
    describe_histogram!(
        REAL_TIME_FACTOR,
        "Synthesis seconds per second of audio produced, per request (below 1 is faster than real time)."
    );
    describe_counter!(
        SENTENCES,
        "Utterances synthesized: sentences, and the pieces a sentence too long for one model run is cut into."
    );
    describe_counter!(
        CANCELLED,
        "Syntheses stopped before their last sentence, by reason."
    );
    describe_counter!(
        INTERRUPTED,
        "Model runs stopped in the middle, by reason (client_disconnected, deadline_exceeded)."
    );
    describe_counter!(
        AUDIO_CHARGED,
        Unit::Milliseconds,
        "Audio milliseconds reported to the gateway in x-voxgate-audio-seconds, to be charged to tenants."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Admitted requests whose first sentence waits for a worker."
    );
    describe_gauge!(IN_FLIGHT, "Workers running a sentence.");
    describe_gauge!(
        REQUESTS_IN_PROGRESS,
        "Requests admitted to the scheduler and not yet finished."
    );
    describe_gauge!(WORKERS, "Synthesis workers: sentences run at once.");
    describe_gauge!(VOICES, "Voices loaded.");
    describe_counter!(
        PHONEMIZERS_REPLACED,
        "Phonemizer processes killed and replaced, by reason (died, garbled, timed_out)."
    );
    describe_counter!(
        PHONEMIZER_CRASHES,
        "Texts on which espeak-ng crashed (in the fork that phonemized it; the phonemizer lives on)."
    );
    describe_gauge!(
        READY,
        "1 once the voices are loaded and the service accepts speech requests."
    );
}

pub fn request_answered(route: &str, voice: &str, status: u16) {
    counter!(
        REQUESTS,
        "route" => route.to_owned(),
        "voice" => voice.to_owned(),
        "status" => status.to_string()
    )
    .increment(1);
}

pub fn request_rejected(reason: &'static str) {
    counter!(REJECTIONS, "reason" => reason).increment(1);
}

pub fn sentence_synthesized(voice: &str) {
    counter!(SENTENCES, "voice" => voice.to_owned()).increment(1);
}

/// Records one request's synthesis, whether it ran to the end or was cut short.
pub fn synthesis_done(voice: &str, synthesis_seconds: f64, audio_seconds: f64) {
    histogram!(SYNTHESIS_SECONDS, "voice" => voice.to_owned()).record(synthesis_seconds);
    histogram!(AUDIO_SECONDS, "voice" => voice.to_owned()).record(audio_seconds);
    if audio_seconds > 0.0 {
        histogram!(REAL_TIME_FACTOR, "voice" => voice.to_owned())
            .record(synthesis_seconds / audio_seconds);
    }
}

pub fn inference_interrupted(voice: &str, reason: CancelReason) {
    counter!(INTERRUPTED, "voice" => voice.to_owned(), "reason" => reason.as_str()).increment(1);
}

/// Audio reported for charging, in milliseconds (counters are integers).
pub fn audio_reported(seconds: f64) {
    counter!(AUDIO_CHARGED).increment((seconds * 1000.0).round() as u64);
}

pub fn synthesis_cancelled(voice: &str, reason: CancelReason) {
    counter!(CANCELLED, "voice" => voice.to_owned(), "reason" => reason.as_str()).increment(1);
}

pub fn queue_entered() {
    gauge!(QUEUE_DEPTH).increment(1.0);
}

pub fn queue_left() {
    gauge!(QUEUE_DEPTH).decrement(1.0);
}

/// The configured worker count: requests in progress beyond it are waiting for one.
pub fn workers_configured(workers: usize) {
    gauge!(WORKERS).set(workers as f64);
}

pub fn request_admitted() {
    gauge!(REQUESTS_IN_PROGRESS).increment(1.0);
}

pub fn request_finished() {
    gauge!(REQUESTS_IN_PROGRESS).decrement(1.0);
}

pub fn worker_taken() {
    gauge!(IN_FLIGHT).increment(1.0);
}

pub fn worker_released() {
    gauge!(IN_FLIGHT).decrement(1.0);
}

pub fn voices_loaded(count: usize) {
    gauge!(VOICES).set(count as f64);
    gauge!(READY).set(1.0);
}

pub fn mark_not_ready() {
    gauge!(READY).set(0.0);
}

pub fn phonemizer_replaced(reason: &'static str) {
    counter!(PHONEMIZERS_REPLACED, "reason" => reason).increment(1);
}

pub fn phonemizer_crashed() {
    counter!(PHONEMIZER_CRASHES).increment(1);
}
