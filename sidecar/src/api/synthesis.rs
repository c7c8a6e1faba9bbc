//! One request's synthesis, run on a blocking thread sentence by sentence. Each sentence's
//! audio (16-bit PCM, preceded by the gap of silence after the first) is sent through a
//! channel as soon as it exists. Before each sentence the job stops if the receiver is gone
//! (the client disconnected) or the deadline has passed, so abandoned work ends early.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::admission::WorkerPermit;
use crate::audio;
use crate::metrics::{self, CancelReason};
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
    pub sentences: Vec<String>,
    pub options: SynthesisOptions,
    pub gap: Duration,
    pub deadline: Instant,
    pub digest: TextDigest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Completed,
    Cancelled(CancelReason),
    Failed,
}

/// Starts the job on the blocking pool. It holds `permit` until its last sentence is done,
/// so a worker slot stays taken exactly as long as inference runs.
pub fn start(job: SynthesisJob, permit: WorkerPermit) -> mpsc::UnboundedReceiver<Chunk> {
    let (sender, receiver) = mpsc::unbounded_channel();
    // The job's log lines carry the request's id, like those logged before it started.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        job.run(&sender);
        drop(permit);
    });
    receiver
}

impl SynthesisJob {
    fn run(self, sender: &mpsc::UnboundedSender<Chunk>) {
        let info = self.voice.info();
        let gap_samples = audio::samples_for(self.gap, info.sample_rate);
        let started = Instant::now();
        let mut inference = Duration::ZERO;
        let mut pcm_bytes = 0usize;
        let mut spoken = 0usize;
        let mut outcome = Outcome::Completed;

        for sentence in &self.sentences {
            if sender.is_closed() {
                outcome = Outcome::Cancelled(CancelReason::ClientDisconnected);
                break;
            }
            if Instant::now() >= self.deadline {
                outcome = Outcome::Cancelled(CancelReason::DeadlineExceeded);
                let _ = sender.send(Err(JobError::DeadlineExceeded));
                break;
            }
            let sentence_started = Instant::now();
            let result = self.voice.synthesize(sentence, &self.options);
            inference += sentence_started.elapsed();
            let samples = match result {
                Ok(samples) => samples,
                Err(SynthesisError::EmptyText) => continue,
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
            if spoken > 0 {
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
            sentences = self.sentences.len(),
            spoken,
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
