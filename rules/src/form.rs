//! `application/x-www-form-urlencoded` decoding, for query strings and form bodies.
//!
//! Strict where common decoders are lenient (they pass `%zz` through and replace invalid
//! UTF-8): a malformed escape or invalid UTF-8 is refused, so the filter never validates a
//! text that the sidecar would decode differently. Repeated names are refused for the same
//! reason as duplicate JSON keys.

use std::collections::BTreeMap;

use crate::error::{RuleCode, RuleError};

/// Decodes `name=value&…` pairs (`+` is a space). Empty segments are skipped; a name
/// without `=` has an empty value.
pub fn parse_pairs(input: &str) -> Result<BTreeMap<String, String>, RuleError> {
    let mut pairs = BTreeMap::new();
    for segment in input.split('&').filter(|s| !s.is_empty()) {
        let (name, value) = segment.split_once('=').unwrap_or((segment, ""));
        let name = decode(name)?;
        let value = decode(value)?;
        if pairs.contains_key(&name) {
            let shown = if is_plain_name(&name) { format!("parameter `{name}`") } else { "a parameter".to_string() };
            return Err(RuleError::new(RuleCode::DuplicateField, format!("{shown} appears more than once")));
        }
        pairs.insert(name, value);
    }
    Ok(pairs)
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn decode(component: &str) -> Result<String, RuleError> {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let high = bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16));
                let low = bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16));
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(RuleError::new(RuleCode::InvalidEncoding, "malformed percent-encoding in the form data"));
                };
                out.push((high * 16 + low) as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|e| {
        RuleError::new(RuleCode::InvalidUtf8,
            format!("form data is not valid UTF-8 after percent-decoding (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_form_style() {
        let pairs = parse_pairs("text=Hello+world%21&speaker_id=p225&&flag&empty=&caf%C3%A9=%E2%82%AC").unwrap();
        assert_eq!(pairs["text"], "Hello world!");
        assert_eq!(pairs["speaker_id"], "p225");
        assert_eq!(pairs["flag"], "");
        assert_eq!(pairs["empty"], "");
        assert_eq!(pairs["café"], "€");
        assert_eq!(parse_pairs("a=%2B%25%26").unwrap()["a"], "+%&");
        assert!(parse_pairs("").unwrap().is_empty());
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for query in ["text=%", "text=%4", "text=%zz", "text=100%", "te%xt=a", "text=%+1"] {
            assert_eq!(parse_pairs(query).unwrap_err().code.as_str(), "invalid_encoding", "{query}");
        }
    }

    #[test]
    fn invalid_utf8_after_decoding_is_refused() {
        for query in ["text=%C0%80", "text=%FF", "text=%E2%82", "text=%ED%A0%80"] {
            assert_eq!(parse_pairs(query).unwrap_err().code.as_str(), "invalid_utf8", "{query}");
        }
    }

    #[test]
    fn repeated_names_are_refused_after_decoding() {
        assert_eq!(parse_pairs("text=a&text=b").unwrap_err().code.as_str(), "duplicate_field");
        assert_eq!(parse_pairs("text=a&t%65xt=b").unwrap_err().code.as_str(), "duplicate_field");
        assert_eq!(parse_pairs("text=a&text=b").unwrap_err().message, "parameter `text` appears more than once");
    }
}
