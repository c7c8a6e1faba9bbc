//! Text → IPA phonemes for the tokenizers, with espeak-ng kept out of the service's process.
//!
//! libespeak-ng 1.51 reads freed memory when it switches language inside a clause (a character
//! of another script, such as U+058A, is enough), and under other heap layouts that read became
//! a segmentation fault or a fortified `strcat` abort. A text that reaches that defect must cost
//! one request, not the service and every request in flight. So espeak runs in child processes
//! (`voxgate-phonemizer`, see `worker`), a small pool of them (`pool`) that the synthesis threads
//! share; a child that dies or hangs is replaced, and the request that met it gets an error.
//! Each of them phonemizes every text in a fork of its own, so no text can read what another
//! left in espeak-ng's memory. Texts that would overflow espeak-ng's stack buffers (long runs of
//! initials, clauses of hundreds of one-letter words) reach it in pieces (`segment`).
//!
//! `phonemize` and `check_voice` use the process-wide pool, which `configure` sets up once at
//! start; without it the pool is built from the defaults of `PhonemizerSettings`.

mod espeak;
mod pool;
mod segment;
pub mod worker;

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::Duration;

pub use pool::{default_program, Phonemizer, PhonemizerSettings};

#[derive(Debug, thiserror::Error)]
pub enum PhonemizeError {
    #[error("espeak-ng could not be initialized (is espeak-ng-data installed?)")]
    Unavailable,
    #[error("espeak-ng has no voice named {0:?}")]
    UnknownVoice(String),
    #[error("the phonemizer process {program} cannot be started: {reason}")]
    CannotStart { program: String, reason: String },
    #[error("the phonemizer process ended while phonemizing ({status}); it is replaced")]
    WorkerDied { status: String },
    #[error("espeak-ng crashed on this text ({status})")]
    Crashed { status: String },
    #[error("the phonemizer process gave no answer within {0:?}; it is replaced")]
    WorkerTimedOut(Duration),
    #[error("no phonemizer process was free within {0:?}")]
    Busy(Duration),
}

static PHONEMIZER: OnceLock<Phonemizer> = OnceLock::new();

/// Sets up the process-wide pool. Returns `false` when it was already in use (the first
/// settings stay).
pub fn configure(settings: PhonemizerSettings) -> bool {
    PHONEMIZER.set(Phonemizer::new(settings)).is_ok()
}

/// The process-wide pool.
pub fn phonemizer() -> &'static Phonemizer {
    PHONEMIZER.get_or_init(|| Phonemizer::new(PhonemizerSettings::default()))
}

/// Phonemizes `text` with the espeak-ng voice `voice` (e.g. `en-us`), keeping clause
/// punctuation; clauses are separated by a single space. Blocks until a phonemizer process
/// is free.
pub fn phonemize(text: &str, voice: &str) -> Result<String, PhonemizeError> {
    phonemizer().phonemize(text, voice)
}

/// Checks, without phonemizing anything, that espeak-ng works and knows `voice`.
/// Used when voices are loaded so a bad voice fails at start, not per request.
pub fn check_voice(voice: &str) -> Result<(), PhonemizeError> {
    phonemizer().check_voice(voice)
}

/// How a phonemizer process or one of its forks ended, for logs and errors.
fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}
