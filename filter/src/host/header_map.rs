//! The proxy-wasm header-map encoding, both ways: what Envoy hands over for a header map or
//! an HTTP call's answer, and what the filter hands back.

use super::Headers;

/// The proxy-wasm header map encoding: count, then (name length, value length) pairs, then the
/// NUL-terminated names and values.
pub fn encode_header_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs.iter().map(|(n, v)| n.len() + v.len() + 10).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// Decodes the header map encoding, refusing (rather than panicking on) a malformed one.
pub fn decode_header_map(bytes: &[u8]) -> Option<Headers> {
    fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(raw) as usize)
    }
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    let mut data_at = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Vec::with_capacity(count.min(bytes.len() / 10 + 1));
    for i in 0..count {
        let name_len = read_u32(bytes, 4 + i * 8)?;
        let value_len = read_u32(bytes, 8 + i * 8)?;
        let name = bytes.get(data_at..data_at.checked_add(name_len)?)?;
        data_at = data_at.checked_add(name_len + 1)?;
        let value = bytes.get(data_at..data_at.checked_add(value_len)?)?;
        data_at = data_at.checked_add(value_len + 1)?;
        pairs.push((text(name), text(value)));
    }
    Some(pairs)
}

/// Header bytes as text. Valid UTF-8, the common case, is checked and copied in one pass;
/// `from_utf8_lossy` walks it chunk by chunk, several times slower in the VM.
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_map_round_trips() {
        let pairs = [
            (":path", "/v1/audio/speech"),
            ("x-empty", ""),
            ("authorization", "Bearer abc"),
        ];
        let decoded = decode_header_map(&encode_header_map(&pairs)).unwrap();
        let expected: Vec<(String, String)> = pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn malformed_header_map_is_refused_not_panicking() {
        let mut bytes = encode_header_map(&[("a", "b")]);
        bytes.truncate(bytes.len() - 2);
        assert_eq!(decode_header_map(&bytes), None);
        assert_eq!(decode_header_map(&[1, 0, 0]), None);
        assert_eq!(decode_header_map(&[255, 255, 255, 255]), None);
        assert_eq!(decode_header_map(&[]), Some(Vec::new()));
    }

    #[test]
    fn non_utf8_header_values_are_converted_lossily() {
        let mut bytes = encode_header_map(&[("x", "ab")]);
        let at = bytes.len() - 2;
        bytes[at] = 0xff;
        let decoded = decode_header_map(&bytes).unwrap();
        assert_eq!(decoded[0].1, "a\u{fffd}");
    }
}
