//! What both speech APIs share once the request rules (`voxgate_rules`) have passed: the
//! speaker, and the answer to a validated request: its cost (predicted audio) checked against
//! the per-request limit and the tenant's budget, admission to the scheduler, synthesis
//! utterance by utterance, then either a complete file or a chunked stream whose first chunk
//! leaves with the first utterance. Every answer to a tenant reports in
//! `x-voxgate-audio-seconds` the audio seconds the gateway is to charge.

use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures_util::stream::{self, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{timeout_at, Instant};

use super::errors::ApiError;
use super::state::{AppState, Limits};
use super::synthesis::{self, Chunk, JobError, Synthesis, SynthesisJob, TextDigest};
use crate::encode::Encoder;
use crate::inference::Interrupt;
use crate::metrics;
use crate::phonemize::PhonemizeError;
use crate::scheduler::Share;
use crate::tenants::{Charge, Refusal, Tenant};
use crate::text::split_sentences;
use crate::utterance::{self, Script};
use crate::voice::{SynthesisError, SynthesisOptions, Voice};
use voxgate_rules::{ResponseFormat, StreamMode};

/// Response header carrying the sample rate, which raw PCM cannot carry itself.
pub const SAMPLE_RATE_HEADER: &str = "x-sample-rate";
/// Response header: audio seconds the gateway charges to the tenant for this answer.
pub const AUDIO_SECONDS_HEADER: &str = "x-voxgate-audio-seconds";
/// Response header: sentences of other requests that started while this one waited for its
/// first worker.
pub const SENTENCES_BEFORE_HEADER: &str = "x-voxgate-sentences-before";
/// How long after the deadline the answer waits for the synthesis to say how it ended.
const FIRST_CHUNK_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Response header of a budget refusal: audio seconds the tenant needs to have left.
pub const AUDIO_REQUIRED_HEADER: &str = "x-voxgate-audio-required";

/// A request both APIs have validated and resolved against the voices.
pub struct SpeechRequest {
    pub voice: Arc<Voice>,
    pub text: String,
    pub options: SynthesisOptions,
    pub format: ResponseFormat,
    pub stream: StreamMode,
}

/// The speaker a request names, by the shared rules (`voxgate_rules::speakers`): a name or an
/// index of this voice, refused before it can reach the model; `None` is the default speaker.
pub fn resolve_speaker(
    voice: &Voice,
    speaker: Option<&str>,
    param: &'static str,
) -> Result<Option<u32>, ApiError> {
    let info = voice.info();
    Ok(info.speakers.resolve(&info.name, speaker, param)?)
}

/// Synthesis options for `speed`: the voice's own pace divided by the speed factor.
pub fn options_for(voice: &Voice, speaker: Option<u32>, speed: f32) -> SynthesisOptions {
    SynthesisOptions {
        speaker,
        length_scale: Some(voice.info().length_scale / speed),
        noise_scale: None,
        noise_w: None,
    }
}

/// A short fingerprint of the text for logs, which never hold the text itself: the first 48 bits
/// (12 hex digits) of HMAC-SHA256 under a key drawn once per process. The same text gets the same
/// fingerprint within one process, so an operator can follow one text through the log lines of a
/// request or of one sidecar's run; and since the key never leaves the process, someone reading
/// the logs cannot test guesses of a short text (a yes, a name, a number) against its fingerprint,
/// as they could against a plain hash. Fingerprints of one text differ between processes.
pub fn digest(text: &str) -> TextDigest {
    TextDigest {
        chars: text.chars().count(),
        hash: fingerprint(fingerprint_key(), text),
    }
}

/// The key of the text fingerprints: 32 bytes from the OS's random source, drawn on first use
/// and never written anywhere.
fn fingerprint_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source gives the fingerprint key");
        key
    })
}

