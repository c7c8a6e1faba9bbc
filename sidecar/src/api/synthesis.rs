//! One request's synthesis, run on a blocking thread utterance by utterance. Each utterance's
//! audio (16-bit PCM, preceded by the gap of silence between sentences) is sent through a
//! channel as soon as it exists. When the receiver is gone (the client disconnected) or the
//! deadline passes, a watcher stops the model run in progress, so abandoned work ends within
//! milliseconds rather than at the end of a sentence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::admission::WorkerPermit;
use crate::audio;
use crate::inference::{InferenceError, Interrupt};
use crate::metrics::{self, CancelReason};
use crate::tenants::{Charge, Running};
use crate::utterance::Utterance;
use crate::voice::{SynthesisError, SynthesisOptions, Voice};

/// Why a synthesis ended without all its audio.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the request deadline passed during synthesis")]
    DeadlineExceeded,
    #[error("the input has no speakable text")]
    NothingToSay,
    #[error("synthesis failed: {0}")]
    Synthesis(#[from] SynthesisError),
}

/// A sentence's audio, or the error that ended the job.
pub type Chunk = Result<Bytes, JobError>;

/// Identifies the request in logs without its text.
#[derive(Debug, Clone)]
pub struct TextDigest {
    pub chars: usize,
    pub hash: String,
}

pub struct SynthesisJob {
    pub voice: Arc<Voice>,
    pub utterances: Vec<Utterance>,
    pub options: SynthesisOptions,
    pub gap: Duration,
    pub deadline: Instant,
    pub digest: TextDigest,
    /// The tenant's charge, told how much audio was made.
    pub charge: Option<Arc<Charge>>,
    /// The tenant's running slot, held until the last model run is over.
    pub running: Option<Running>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Completed,
    Cancelled(CancelReason),
    Failed,
}

/// Starts the job on the blocking pool. It holds `permit` until its last utterance is done,
/// so a worker slot stays taken exactly as long as inference runs.
pub fn start(
    job: SynthesisJob,
    permit: WorkerPermit,
    interrupt: Interrupt,
) -> mpsc::UnboundedReceiver<Chunk> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let interrupt = Arc::new(interrupt);
    let watcher = tokio::spawn(watch(sender.clone(), Arc::clone(&interrupt), job.deadline));
    // The job's log lines carry the request's id, like those logged before it started.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        job.run(&sender, &interrupt);
        watcher.abort();
        drop(permit);
    });
    receiver
}

/// Stops the job's model run as soon as its client is gone or its deadline has passed.
async fn watch(sender: mpsc::UnboundedSender<Chunk>, interrupt: Arc<Interrupt>, deadline: Instant) {
    tokio::select! {
        () = sender.closed() => {}
        () = tokio::time::sleep_until(deadline.into()) => {}
    }
    interrupt.stop();
}

impl SynthesisJob {
    fn run(mut self, sender: &mpsc::UnboundedSender<Chunk>, interrupt: &Interrupt) {
        let info = self.voice.info();
        let gap_samples = audio::samples_for(self.gap, info.sample_rate);
        let started = Instant::now();
        let mut inference = Duration::ZERO;
        let mut pcm_bytes = 0usize;
        let mut spoken = 0usize;
        let mut outcome = Outcome::Completed;

        for utterance in &self.utterances {
            if sender.is_closed() {
                outcome = Outcome::Cancelled(CancelReason::ClientDisconnected);
                break;
            }
            if Instant::now() >= self.deadline {
                outcome = Outcome::Cancelled(CancelReason::DeadlineExceeded);
                let _ = sender.send(Err(JobError::DeadlineExceeded));
                break;
            }
            let utterance_started = Instant::now();
            let result = self
                .voice
                .synthesize_ids_until(&utterance.ids, &self.options, interrupt);
            inference += utterance_started.elapsed();
            let samples = match result {
                Ok(samples) => samples,
                Err(SynthesisError::EmptyText) => continue,
                Err(SynthesisError::Inference(InferenceError::Stopped)) => {
                    let reason = if sender.is_closed() {
                        CancelReason::ClientDisconnected
                    } else {
                        let _ = sender.send(Err(JobError::DeadlineExceeded));
                        CancelReason::DeadlineExceeded
                    };
                    metrics::inference_interrupted(&info.name, reason);
                    outcome = Outcome::Cancelled(reason);
                    break;
                }
                Err(error) => {
                    warn!(voice = %info.name, chars = self.digest.chars, text_hash = %self.digest.hash,
                          error = %error, "synthesis failed");
                    outcome = Outcome::Failed;
                    let _ = sender.send(Err(error.into()));
                    break;
                }
            };
            metrics::sentence_synthesized(&info.name);
            let mut chunk = Vec::new();
            if spoken > 0 && !utterance.continues_sentence {
                audio::append_silence(&mut chunk, gap_samples);
            }
            audio::append_pcm16le(&mut chunk, &samples);
            spoken += 1;
            pcm_bytes += chunk.len();
            if sender.send(Ok(chunk.into())).is_err() {
                outcome = Outcome::Cancelled(CancelReason::ClientDisconnected);
                break;
            }
        }
        if outcome == Outcome::Completed && spoken == 0 {
            outcome = Outcome::Failed;
            let _ = sender.send(Err(JobError::NothingToSay));
        }

        let audio_seconds = audio::pcm_seconds(pcm_bytes, info.sample_rate);
        let inference_seconds = inference.as_secs_f64();
        if let Some(charge) = self.charge.take() {
            charge.synthesized(audio_seconds);
        }
        drop(self.running.take());
        crate::memory::trim();
        let predicted_seconds: f64 = self.utterances.iter().map(|u| u.predicted_seconds).sum();
        if spoken > 0 {
            metrics::synthesis_done(&info.name, inference_seconds, audio_seconds);
        }
        if let Outcome::Cancelled(reason) = outcome {
            metrics::synthesis_cancelled(&info.name, reason);
        }
        info!(
            voice = %info.name,
            chars = self.digest.chars,
            text_hash = %self.digest.hash,
            utterances = self.utterances.len(),
            spoken,
            predicted_audio_seconds = format_args!("{predicted_seconds:.2}"),
            audio_seconds = format_args!("{audio_seconds:.2}"),
            inference_seconds = format_args!("{inference_seconds:.3}"),
            elapsed_seconds = format_args!("{:.3}", started.elapsed().as_secs_f64()),
            outcome = outcome.as_str(),
            "synthesis finished"
        );
    }
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Cancelled(reason) => reason.as_str(),
            Outcome::Failed => "failed",
        }
    }
}
