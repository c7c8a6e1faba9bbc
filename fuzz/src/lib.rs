//! Pieces shared by the fuzz targets: Envoy's shared data with a hostile neighbour for the
//! rate limiter, compact-JWS helpers for the token targets, the oracles that judge what the
//! filter answers (no forged token accepted, no token or control character leaked), and the
//! phonemizer set-up of the targets that reach espeak-ng.

pub mod jwt;
pub mod oracle;
pub mod store;

use std::num::NonZeroUsize;
use std::time::Duration;

use voxgate_sidecar::phonemize::{PhonemizeError, PhonemizerSettings};
use voxgate_sidecar::tokenizer::TokenIds;

/// Sets up the phonemizer pool of a target that phonemizes: one process (libFuzzer runs one
/// input at a time) with a timeout well below libFuzzer's 10 s per input, so that a stuck
/// espeak-ng is answered by the pool the way the service answers it. The program comes from
/// `VOXGATE_PHONEMIZER`, which fuzz/run.sh sets after building it.
pub fn use_one_phonemizer() {
    voxgate_sidecar::phonemize::configure(PhonemizerSettings {
        processes: NonZeroUsize::MIN,
        timeout: Duration::from_secs(3),
        ..PhonemizerSettings::default()
    });
}

/// The ids of a text, or `None` when espeak-ng crashed or hung on it: its defects are contained
/// in the phonemizer and answered as an error, which is the behaviour judged here.
/// Any other error fails the run.
pub fn phonemized(outcome: Result<TokenIds, PhonemizeError>) -> Option<TokenIds> {
    match outcome {
        Ok(ids) => Some(ids),
        Err(
            PhonemizeError::Crashed { .. }
            | PhonemizeError::WorkerDied { .. }
            | PhonemizeError::WorkerTimedOut(_),
        ) => None,
        Err(error) => panic!("phonemizing failed: {error}"),
    }
}