/// The first 6 bytes of HMAC-SHA256(key, text), in lower-case hex.
fn fingerprint(key: &[u8], text: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(text.as_bytes());
    let tag = mac.finalize().into_bytes();
    tag[..6].iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Prices, admits, synthesizes and answers one request, and reports its cost.
pub async fn respond(
    state: &AppState,
    request: SpeechRequest,
    tenant: Tenant,
) -> Result<Response, ApiError> {
    let mut charge = None;
    let answer = answer(state, request, &tenant, &mut charge).await;
    let mut response = match answer {
        Ok(response) => response,
        Err(error) => {
            // A failed request is not charged its prediction; whatever it synthesized is owed
            // once the synthesis has stopped, and reported with a later answer.
            charge = None;
            error.into_response()
        }
    };
    let reported = match charge.as_deref().and_then(Charge::report) {
        Some(seconds) => seconds,
        None => state.ledger().take_owed(&tenant),
    };
    if reported > 0.0 {
        metrics::audio_reported(reported);
        response
            .headers_mut()
            .insert(AUDIO_SECONDS_HEADER, seconds_value(reported));
    }
    Ok(response)
}

async fn answer(
    state: &AppState,
    request: SpeechRequest,
    tenant: &Tenant,
    charge_out: &mut Option<Arc<Charge>>,
) -> Result<Response, ApiError> {
    let limits = state.limits();
    let deadline = Instant::now() + limits.request_timeout;
    let script = prepare(&request, limits, deadline).await?;
    let predicted = script.predicted_seconds();
    if predicted > limits.max_request_audio_seconds {
        return Err(ApiError::audio_limit_exceeded(
            predicted,
            limits.max_request_audio_seconds,
        ));
    }
    let cost = predicted.max(limits.min_request_audio_seconds);
    let admitted = match state.ledger().admit(tenant, cost) {
        Ok(admitted) => admitted,
        Err(refusal) => return Ok(refused(refusal)),
    };
    *charge_out = admitted.charge.clone();
    let share = Share {
        tenant: tenant.scheduling_key().to_string(),
        weight: state.plan_weights().weight(tenant.plan.as_deref()),
    };
    let ticket = match state.scheduler().admit(share) {
        Ok(ticket) => ticket,
        Err(_queue_full) => {
            tracing::warn!(
                voice = %request.voice.info().name,
                requests = state.scheduler().requests(),
                "refused: wait queue full"
            );
            return Err(ApiError::queue_full(limits.retry_after_secs));
        }
    };

    let sample_rate = request.voice.info().sample_rate;
    let interrupt = Interrupt::new()
        .map_err(|_| ApiError::internal("synthesis_failed", "synthesis could not start"))?;
    let job = SynthesisJob {
        digest: digest(&request.text),
        utterances: script.utterances,
        voice: request.voice,
        options: request.options,
        gap: limits.sentence_gap,
        deadline: deadline.into_std(),
        charge: admitted.charge,
        running: admitted.running,
    };
    let Synthesis {
        mut chunks,
        mut sentences_before,
    } = synthesis::start(job, ticket, interrupt);
    let retry_after = limits.retry_after_secs;

    // A request whose deadline passes while busy workers keep it waiting never started: the
    // sidecar was too busy, which the client may retry (503), unlike a synthesis too long for
    // its deadline (504). The synthesis tells which when its deadline passes; the grace only
    // bounds the wait should it not.
    let first = match timeout_at(deadline + FIRST_CHUNK_GRACE, chunks.recv()).await {
        Ok(Some(Ok(first))) => first,
        Ok(None) => return Err(ended_without_audio()),
        Ok(Some(Err(JobError::QueueTimeout))) => return Err(ApiError::queue_timeout(retry_after)),
        Ok(Some(Err(error))) => return Err(job_error(error)),
        Err(_elapsed) => return Err(ApiError::deadline_exceeded()),
    };
    let waited = sentences_before.try_recv().ok();
    let mut encoder = Encoder::new(
        request.format,
        sample_rate,
        request.stream != StreamMode::Off,
    )
    .map_err(encoding_failed)?;
    if request.stream != StreamMode::Off {
        let first = encoder.push(&first).map_err(encoding_failed)?;
        let response = streaming_response(
            request.format,
            request.stream,
            sample_rate,
            first,
            chunks,
            encoder,
        );
        return Ok(with_sentences_before(response, waited));
    }
    let mut audio = encoder.push(&first).map_err(encoding_failed)?;
    while let Some(chunk) = next_chunk(&mut chunks, deadline).await? {
        audio.extend(encoder.push(&chunk).map_err(encoding_failed)?);
    }
    audio.extend(encoder.finish().map_err(encoding_failed)?);
    let response = audio_response(
        request.format.content_type(),
        sample_rate,
        Body::from(audio),
    );
    Ok(with_sentences_before(response, waited))
}

/// Tells how long the request waited for its first worker, counted in other requests'
/// sentences: what fairness between tenants bounds.
fn with_sentences_before(mut response: Response, sentences: Option<u64>) -> Response {
    if let Some(sentences) = sentences {
        response
            .headers_mut()
            .insert(SENTENCES_BEFORE_HEADER, HeaderValue::from(sentences));
    }
    response
}

/// Splits and phonemizes the text (on the blocking pool: the phonemizer waits on pipes).
async fn prepare(
    request: &SpeechRequest,
    limits: &Limits,
    deadline: Instant,
) -> Result<Script, ApiError> {
    let max_utterance_seconds = limits.max_utterance_seconds;
    let voice = Arc::clone(&request.voice);
    let text = request.text.clone();
    let options = request.options.clone();
    let task = tokio::task::spawn_blocking(move || {
        utterance::prepare(
            &voice,
            &split_sentences(&text),
            &options,
            max_utterance_seconds,
        )
    });
    match timeout_at(deadline, task).await {
        Err(_elapsed) => Err(ApiError::deadline_exceeded()),
        Ok(Err(_join)) => Err(ApiError::internal(
            "synthesis_failed",
            "preparing the text failed; see the service log",
        )),
        Ok(Ok(Ok(script))) if script.utterances.is_empty() => {
            Err(job_error(JobError::NothingToSay))
        }
        Ok(Ok(Ok(script))) => Ok(script),
        // Every phonemizer process stayed busy: the sidecar is overloaded, not the text bad.
        Ok(Ok(Err(SynthesisError::Phonemize(PhonemizeError::Busy(_))))) => {
            Err(ApiError::queue_timeout(limits.retry_after_secs))
        }
        Ok(Ok(Err(error))) => Err(job_error(JobError::Synthesis(error))),
    }
}

/// The answer to a request the tenant's budget or in-flight cap does not allow.
fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::OverCapacity { required, capacity } => {
            ApiError::audio_exceeds_plan(required, capacity).into_response()
        }
        Refusal::OverBudget { required, budget } => {
            let mut response = ApiError::audio_budget_exceeded(required, budget).into_response();
            response
                .headers_mut()
                .insert(AUDIO_REQUIRED_HEADER, seconds_value(required));
            response
        }
        Refusal::TooManyInFlight { max } => ApiError::too_many_in_flight(max).into_response(),
    }
}

