//! Coqui TTS tokenizer rules, rebuilt from a model's `config.json`.
//!
//! Text is cleaned (`text_cleaner`), phonemized with espeak-ng when `use_phonemes`
//! is set, encoded one code point at a time through the vocabulary of the
//! `characters.characters_class` (unknown symbols are skipped and counted), then
//! interleaved with the blank id when `add_blank` is set and framed with BOS/EOS
//! when `enable_eos_bos_chars` is set.
//!
//! Vocabulary order, as Coqui builds it:
//! - `BaseCharacters`, `Graphemes`, `IPAPhonemes`: `[pad, eos, bos, blank]` (those that
//!   are set), then the characters (sorted by code point when `is_sorted`), then the
//!   punctuations. `IPAPhonemes` uses `characters.phonemes` when it is set.
//! - `VitsCharacters`: `[pad]`, the punctuations, the characters followed by the
//!   phonemes (unsorted), then `<BLNK>`; no BOS/EOS symbols.
//! - `BaseVocabulary`: `vocab_dict` as given.
//!
//! A symbol listed twice takes its last position, and a special symbol that is not
//! set takes the id one past the vocabulary, as in Coqui.

use std::collections::HashMap;

use serde::Deserialize;

use super::cleaners::Cleaner;
use super::{TokenIds, TokenizerError};
use crate::phonemize::{phonemize, PhonemizeError};

const VITS_BLANK: &str = "<BLNK>";

/// The text-processing fields of a Coqui `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct CoquiTextConfig {
    #[serde(default)]
    pub use_phonemes: bool,
    #[serde(default)]
    pub phonemizer: Option<String>,
    #[serde(default)]
    pub phoneme_language: Option<String>,
    #[serde(default)]
    pub text_cleaner: Option<String>,
    #[serde(default)]
    pub add_blank: bool,
    #[serde(default)]
    pub enable_eos_bos_chars: bool,
    #[serde(default)]
    pub characters: Option<CharactersConfig>,
}

/// Coqui's `CharactersConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct CharactersConfig {
    #[serde(default)]
    pub characters_class: Option<String>,
    #[serde(default)]
    pub vocab_dict: Option<serde_json::Value>,
    #[serde(default)]
    pub pad: Option<String>,
    #[serde(default)]
    pub eos: Option<String>,
    #[serde(default)]
    pub bos: Option<String>,
    #[serde(default)]
    pub blank: Option<String>,
    #[serde(default)]
    pub characters: Option<String>,
    #[serde(default)]
    pub punctuations: Option<String>,
    #[serde(default)]
    pub phonemes: Option<String>,
    #[serde(default)]
    pub is_unique: bool,
    #[serde(default = "default_true")]
    pub is_sorted: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug)]
pub struct CoquiTokenizer {
    vocab: Vocabulary,
    cleaner: Cleaner,
    phoneme_language: Option<String>,
    add_blank: bool,
    add_bos_eos: bool,
}

#[derive(Debug)]
struct Vocabulary {
    symbols: Vec<String>,
    ids: HashMap<String, i64>,
    blank_id: i64,
    bos_id: i64,
    eos_id: i64,
}

