//! The rules of a speech request that the filter (in Envoy) and the sidecar both apply, kept
//! in one place so that the two can never disagree about the same request.
//!
//! Layout:
//! - `error`: a refused rule as a value (status, code, message, param) and the OpenAI error
//!   body `{"error":{"type","code","message","param"}}`.
//! - `voices`: OpenAI voice names, model names, the alias table and voice resolution.
//! - `formats`: `response_format` and the streaming options.

pub mod error;
pub mod formats;
pub mod voices;

pub use error::RuleError;
pub use formats::{ResponseFormat, StreamMode};
pub use voices::{Resolved, VoiceTable};
