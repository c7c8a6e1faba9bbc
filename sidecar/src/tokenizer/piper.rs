//! Piper's phoneme → id rules.
//!
//! The phoneme string is split into Unicode code points after NFD normalization,
//! optionally rewritten by the voice's `phoneme_map`, and mapped through
//! `phoneme_id_map` as `^ _ p1 _ p2 _ … pn _ $` (BOS, pad, each phoneme followed by
//! pad, EOS). Phonemes without an id are skipped and counted.

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;

use super::{TokenIds, TokenizerError};
use crate::phonemize::{phonemize, PhonemizeError};

const BOS: &str = "^";
const PAD: &str = "_";
const EOS: &str = "$";

#[derive(Debug)]
pub struct PiperTokenizer {
    espeak_voice: String,
    id_map: HashMap<String, Vec<i64>>,
    phoneme_map: HashMap<String, Vec<String>>,
    bos: Vec<i64>,
    pad: Vec<i64>,
    eos: Vec<i64>,
}

impl PiperTokenizer {
    /// Builds the tokenizer from a voice's `espeak.voice`, `phoneme_id_map` and
    /// (possibly empty) `phoneme_map`.
    pub fn new(
        espeak_voice: &str,
        id_map: HashMap<String, Vec<i64>>,
        phoneme_map: HashMap<String, Vec<String>>,
    ) -> Result<Self, TokenizerError> {
        let special = |symbol: &'static str| {
            id_map
                .get(symbol)
                .filter(|ids| !ids.is_empty())
                .cloned()
                .ok_or(TokenizerError::MissingSymbol(symbol))
        };
        Ok(PiperTokenizer {
            espeak_voice: espeak_voice.to_string(),
            bos: special(BOS)?,
            pad: special(PAD)?,
            eos: special(EOS)?,
            id_map,
            phoneme_map,
        })
    }

    pub fn espeak_voice(&self) -> &str {
        &self.espeak_voice
    }

    pub fn text_to_ids(&self, text: &str) -> Result<TokenIds, PhonemizeError> {
        let phonemes = phonemize(text, &self.espeak_voice)?;
        Ok(self.phonemes_to_ids(&phonemes))
    }

    pub fn phonemes_to_ids(&self, phonemes: &str) -> TokenIds {
        let mut ids = self.bos.clone();
        ids.extend_from_slice(&self.pad);
        let mut symbols = 0;
        let mut skipped = 0;
        let mut buf = [0u8; 4];
        for phoneme in phonemes.nfd() {
            let phoneme: &str = phoneme.encode_utf8(&mut buf);
            let mapped = self.phoneme_map.get(phoneme);
            let expanded = mapped.map_or_else(
                || vec![phoneme],
                |list| list.iter().map(String::as_str).collect(),
            );
            for symbol in expanded {
                match self.id_map.get(symbol) {
                    Some(symbol_ids) => {
                        ids.extend_from_slice(symbol_ids);
                        ids.extend_from_slice(&self.pad);
                        symbols += 1;
                    }
                    None => skipped += 1,
                }
            }
        }
        ids.extend_from_slice(&self.eos);
        TokenIds {
            ids,
            symbols,
            skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(phoneme_map: &[(&str, &[&str])]) -> PiperTokenizer {
        let id_map = [
            ("_", 0),
            ("^", 1),
            ("$", 2),
            (" ", 3),
            (".", 10),
            ("a", 14),
            ("h", 20),
            ("ˈ", 120),
            ("̃", 141),
            ("e", 18),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), vec![v]))
        .collect();
        let phoneme_map = phoneme_map
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        PiperTokenizer::new("en-us", id_map, phoneme_map).unwrap()
    }

    #[test]
    fn bos_pad_each_phoneme_then_pad_then_eos() {
        let ids = tokenizer(&[]).phonemes_to_ids("hˈa.");
        assert_eq!(ids.ids, [1, 0, 20, 0, 120, 0, 14, 0, 10, 0, 2]);
        assert_eq!((ids.symbols, ids.skipped), (4, 0));
    }

    #[test]
    fn unknown_phonemes_are_skipped_and_counted() {
        let ids = tokenizer(&[]).phonemes_to_ids("aʒa");
        assert_eq!(ids.ids, [1, 0, 14, 0, 14, 0, 2]);
        assert_eq!((ids.symbols, ids.skipped), (2, 1));
    }

    #[test]
    fn phonemes_are_split_after_nfd() {
        // "ã" (U+00E3) decomposes to "a" + combining tilde (U+0303).
        let ids = tokenizer(&[]).phonemes_to_ids("\u{e3}");
        assert_eq!(ids.ids, [1, 0, 14, 0, 141, 0, 2]);
    }

    #[test]
    fn phoneme_map_rewrites_before_lookup() {
        let ids = tokenizer(&[("ʒ", &["h", "e"])]).phonemes_to_ids("ʒ");
        assert_eq!(ids.ids, [1, 0, 20, 0, 18, 0, 2]);
    }

    #[test]
    fn empty_phonemes_give_only_the_frame() {
        let ids = tokenizer(&[]).phonemes_to_ids("");
        assert_eq!(ids.ids, [1, 0, 2]);
        assert_eq!(ids.symbols, 0);
    }

    #[test]
    fn missing_special_symbol_is_an_error() {
        let id_map = [("_".to_string(), vec![0]), ("^".to_string(), vec![1])]
            .into_iter()
            .collect();
        assert!(matches!(
            PiperTokenizer::new("en-us", id_map, HashMap::new()),
            Err(TokenizerError::MissingSymbol("$"))
        ));
    }

    #[test]
    fn joe_voice_ids_for_a_sentence() {
        let dir = std::env::var("VOXGATE_VOICES_DIR")
            .expect("VOXGATE_VOICES_DIR must point at the voices folder");
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(std::path::Path::new(&dir).join("en_US-joe-medium.onnx.json")).unwrap(),
        )
        .unwrap();
        let id_map: HashMap<String, Vec<i64>> =
            serde_json::from_value(config["phoneme_id_map"].clone()).unwrap();
        let tokenizer = PiperTokenizer::new("en-us", id_map, HashMap::new()).unwrap();
        let ids = tokenizer.text_to_ids("Hi, there.").unwrap();
        // "hˈaɪ, ðˈɛɹ." through the Joe voice's map.
        assert_eq!(
            ids.ids,
            [
                1, 0, 20, 0, 120, 0, 14, 0, 74, 0, 8, 0, 3, 0, 41, 0, 120, 0, 61, 0, 88, 0, 10, 0,
                2
            ]
        );
        assert_eq!(ids.skipped, 0);
    }
}
