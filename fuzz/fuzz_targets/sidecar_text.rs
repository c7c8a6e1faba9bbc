//! Sentence splitting (`text::split_sentences`) and whitespace normalization on arbitrary
//! text: chunks are non-empty, trimmed, single-spaced and at most `MAX_CHUNK_CHARS` long, and
//! together they hold every non-whitespace character of the input, in order. Nothing the
//! user wrote is dropped or invented on the way to the voice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxgate_sidecar::text::{normalize_whitespace, split_sentences, MAX_CHUNK_CHARS};

fn visible(text: &str) -> impl Iterator<Item = char> + '_ {
    text.chars().filter(|c| !c.is_whitespace())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let normalized = normalize_whitespace(text);
    assert!(visible(&normalized).eq(visible(text)));
    assert_eq!(
        normalize_whitespace(&normalized),
        normalized,
        "normalizing twice changes the text"
    );

    let chunks = split_sentences(text);
    for chunk in &chunks {
        assert!(!chunk.is_empty(), "an empty chunk");
        assert!(
            chunk.chars().count() <= MAX_CHUNK_CHARS,
            "a chunk of {} characters",
            chunk.chars().count()
        );
        assert_eq!(
            &normalize_whitespace(chunk),
            chunk,
            "a chunk with untidy whitespace"
        );
    }
    assert!(
        chunks.iter().flat_map(|c| visible(c)).eq(visible(text)),
        "the chunks do not hold the input's characters in order"
    );
});