fn seconds_value(seconds: f64) -> HeaderValue {
    HeaderValue::from_str(&format!("{seconds:.3}")).unwrap_or(HeaderValue::from_static("0"))
}

async fn next_chunk(
    chunks: &mut UnboundedReceiver<Chunk>,
    deadline: Instant,
) -> Result<Option<Bytes>, ApiError> {
    match timeout_at(deadline, chunks.recv()).await {
        Err(_elapsed) => Err(ApiError::deadline_exceeded()),
        Ok(None) => Ok(None),
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(error))) => Err(job_error(error)),
    }
}

fn job_error(error: JobError) -> ApiError {
    match error {
        JobError::DeadlineExceeded | JobError::QueueTimeout => ApiError::deadline_exceeded(),
        JobError::NothingToSay | JobError::Synthesis(SynthesisError::EmptyText) => {
            ApiError::invalid("empty_input", "the input has no speakable text")
        }
        JobError::Synthesis(SynthesisError::SpeakerOutOfRange { .. }) => ApiError::invalid(
            "unknown_speaker",
            "the speaker is out of range for this voice",
        ),
        JobError::Synthesis(SynthesisError::Phonemize(
            PhonemizeError::WorkerDied { .. }
            | PhonemizeError::WorkerTimedOut(_)
            | PhonemizeError::Crashed { .. },
        )) => ApiError::internal(
            "phonemizer_failed",
            "the phonemizer failed on this text; see the service log",
        ),
        JobError::Synthesis(_) | JobError::Panicked => {
            ApiError::internal("synthesis_failed", "synthesis failed; see the service log")
        }
    }
}

