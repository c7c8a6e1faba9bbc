//! Strict JSON parsing of request bodies: one top-level object, no duplicate keys at any
//! depth, no trailing data, bounded nesting.
//!
//! serde_json keeps the last of duplicate keys silently; another parser may keep the first.
//! A body with two `input` keys could then be validated with one text and synthesized with
//! the other, so duplicates are refused.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::{RuleCode, RuleError};

/// Parses `text` as a JSON object; every failure is a 400 with a precise code.
pub fn parse_object(text: &str) -> Result<Map<String, Value>, RuleError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = Strict { duplicate: &duplicate }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(RuleError::new(RuleCode::InvalidBody, "the request body must be a JSON object")),
        Err(error) => Err(match duplicate.into_inner() {
            Some(key) => RuleError::new(RuleCode::DuplicateField, format!("{} appears more than once", describe_key(&key))),
            None => malformed(&error),
        }),
    }
}

fn malformed(error: &serde_json::Error) -> RuleError {
    use serde_json::error::Category;
    let message = match error.classify() {
        // Syntax and end-of-input messages are fixed texts plus a position, never input.
        Category::Syntax | Category::Eof if error.to_string().starts_with("recursion limit exceeded") => {
            format!("JSON nested more than 128 levels deep at line {} column {}", error.line(), error.column())
        }
        Category::Syntax | Category::Eof => format!("malformed JSON: {error}"),
        Category::Data | Category::Io => {
            format!("malformed JSON at line {} column {}", error.line(), error.column())
        }
    };
    RuleError::new(RuleCode::MalformedJson, message)
}

/// Names a key in an error message only if it looks like a field name, so that arbitrary
/// user data is never echoed into answers or logs.
fn describe_key(key: &str) -> String {
    let plain = !key.is_empty() && key.len() <= 32 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if plain {
        format!("field `{key}`")
    } else {
        "a field".to_string()
    }
}

/// Builds a `Value` like serde_json does, but fails on the first duplicate key and records
/// which key it was.
#[derive(Clone, Copy)]
struct Strict<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON numbers are finite, so this is never `Null` for parsed input.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(key);
                return Err(de::Error::custom("duplicate key"));
            }
            let value = access.next_value_seed(self)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        parse_object(text).unwrap_err().code.as_str()
    }

    #[test]
    fn parses_objects_like_serde_json() {
        let text = r#"{"input": "hi", "speed": 1.5, "n": -3, "big": 18446744073709551615, "stream": true,
                       "nested": {"a": [1, {"b": null}]}}"#;
        let strict = parse_object(text).unwrap();
        let plain: Map<String, Value> = serde_json::from_str(text).unwrap();
        assert_eq!(strict, plain);
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_and_after_unescaping() {
        assert_eq!(code(r#"{"input": "a", "input": "b"}"#), "duplicate_field");
        assert_eq!(code(r#"{"input": "a", "\u0069nput": "b"}"#), "duplicate_field");
        assert_eq!(code(r#"{"x": {"k": 1, "k": 2}}"#), "duplicate_field");
        assert_eq!(code(r#"{"x": [{"k": 1, "k": 2}]}"#), "duplicate_field");
        let r = parse_object(r#"{"input": "a", "input": "b"}"#).unwrap_err();
        assert_eq!(r.message, "field `input` appears more than once");
        let r = parse_object(r#"{"secret text here": 1, "secret text here": 2}"#).unwrap_err();
        assert_eq!(r.message, "a field appears more than once");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        for depth in [129, 1_000, 100_000] {
            let text = format!("{{\"input\": {}{}}}", "[".repeat(depth), "]".repeat(depth));
            let r = parse_object(&text).unwrap_err();
            assert_eq!(r.code.as_str(), "malformed_json");
            assert!(r.message.contains("128 levels"), "{}", r.message);
            let objects = format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth));
            assert_eq!(code(&objects), "malformed_json");
        }
        let ok = format!("{{\"input\": {}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(parse_object(&ok).is_ok());
    }

    #[test]
    fn malformed_inputs_have_precise_codes_and_no_echo() {
        assert_eq!(code(r#"{"input": "a"} trailing"#), "malformed_json");
        assert_eq!(code(r#"{"input": "a"}{"input": "b"}"#), "malformed_json");
        assert_eq!(code(r#"{"input": "a""#), "malformed_json");
        assert_eq!(code(""), "malformed_json");
        assert_eq!(code(r#"{"input": "\ud800"}"#), "malformed_json", "lone surrogate escape");
        assert_eq!(code(r#"{"input": "\udc00\ud800"}"#), "malformed_json");
        assert_eq!(code("{\"input\": \"raw\u{1}control\"}"), "malformed_json");
        assert_eq!(code(r#"{"speed": 1e400}"#), "malformed_json");
        assert_eq!(code(r#"["input"]"#), "invalid_body");
        assert_eq!(code(r#""just a string""#), "invalid_body");
        let r = parse_object(r#"{"input": "do not echo me" oops}"#).unwrap_err();
        assert!(!r.message.contains("echo"), "{}", r.message);
        assert!(r.message.contains("line 1"), "{}", r.message);
    }

    #[test]
    fn escaped_surrogate_pairs_are_fine() {
        let map = parse_object(r#"{"input": "\ud83d\ude00"}"#).unwrap();
        assert_eq!(map["input"], "😀");
    }
}
