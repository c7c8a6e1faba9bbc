//! Text → model token ids, per voice format.
//!
//! Piper voices map espeak-ng phonemes through the voice's `phoneme_id_map`
//! ([`piper`]); Coqui VITS voices rebuild Coqui's vocabulary from `config.json` and
//! encode cleaned text or phonemes with it ([`coqui`], [`cleaners`]).

pub mod cleaners;
pub mod coqui;
pub mod piper;

use crate::phonemize::PhonemizeError;

/// The ids for one utterance, and how many input symbols had no id and were skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds {
    pub ids: Vec<i64>,
    /// Symbols that were encoded (phonemes or characters, without padding or blanks).
    pub symbols: usize,
    pub skipped: usize,
}

/// A voice's text front end.
#[derive(Debug)]
pub enum Tokenizer {
    Piper(piper::PiperTokenizer),
    Coqui(coqui::CoquiTokenizer),
}

impl Tokenizer {
    pub fn text_to_ids(&self, text: &str) -> Result<TokenIds, PhonemizeError> {
        match self {
            Tokenizer::Piper(tokenizer) => tokenizer.text_to_ids(text),
            Tokenizer::Coqui(tokenizer) => tokenizer.text_to_ids(text),
        }
    }

    /// The espeak-ng voice this tokenizer phonemizes with, if it uses phonemes.
    pub fn espeak_voice(&self) -> Option<&str> {
        match self {
            Tokenizer::Piper(tokenizer) => Some(tokenizer.espeak_voice()),
            Tokenizer::Coqui(tokenizer) => tokenizer.phoneme_language(),
        }
    }
}

/// A tokenizer that cannot be built from a voice's configuration.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the symbol map has no {0:?} symbol")]
    MissingSymbol(&'static str),
    #[error("unsupported characters class {0:?}")]
    UnsupportedCharactersClass(String),
    #[error("unsupported text cleaner {0:?}")]
    UnsupportedCleaner(String),
    #[error("unsupported phonemizer {0:?} (only espeak is available)")]
    UnsupportedPhonemizer(String),
    #[error("{0}")]
    InvalidConfig(String),
}
