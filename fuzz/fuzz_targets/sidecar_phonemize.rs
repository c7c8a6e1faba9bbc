//! Long texts through the phonemizer process (`phonemize::phonemize`), the way the sidecar sends
//! a sentence: the first byte repeats the rest (1 to 128 times, up to `MAX_BYTES`), so that runs
//! such as `"a."` × 85, which overflowed libespeak-ng's stack buffers, are a two-byte input.
//!
//! Judged: every text gives phonemes. Unlike `sidecar_piper` and `sidecar_coqui`, a text on
//! which espeak-ng crashes, or that kills or hangs the phonemizer, fails the run: the phonemizer
//! cuts the texts that reach espeak-ng's known overflows into pieces, and any other is a new one.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;

/// Two sentences' worth: the sidecar sends at most 400 characters at a time.
const MAX_BYTES: usize = 2048;

fuzz_target!(|data: &[u8]| {
    static SETUP: Once = Once::new();
    SETUP.call_once(voxgate_fuzz::use_one_phonemizer);
    let Some((&repeat, unit)) = data.split_first() else {
        return;
    };
    let unit = String::from_utf8_lossy(unit);
    if unit.is_empty() {
        return;
    }
    let mut text = unit.repeat(usize::from(repeat % 128) + 1);
    let mut end = text.len().min(MAX_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    if let Err(error) = voxgate_sidecar::phonemize::phonemize(&text, "en-us") {
        panic!("phonemizing a text of {} bytes failed: {error}", text.len());
    }
});
