//! The proxy-wasm header-map encoding the filter reads request headers and HTTP-call answers
//! with (`host::header_map::decode_header_map`), on arbitrary bytes: a malformed map is refused, never a
//! panic or an allocation sized by an untrusted count. Any list of pairs must survive
//! `encode_header_map` then `decode_header_map` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxgate_filter::host::header_map::{decode_header_map, encode_header_map};

fuzz_target!(|data: &[u8]| {
    if let Some(pairs) = decode_header_map(data) {
        let total: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
        // Each decoded byte stands for at most three (U+FFFD for one invalid byte).
        assert!(
            total <= data.len() * 3,
            "decoded more text than the map holds"
        );
    }
    let text = String::from_utf8_lossy(data);
    let pairs: Vec<(&str, &str)> = text
        .split('\n')
        .map(|line| line.split_once(':').unwrap_or((line, "")))
        .collect();
    let decoded = decode_header_map(&encode_header_map(&pairs)).expect("an encoded map decodes");
    let expected: Vec<(String, String)> = pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(decoded, expected, "the header map does not round-trip");
});
