//! A Coqui `config.json` as a voice folder may hold it (a stranger's model, a hand-edited
//! file): arbitrary bytes through the text-processing fields (`CoquiTextConfig`) and
//! `CoquiTokenizer::from_config`, the vocabulary builder for every `characters_class`
//! including `vocab_dict` lists and maps. A tokenizer that builds must encode text
//! consistently: ids within its vocabulary (one past the end only for a special symbol the
//! configuration leaves unset, as in Coqui), blanks interleaved as configured.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxgate_sidecar::tokenizer::coqui::{CoquiTextConfig, CoquiTokenizer};

const SAMPLES: [&str; 3] = [
    "Hello world. This is a test!",
    "həlˈoʊ wˈɜːld",
    "Ünïcödé, 123; \u{1F600}",
];

fuzz_target!(|data: &[u8]| {
    let Ok(config) = serde_json::from_slice::<CoquiTextConfig>(data) else {
        return;
    };
    let Ok(tokenizer) = CoquiTokenizer::from_config(&config) else {
        return;
    };
    let vocabulary = tokenizer.num_symbols();
    assert_eq!(tokenizer.vocab().len(), vocabulary);
    for sample in SAMPLES {
        let cleaned = tokenizer.clean(sample);
        let ids = tokenizer.encode(&cleaned);
        assert!(
            ids.ids
                .iter()
                .all(|&id| id >= 0 && id as usize <= vocabulary),
            "an id beyond the vocabulary of {vocabulary}"
        );
        assert_eq!(ids.symbols + ids.skipped, cleaned.chars().count());
        let framing = if config.enable_eos_bos_chars { 2 } else { 0 };
        let expected = if config.add_blank {
            2 * ids.symbols + 1
        } else {
            ids.symbols
        };
        assert_eq!(
            ids.ids.len(),
            expected + framing,
            "ids do not follow the configured layout"
        );
    }
});