fn ended_without_audio() -> ApiError {
    ApiError::internal(
        "synthesis_failed",
        "synthesis ended without audio; see the service log",
    )
}

fn encoding_failed(error: crate::encode::EncodeError) -> ApiError {
    tracing::error!(%error, "encoding failed");
    ApiError::internal(
        "encoding_failed",
        "encoding the audio failed; see the service log",
    )
}

type StreamError = Box<dyn std::error::Error + Send + Sync>;

/// The first chunk is already synthesized and encoded, so the status line and headers leave
/// together with audio; later sentences follow as they are produced and encoded, then what
/// the encoder holds back. An error after the first chunk can only cut the stream short,
/// which the client sees as a truncated chunked body. `sse` wraps each piece of audio in a
/// `speech.audio.delta` event and ends with `speech.audio.done`.
fn streaming_response(
    format: ResponseFormat,
    mode: StreamMode,
    sample_rate: u32,
    first: Vec<u8>,
    rest: UnboundedReceiver<Chunk>,
    encoder: Encoder,
) -> Response {
    let later = stream::unfold((rest, Some(encoder)), |(mut rest, encoder)| async move {
        let mut encoder = encoder?;
        let piece = match rest.recv().await {
            Some(Ok(chunk)) => encoder.push(&chunk).map_err(StreamError::from),
            Some(Err(error)) => Err(StreamError::from(error)),
            None => {
                let tail = encoder.finish().map_err(StreamError::from);
                return Some((tail, (rest, None)));
            }
        };
        Some((piece, (rest, Some(encoder))))
    });
    let audio = stream::once(async move { Ok::<_, StreamError>(first) })
        .chain(later)
        .filter(|piece| std::future::ready(!matches!(piece, Ok(bytes) if bytes.is_empty())));
    if mode == StreamMode::Sse {
        let events = audio
            .map(|piece| {
                piece.map(|bytes| {
                    sse_event(&json!({"type": "speech.audio.delta", "audio": BASE64.encode(bytes)}))
                })
            })
            .chain(stream::once(async {
                Ok(sse_event(&json!({"type": "speech.audio.done"})))
            }));
        return audio_response(SSE_CONTENT_TYPE, sample_rate, Body::from_stream(events));
    }
    let audio = audio.map(|piece| piece.map(Bytes::from));
    audio_response(format.content_type(), sample_rate, Body::from_stream(audio))
}

const SSE_CONTENT_TYPE: &str = "text/event-stream";

fn sse_event(event: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {event}\n\n"))
}

fn audio_response(content_type: &'static str, sample_rate: u32, body: Body) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(SAMPLE_RATE_HEADER, HeaderValue::from(sample_rate));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_short_stable_and_hides_the_text() {
        let first = digest("Hello world.");
        assert_eq!(first.chars, 12);
        assert_eq!(first.hash.len(), 12);
        assert!(first
            .hash
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_eq!(
            first.hash,
            digest("Hello world.").hash,
            "stable within the process"
        );
        assert_ne!(first.hash, digest("Hello world!").hash);
        assert!(!first.hash.contains("Hello"));
    }

    #[test]
    fn digest_is_keyed_so_a_log_reader_cannot_test_guesses() {
        use sha2::Digest;
        let text = "yes";
        let plain: String = Sha256::digest(text.as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(digest(text).hash, plain, "not the unkeyed SHA-256 prefix");
        // HMAC-SHA256 under the process's key, truncated; the MAC checked on RFC 4231's case 2.
        assert_eq!(digest(text).hash, fingerprint(fingerprint_key(), text));
        assert_eq!(
            fingerprint(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60"
        );
        // Another key (another process) gives another fingerprint of the same text.
        assert_ne!(fingerprint(&[0u8; 32], text), fingerprint(&[1u8; 32], text));
        assert_ne!(fingerprint_key(), &[0u8; 32]);
    }
}
