//! One request's synthesis, driven sentence by sentence through the scheduler. Each utterance
//! is a job: it runs on a blocking thread as soon as the scheduler gives it a worker, up to one
//! per worker at once, and its audio (16-bit PCM, preceded by the gap of silence between
//! sentences) is sent through a channel in the order of the text as soon as it and every
//! utterance before it exist. When the receiver is gone (the client disconnected) or the
//! deadline passes, the model runs in progress are stopped, so abandoned work ends within
//! milliseconds rather than at the end of a sentence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::future::{FutureExt, OptionFuture};
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};
use tracing::{info, warn};

use crate::audio;
use crate::inference::{InferenceError, Interrupt};
use crate::metrics::{self, CancelReason};
use crate::scheduler::{Lease, Ticket, Turn};
use crate::tenants::{Charge, Running};
use crate::utterance::Utterance;
use crate::voice::{SynthesisError, SynthesisOptions, Voice};

/// Why a synthesis ended without all its audio.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the request deadline passed before a worker was free")]
    QueueTimeout,
    #[error("the request deadline passed during synthesis")]
    DeadlineExceeded,
    #[error("the input has no speakable text")]
    NothingToSay,
    #[error("synthesis failed: {0}")]
    Synthesis(#[from] SynthesisError),
    #[error("a model run panicked")]
    Panicked,
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

/// A started synthesis, as the answer reads it.
pub struct Synthesis {
    /// The utterances' audio, in order.
    pub chunks: mpsc::UnboundedReceiver<Chunk>,
    /// Sentences of other requests that started while this one waited for its first worker;
    /// sent before the first chunk.
    pub sentences_before: oneshot::Receiver<u64>,
}

/// Starts the job on the scheduler: a task that asks for a worker per utterance and holds the
/// ticket until its last model run is over.
pub fn start(job: SynthesisJob, ticket: Ticket, interrupt: Interrupt) -> Synthesis {
    let (sender, chunks) = mpsc::unbounded_channel();
    let (waited, sentences_before) = oneshot::channel();
    // The job's log lines carry the request's id, like those logged before it started.
    let span = tracing::Span::current();
    tokio::spawn(async move {
        let run = Run {
            job,
            ticket,
            interrupt: Arc::new(interrupt),
            sender,
            waited: Some(waited),
            span,
            started: Instant::now(),
            inference: Duration::ZERO,
            pcm_bytes: 0,
            spoken: 0,
            delivered: 0,
            most_at_once: 0,
        };
        run.drive().await;
    });
    Synthesis {
        chunks,
        sentences_before,
    }
}

/// One model run's samples and how long it took.
type Samples = (Result<Vec<f32>, SynthesisError>, Duration);
/// A model run's outcome, or its panic.
type RunOutput = Result<Samples, JoinError>;

struct Run {
    job: SynthesisJob,
    ticket: Ticket,
    interrupt: Arc<Interrupt>,
    sender: mpsc::UnboundedSender<Chunk>,
    waited: Option<oneshot::Sender<u64>>,
    span: tracing::Span,
    started: Instant,
    inference: Duration,
    pcm_bytes: usize,
    spoken: usize,
    /// Utterances whose outcome was handled, in order.
    delivered: usize,
    /// The most of its utterances that ran at once: 1 is sentence by sentence.
    most_at_once: usize,
}

impl Run {
    async fn drive(mut self) {
        let parallel = self.ticket.workers();
        let mut runs: FuturesOrdered<JoinHandle<Samples>> = FuturesOrdered::new();
        let mut turn: Option<Turn> = None;
        let mut next = 0;
        let deadline = tokio::time::sleep_until(self.job.deadline.into());
        tokio::pin!(deadline);
        let outcome = loop {
            if turn.is_none() && next < self.job.utterances.len() && runs.len() < parallel {
                turn = Some(
                    self.ticket
                        .turn(self.job.utterances[next].predicted_seconds),
                );
            }
            if turn.is_none() && runs.is_empty() {
                break Outcome::Completed;
            }
            tokio::select! {
                biased;
                () = self.sender.closed() => break Outcome::Cancelled(CancelReason::ClientDisconnected),
                () = &mut deadline => {
                    // Only a request kept waiting by busy workers timed out in the queue; one
                    // whose deadline passed with a worker idle for it ran out of time itself.
                    let kept_waiting = self.waited.is_some()
                        && turn.as_mut().is_some_and(|turn| turn.now_or_never().is_none());
                    let error = if kept_waiting {
                        JobError::QueueTimeout
                    } else {
                        JobError::DeadlineExceeded
                    };
                    let _ = self.sender.send(Err(error));
                    break Outcome::Cancelled(CancelReason::DeadlineExceeded);
                }
                Some(output) = runs.next(), if !runs.is_empty() => {
                    if let Some(outcome) = self.deliver(output) {
                        break outcome;
                    }
                }
                Some(lease) = OptionFuture::from(turn.as_mut()), if turn.is_some() => {
                    turn = None;
                    runs.push_back(self.spawn(next, lease));
                    self.most_at_once = self.most_at_once.max(runs.len());
                    next += 1;
                }
            }
        };
        drop(turn);
        if outcome != Outcome::Completed {
            self.interrupt.stop();
        }
        // Stopped runs end within milliseconds; the tenant's running slot and the ticket are
        // held until they have.
        while runs.next().await.is_some() {}
        self.finish(outcome);
    }

    /// Runs utterance `index` on the worker of `lease`, which it gives back when the run ends.
    fn spawn(&mut self, index: usize, lease: Lease) -> JoinHandle<Samples> {
        if let Some(waited) = self.waited.take() {
            let _ = waited.send(self.ticket.begin(&lease));
        }
        let voice = Arc::clone(&self.job.voice);
        let ids = self.job.utterances[index].ids.clone();
        let options = self.job.options.clone();
        let interrupt = Arc::clone(&self.interrupt);
        let span = self.span.clone();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let started = Instant::now();
            let samples = voice.synthesize_ids_on(&ids, &options, &interrupt, lease.worker());
            drop(lease);
            (samples, started.elapsed())
        })
    }

    /// Sends the next utterance's audio; the outcome when the job ends here.
    fn deliver(&mut self, output: RunOutput) -> Option<Outcome> {
        let info = self.job.voice.info();
        let utterance = &self.job.utterances[self.delivered];
        self.delivered += 1;
        let (result, took) = match output {
            Ok(output) => output,
            Err(panic) => {
                warn!(voice = %info.name, chars = self.job.digest.chars, text_hash = %self.job.digest.hash,
                      error = %panic, "a model run panicked");
                let _ = self.sender.send(Err(JobError::Panicked));
                return Some(Outcome::Failed);
            }
        };
        self.inference += took;
        let samples = match result {
            Ok(samples) => samples,
            Err(SynthesisError::EmptyText) => return None,
            Err(SynthesisError::Inference(InferenceError::Stopped)) => {
                let reason = if self.sender.is_closed() {
                    CancelReason::ClientDisconnected
                } else {
                    let _ = self.sender.send(Err(JobError::DeadlineExceeded));
                    CancelReason::DeadlineExceeded
                };
                metrics::inference_interrupted(&info.name, reason);
                return Some(Outcome::Cancelled(reason));
            }
            Err(error) => {
                warn!(voice = %info.name, chars = self.job.digest.chars, text_hash = %self.job.digest.hash,
                      error = %error, "synthesis failed");
                let _ = self.sender.send(Err(error.into()));
                return Some(Outcome::Failed);
            }
        };
        metrics::sentence_synthesized(&info.name);
        let mut chunk = Vec::new();
        if self.spoken > 0 && !utterance.continues_sentence {
            audio::append_silence(
                &mut chunk,
                audio::samples_for(self.job.gap, info.sample_rate),
            );
        }
        audio::append_pcm16le(&mut chunk, &samples);
        self.spoken += 1;
        self.pcm_bytes += chunk.len();
        if self.sender.send(Ok(chunk.into())).is_err() {
            return Some(Outcome::Cancelled(CancelReason::ClientDisconnected));
        }
        None
    }

    fn finish(mut self, mut outcome: Outcome) {
        let info = self.job.voice.info();
        if outcome == Outcome::Completed && self.spoken == 0 {
            outcome = Outcome::Failed;
            let _ = self.sender.send(Err(JobError::NothingToSay));
        }
        let audio_seconds = audio::pcm_seconds(self.pcm_bytes, info.sample_rate);
        let inference_seconds = self.inference.as_secs_f64();
        if let Some(charge) = self.job.charge.take() {
            charge.synthesized(audio_seconds);
        }
        drop(self.job.running.take());
        crate::memory::trim();
        let predicted_seconds: f64 = self
            .job
            .utterances
            .iter()
            .map(|u| u.predicted_seconds)
            .sum();
        if self.spoken > 0 {
            metrics::synthesis_done(&info.name, inference_seconds, audio_seconds);
        }
        if let Outcome::Cancelled(reason) = outcome {
            metrics::synthesis_cancelled(&info.name, reason);
        }
        let _entered = self.span.enter();
        info!(
            voice = %info.name,
            chars = self.job.digest.chars,
            text_hash = %self.job.digest.hash,
            utterances = self.job.utterances.len(),
            spoken = self.spoken,
            most_at_once = self.most_at_once,
            predicted_audio_seconds = format_args!("{predicted_seconds:.2}"),
            audio_seconds = format_args!("{audio_seconds:.2}"),
            inference_seconds = format_args!("{inference_seconds:.3}"),
            elapsed_seconds = format_args!("{:.3}", self.started.elapsed().as_secs_f64()),
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
