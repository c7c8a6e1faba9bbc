//! The rules of a speech request that the filter (in Envoy) and the sidecar both apply, kept
//! in one place so that the two can never disagree about the same request.
//!
//! Layout:
//! - `error`: a refused rule as a value (status, code, message, param) and the OpenAI error
//!   body `{"error":{"type","code","message","param"}}`.
//! - `body`, `media`, `json`, `form`: which body an API reads for a `Content-Type`, and its
//!   strict decoding (duplicate keys and malformed escapes refused).
//! - `fields`: typed members of a JSON object.
//! - `openai`, `coqui`: the fields of each speech API, their types and ranges.
//! - `text`: the rules for the text itself.
//! - `speakers`: a voice's speakers and the one a request names.
//! - `voices`: OpenAI voice names, model names, the alias table and voice resolution.
//! - `formats`: `response_format` and the streaming options.

pub mod body;
pub mod coqui;
pub mod error;
pub mod fields;
pub mod form;
pub mod formats;
pub mod json;
pub mod media;
pub mod openai;
pub mod speakers;
pub mod text;
pub mod voices;

pub use body::{Body, BodyFormat, SpeechApi};
pub use coqui::CoquiParams;
pub use error::{RuleCode, RuleError};
pub use formats::{ResponseFormat, StreamMode};
pub use openai::OpenAiSpeech;
pub use speakers::Speakers;
pub use text::TextLimits;
pub use voices::{Resolved, VoiceTable};