impl CoquiTokenizer {
    pub fn from_config(config: &CoquiTextConfig) -> Result<Self, TokenizerError> {
        let characters = config.characters.as_ref().ok_or_else(|| {
            TokenizerError::InvalidConfig("config.json has no `characters`".into())
        })?;
        let phoneme_language = if config.use_phonemes {
            match config.phonemizer.as_deref() {
                None | Some("espeak" | "espeak-ng") => {}
                Some(other) => {
                    return Err(TokenizerError::UnsupportedPhonemizer(other.to_string()))
                }
            }
            let language = config
                .phoneme_language
                .clone()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| {
                    TokenizerError::InvalidConfig(
                        "`use_phonemes` is set but `phoneme_language` is not".into(),
                    )
                })?;
            Some(language)
        } else {
            None
        };
        Ok(CoquiTokenizer {
            vocab: Vocabulary::from_config(characters, config.use_phonemes)?,
            cleaner: Cleaner::from_name(config.text_cleaner.as_deref())?,
            phoneme_language,
            add_blank: config.add_blank,
            add_bos_eos: config.enable_eos_bos_chars,
        })
    }

    /// The vocabulary in id order.
    pub fn vocab(&self) -> &[String] {
        &self.vocab.symbols
    }

    /// The number of ids the model's embedding accepts.
    pub fn num_symbols(&self) -> usize {
        self.vocab.symbols.len()
    }

    pub fn phoneme_language(&self) -> Option<&str> {
        self.phoneme_language.as_deref()
    }

    pub fn clean(&self, text: &str) -> String {
        self.cleaner.clean(text)
    }

    pub fn text_to_ids(&self, text: &str) -> Result<TokenIds, PhonemizeError> {
        let cleaned = self.clean(text);
        let symbols = match &self.phoneme_language {
            Some(language) => phonemize(&cleaned, language)?,
            None => cleaned,
        };
        Ok(self.encode(&symbols))
    }

    /// Encodes cleaned text (or phonemes) into ids, with blanks and BOS/EOS as configured.
    pub fn encode(&self, symbols: &str) -> TokenIds {
        let mut skipped = 0;
        let mut buf = [0u8; 4];
        let encoded: Vec<i64> = symbols
            .chars()
            .filter_map(|c| {
                let id = self.vocab.ids.get(&*c.encode_utf8(&mut buf)).copied();
                skipped += usize::from(id.is_none());
                id
            })
            .collect();
        let symbols = encoded.len();
        let mut ids = Vec::with_capacity(encoded.len() * 2 + 3);
        if self.add_bos_eos {
            ids.push(self.vocab.bos_id);
        }
        if self.add_blank {
            ids.push(self.vocab.blank_id);
            for id in encoded {
                ids.push(id);
                ids.push(self.vocab.blank_id);
            }
        } else {
            ids.extend(encoded);
        }
        if self.add_bos_eos {
            ids.push(self.vocab.eos_id);
        }
        TokenIds {
            ids,
            symbols,
            skipped,
        }
    }
}

