//! voxgate sidecar: text-to-speech for Piper and Coqui VITS voices on ONNX Runtime.
//!
//! Synthesis path: text → sentences → espeak-ng phonemes (in `voxgate-phonemizer` child
//! processes) → token ids, cut into utterances of bounded predicted audio (`utterance`) →
//! ONNX → samples. The predicted audio is a request's cost, checked against the budget the
//! gateway forwards (`tenants`).
//! The HTTP layer (`api`) admits requests to the scheduler (`scheduler`), which runs each
//! utterance as a job on a worker, fairly between tenants, off the async runtime.
pub mod inference;
pub mod phonemize;
pub mod scheduler;
pub mod tenants;
pub mod text;
pub mod tokenizer;
pub mod utterance;
pub mod voice;

pub mod api;
pub mod audio;
pub mod config;
pub mod encode;
pub mod memory;
pub mod metrics;
