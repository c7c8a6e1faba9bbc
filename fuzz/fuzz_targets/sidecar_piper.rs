//! Piper's phoneme → id mapping with the bundled Joe voice's `phoneme_id_map`
//! (`PiperTokenizer::phonemes_to_ids`) on arbitrary phoneme strings, and the whole text path
//! through the phonemizer process (`text_to_ids`) on short texts: espeak-ng costs about a
//! millisecond per clause, so only inputs up to `PHONEMIZE_BYTES` reach it.
//!
//! Judged: ids are framed `^ _ … $`, every id comes from the map, every symbol is either
//! encoded or counted as skipped, and phonemizing a text again gives the same ids (espeak-ng
//! keeps global state; none may leak from one request into the next). A text on which
//! espeak-ng dies or hangs must come back as the pool's error, never take this process down.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use unicode_normalization::UnicodeNormalization;
use voxgate_fuzz::phonemized;
use voxgate_sidecar::tokenizer::piper::PiperTokenizer;
use voxgate_sidecar::tokenizer::TokenIds;

const PHONEMIZE_BYTES: usize = 64;
const VOICE_CONFIG: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../.deps/voices/en_US-joe-medium.onnx.json"
));

struct Joe {
    tokenizer: PiperTokenizer,
    map: HashMap<String, Vec<i64>>,
    known_ids: HashSet<i64>,
}

fn joe() -> &'static Joe {
    static JOE: OnceLock<Joe> = OnceLock::new();
    JOE.get_or_init(|| {
        voxgate_fuzz::use_one_phonemizer();
        let config: serde_json::Value =
            serde_json::from_str(VOICE_CONFIG).expect("the Joe voice configuration is JSON");
        let map: HashMap<String, Vec<i64>> =
            serde_json::from_value(config["phoneme_id_map"].clone()).expect("phoneme_id_map");
        let voice = config["espeak"]["voice"]
            .as_str()
            .unwrap_or("en-us")
            .to_string();
        let tokenizer = PiperTokenizer::new(&voice, map.clone(), HashMap::new())
            .expect("the Joe tokenizer builds");
        let known_ids = map.values().flatten().copied().collect();
        Joe {
            tokenizer,
            map,
            known_ids,
        }
    })
}

fn check(joe: &Joe, ids: &TokenIds, phonemes: &str) {
    let first = |symbol: &str| joe.map[symbol][0];
    assert!(ids.ids.len() >= 3);
    assert_eq!(ids.ids[0], first("^"));
    assert_eq!(ids.ids[1], first("_"));
    assert_eq!(*ids.ids.last().unwrap(), first("$"));
    assert!(
        ids.ids.iter().all(|id| joe.known_ids.contains(id)),
        "an id outside the voice's map"
    );
    assert_eq!(
        ids.symbols + ids.skipped,
        phonemes.nfd().count(),
        "a phoneme neither encoded nor skipped"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let joe = joe();
    check(joe, &joe.tokenizer.phonemes_to_ids(text), text);
    if text.len() <= PHONEMIZE_BYTES {
        let Some(ids) = phonemized(joe.tokenizer.text_to_ids(text)) else {
            return;
        };
        assert!(
            ids.ids.iter().all(|id| joe.known_ids.contains(id)),
            "an id outside the voice's map"
        );
        if let Some(again) = phonemized(joe.tokenizer.text_to_ids(text)) {
            assert_eq!(
                ids, again,
                "the same text gave other ids the second time: state leaks between calls"
            );
        }
    }
});
