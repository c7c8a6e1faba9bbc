//! The Coqui tokenizer of each fixture voice in tests/fixtures/coqui (graphemes, espeak
//! phonemes, multi-speaker `VitsCharacters`), rebuilt with `CoquiTokenizer::from_config` from
//! the text-processing fields of its `config.json` (copied verbatim into this target's seeds,
//! fuzz/corpus/sidecar_coqui_config/, because the full files hold Python's bare `Infinity`,
//! which only the voice loader's private reader accepts). Byte 0 picks the voice; the rest is
//! the text. `clean` and `encode` run on any text; the full `text_to_ids` (espeak-ng for the
//! phoneme voices, through the phonemizer process) on short ones.
//!
//! Judged: ids stay inside the model's vocabulary, blanks interleave as configured, every
//! symbol is either encoded or counted as skipped, and phonemizing a text again gives the
//! same ids; a text on which espeak-ng dies or hangs comes back as the pool's error.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use voxgate_fuzz::phonemized;
use voxgate_sidecar::tokenizer::coqui::{CoquiTextConfig, CoquiTokenizer};
use voxgate_sidecar::tokenizer::TokenIds;

const PHONEMIZE_BYTES: usize = 64;
const CONFIGS: [&str; 3] = [
    include_str!("../corpus/sidecar_coqui_config/chars.json"),
    include_str!("../corpus/sidecar_coqui_config/espeak.json"),
    include_str!("../corpus/sidecar_coqui_config/multispeaker.json"),
];

struct Voice {
    tokenizer: CoquiTokenizer,
    add_blank: bool,
}

fn voices() -> &'static [Voice] {
    static VOICES: OnceLock<Vec<Voice>> = OnceLock::new();
    VOICES.get_or_init(|| {
        CONFIGS
            .iter()
            .map(|text| {
                let config: CoquiTextConfig =
                    serde_json::from_str(text).expect("a fixture config.json parses");
                let tokenizer =
                    CoquiTokenizer::from_config(&config).expect("a fixture tokenizer builds");
                Voice {
                    tokenizer,
                    add_blank: config.add_blank,
                }
            })
            .collect()
    })
}

fn check(voice: &Voice, ids: &TokenIds, symbols: &str) {
    let vocabulary = voice.tokenizer.num_symbols() as i64;
    assert!(
        ids.ids.iter().all(|&id| (0..vocabulary).contains(&id)),
        "an id outside the vocabulary of {vocabulary}"
    );
    assert_eq!(
        ids.symbols + ids.skipped,
        symbols.chars().count(),
        "a symbol neither encoded nor skipped"
    );
    if voice.add_blank {
        assert_eq!(
            ids.ids.len(),
            2 * ids.symbols + 1,
            "blanks do not interleave the symbols"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let voice = &voices()[usize::from(selector) % CONFIGS.len()];
    let cleaned = voice.tokenizer.clean(text);
    check(voice, &voice.tokenizer.encode(&cleaned), &cleaned);
    check(voice, &voice.tokenizer.encode(text), text);
    if rest.len() <= PHONEMIZE_BYTES {
        let Some(ids) = phonemized(voice.tokenizer.text_to_ids(text)) else {
            return;
        };
        let vocabulary = voice.tokenizer.num_symbols() as i64;
        assert!(
            ids.ids.iter().all(|&id| (0..vocabulary).contains(&id)),
            "an id outside the vocabulary"
        );
        if let Some(again) = phonemized(voice.tokenizer.text_to_ids(text)) {
            assert_eq!(
                ids, again,
                "the same text gave other ids the second time: state leaks between calls"
            );
        }
    }
});