impl Vocabulary {
    fn from_config(config: &CharactersConfig, use_phonemes: bool) -> Result<Self, TokenizerError> {
        let class = config
            .characters_class
            .as_deref()
            .unwrap_or(if use_phonemes {
                "IPAPhonemes"
            } else {
                "Graphemes"
            });
        let class_name = class.rsplit('.').next().unwrap_or(class);
        let set = |field: &Option<String>| field.clone().filter(|s| !s.is_empty());
        let chars = |field: &Option<String>| {
            field
                .as_deref()
                .unwrap_or("")
                .chars()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        match class_name {
            "BaseVocabulary" => {
                let vocab_dict = config.vocab_dict.as_ref().ok_or_else(|| {
                    TokenizerError::InvalidConfig(
                        "BaseVocabulary needs `characters.vocab_dict`".into(),
                    )
                })?;
                Self::from_vocab_dict(vocab_dict, config)
            }
            "BaseCharacters" | "Graphemes" | "IPAPhonemes" => {
                let main = if class_name == "IPAPhonemes" && config.phonemes.is_some() {
                    &config.phonemes
                } else {
                    &config.characters
                };
                let mut main = chars(main);
                if config.is_unique {
                    let mut seen = std::collections::HashSet::new();
                    main.retain(|c| seen.insert(c.clone()));
                }
                if config.is_sorted {
                    main.sort();
                }
                let specials = [&config.pad, &config.eos, &config.bos, &config.blank];
                let symbols: Vec<String> = specials
                    .into_iter()
                    .filter_map(set)
                    .chain(main)
                    .chain(chars(&config.punctuations))
                    .collect();
                Ok(Self::new(
                    symbols,
                    set(&config.blank),
                    set(&config.bos),
                    set(&config.eos),
                ))
            }
            "VitsCharacters" => {
                let symbols: Vec<String> = set(&config.pad)
                    .into_iter()
                    .chain(chars(&config.punctuations))
                    .chain(chars(&config.characters))
                    .chain(chars(&config.phonemes))
                    .chain([VITS_BLANK.to_string()])
                    .collect();
                Ok(Self::new(symbols, Some(VITS_BLANK.to_string()), None, None))
            }
            _ => Err(TokenizerError::UnsupportedCharactersClass(
                class.to_string(),
            )),
        }
    }

    fn new(
        symbols: Vec<String>,
        blank: Option<String>,
        bos: Option<String>,
        eos: Option<String>,
    ) -> Self {
        let ids: HashMap<String, i64> = symbols
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as i64))
            .collect();
        let past_end = symbols.len() as i64;
        let id_of = |symbol: Option<String>| {
            symbol
                .and_then(|s| ids.get(&s).copied())
                .unwrap_or(past_end)
        };
        Vocabulary {
            blank_id: id_of(blank),
            bos_id: id_of(bos),
            eos_id: id_of(eos),
            ids,
            symbols,
        }
    }

    /// `vocab_dict` as a list of symbols (ids by position) or a `{symbol: id}` map.
    fn from_vocab_dict(
        vocab_dict: &serde_json::Value,
        config: &CharactersConfig,
    ) -> Result<Self, TokenizerError> {
        let invalid = || {
            TokenizerError::InvalidConfig(
                "`characters.vocab_dict` is neither a list nor a map of ids".into(),
            )
        };
        let symbols: Vec<String> = match vocab_dict {
            serde_json::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<_>>()
                .ok_or_else(invalid)?,
            serde_json::Value::Object(map) => {
                let mut by_id: Vec<(u64, &String)> = map
                    .iter()
                    .map(|(k, v)| v.as_u64().map(|id| (id, k)))
                    .collect::<Option<_>>()
                    .ok_or_else(invalid)?;
                by_id.sort();
                if by_id.iter().enumerate().any(|(i, (id, _))| *id != i as u64) {
                    return Err(invalid());
                }
                by_id.into_iter().map(|(_, s)| s.clone()).collect()
            }
            _ => return Err(invalid()),
        };
        let set = |field: &Option<String>| field.clone().filter(|s| !s.is_empty());
        Ok(Self::new(
            symbols,
            set(&config.blank),
            set(&config.bos),
            set(&config.eos),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/coqui")
    }

    fn fixture(name: &str) -> (CoquiTokenizer, serde_json::Value) {
        let read =
            |suffix: &str| std::fs::read(fixture_dir().join(format!("{name}.{suffix}"))).unwrap();
        let config_text = String::from_utf8(read("config.json")).unwrap();
        let config: CoquiTextConfig =
            serde_json::from_str(&crate::voice::coqui::python_json_to_json(&config_text)).unwrap();
        let expected: serde_json::Value = serde_json::from_slice(&read("expected.json")).unwrap();
        (CoquiTokenizer::from_config(&config).unwrap(), expected)
    }

    fn ids(value: &serde_json::Value) -> Vec<i64> {
        serde_json::from_value(value.clone()).unwrap()
    }

    const FIXTURES: [&str; 3] = [
        "coqui_vits_chars",
        "coqui_vits_espeak",
        "coqui_vits_multispeaker",
    ];

    #[test]
    fn vocabulary_matches_each_fixture() {
        for name in FIXTURES {
            let (tokenizer, expected) = fixture(name);
            let vocab: Vec<String> = serde_json::from_value(expected["vocab"].clone()).unwrap();
            assert_eq!(tokenizer.vocab(), vocab, "{name}");
            assert_eq!(
                tokenizer.vocab.blank_id,
                expected["blank_id"].as_i64().unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn text_to_ids_matches_each_fixture() {
        for name in FIXTURES {
            let (tokenizer, expected) = fixture(name);
            let text = expected["sample_text"].as_str().unwrap();
            let encoded = tokenizer.text_to_ids(text).unwrap();
            assert_eq!(encoded.ids, ids(&expected["ids"]), "{name}");
            assert_eq!(encoded.skipped, 0, "{name}");
        }
    }

    #[test]
    fn cleaned_text_and_phonemes_match_each_fixture() {
        for name in FIXTURES {
            let (tokenizer, expected) = fixture(name);
            let cleaned = tokenizer.clean(expected["sample_text"].as_str().unwrap());
            assert_eq!(
                cleaned,
                expected["cleaned_text"].as_str().unwrap(),
                "{name}"
            );
            let symbols = match expected["phonemes"].as_str() {
                Some(phonemes) => {
                    let language = tokenizer.phoneme_language().unwrap();
                    assert_eq!(phonemize(&cleaned, language).unwrap(), phonemes, "{name}");
                    phonemes.to_string()
                }
                None => cleaned,
            };
            let encoded = tokenizer.encode(&symbols);
            assert_eq!(encoded.ids, ids(&expected["ids"]), "{name}");
            let unblanked: Vec<i64> = encoded.ids.iter().skip(1).step_by(2).copied().collect();
            assert_eq!(unblanked, ids(&expected["ids_without_blank"]), "{name}");
        }
    }

    fn characters(class: &str) -> CharactersConfig {
        CharactersConfig {
            characters_class: Some(class.into()),
            vocab_dict: None,
            pad: Some("_".into()),
            eos: Some("&".into()),
            bos: Some("*".into()),
            blank: None,
            characters: Some("cba".into()),
            punctuations: Some("!. ".into()),
            phonemes: Some("ə".into()),
            is_unique: false,
            is_sorted: true,
        }
    }

    fn text_config(
        characters: CharactersConfig,
        add_blank: bool,
        eos_bos: bool,
    ) -> CoquiTextConfig {
        CoquiTextConfig {
            use_phonemes: false,
            phonemizer: None,
            phoneme_language: None,
            text_cleaner: None,
            add_blank,
            enable_eos_bos_chars: eos_bos,
            characters: Some(characters),
        }
    }

    #[test]
    fn base_characters_without_blank_frame_with_bos_eos() {
        let tokenizer = CoquiTokenizer::from_config(&text_config(
            characters("TTS.tts.utils.text.characters.Graphemes"),
            false,
            true,
        ))
        .unwrap();
        assert_eq!(
            tokenizer.vocab(),
            ["_", "&", "*", "a", "b", "c", "!", ".", " "]
        );
        let encoded = tokenizer.encode("ab x.");
        assert_eq!(encoded.ids, [2, 3, 4, 8, 7, 1]);
        assert_eq!(encoded.skipped, 1);
    }

    #[test]
    fn unset_blank_takes_the_id_past_the_vocabulary() {
        let tokenizer = CoquiTokenizer::from_config(&text_config(
            characters("TTS.tts.utils.text.characters.Graphemes"),
            true,
            false,
        ))
        .unwrap();
        assert_eq!(tokenizer.encode("a").ids, [9, 3, 9]);
    }

    #[test]
    fn ipa_phonemes_use_the_phoneme_set() {
        let tokenizer = CoquiTokenizer::from_config(&text_config(
            characters("TTS.tts.utils.text.characters.IPAPhonemes"),
            false,
            false,
        ))
        .unwrap();
        assert_eq!(tokenizer.vocab(), ["_", "&", "*", "ə", "!", ".", " "]);
    }

    #[test]
    fn vits_characters_keep_their_order() {
        let tokenizer = CoquiTokenizer::from_config(&text_config(
            characters("TTS.tts.models.vits.VitsCharacters"),
            true,
            false,
        ))
        .unwrap();
        assert_eq!(
            tokenizer.vocab(),
            ["_", "!", ".", " ", "c", "b", "a", "ə", "<BLNK>"]
        );
        assert_eq!(tokenizer.encode("a").ids, [8, 6, 8]);
    }

    #[test]
    fn vocab_dict_lists_and_maps_are_accepted() {
        let mut list = characters("TTS.tts.utils.text.characters.BaseVocabulary");
        list.vocab_dict = Some(serde_json::json!(["_", "a", "b"]));
        let tokenizer = CoquiTokenizer::from_config(&text_config(list, false, false)).unwrap();
        assert_eq!(tokenizer.encode("ba").ids, [2, 1]);
        let mut map = characters("TTS.tts.utils.text.characters.BaseVocabulary");
        map.vocab_dict = Some(serde_json::json!({"b": 1, "_": 0, "a": 2}));
        let tokenizer = CoquiTokenizer::from_config(&text_config(map, false, false)).unwrap();
        assert_eq!(tokenizer.encode("ba").ids, [1, 2]);
    }

    #[test]
    fn unsupported_settings_are_errors() {
        assert!(matches!(
            CoquiTokenizer::from_config(&text_config(characters("my.Custom"), false, false)),
            Err(TokenizerError::UnsupportedCharactersClass(_))
        ));
        let mut config = text_config(
            characters("TTS.tts.utils.text.characters.IPAPhonemes"),
            false,
            false,
        );
        config.use_phonemes = true;
        config.phoneme_language = Some("ja-jp".into());
        config.phonemizer = Some("ja_jp_phonemizer".into());
        assert!(matches!(
            CoquiTokenizer::from_config(&config),
            Err(TokenizerError::UnsupportedPhonemizer(_))
        ));
    }
}
