//! voxgate sidecar: text-to-speech for Piper and Coqui VITS voices on ONNX Runtime.
//!
//! Synthesis path: text → sentences → espeak-ng phonemes (in `voxgate-phonemizer` child
//! processes) → token ids → ONNX → samples.
//! The HTTP layer (`api`) admits requests through a bounded queue and runs inference
//! off the async runtime.
pub mod inference;
pub mod phonemize;
pub mod text;
pub mod tokenizer;
pub mod voice;

pub mod admission;
pub mod api;
pub mod audio;
pub mod config;
pub mod encode;
pub mod metrics;
