//! Typed access to the members of a JSON request object: `null` counts as absent, and a
//! member of the wrong type is a 400 `invalid_type` naming the member.

use serde_json::{Map, Value};

use crate::error::{RuleCode, RuleError};

/// A string member.
pub fn string<'a>(
    map: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, RuleError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(wrong_type(name, "a string")),
    }
}

/// A string member that must be present.
pub fn required_string<'a>(
    map: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, RuleError> {
    string(map, name)?.ok_or_else(|| missing(name))
}

/// A number member.
pub fn number(map: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, RuleError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(value)) => value
            .as_f64()
            .map(Some)
            .ok_or_else(|| wrong_type(name, "a number")),
        Some(_) => Err(wrong_type(name, "a number")),
    }
}

/// A boolean member.
pub fn boolean(map: &Map<String, Value>, name: &'static str) -> Result<Option<bool>, RuleError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(wrong_type(name, "true or false")),
    }
}

/// A speaker: a name, or a non-negative integer index, returned as text either way.
pub fn speaker(map: &Map<String, Value>, name: &'static str) -> Result<Option<String>, RuleError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(Value::Number(value)) if value.is_u64() => Ok(Some(value.to_string())),
        Some(_) => Err(wrong_type(name, "a string or a non-negative integer")),
    }
}

/// 400 `missing_field` for a required field that is absent.
pub fn missing(name: &'static str) -> RuleError {
    RuleError::invalid(name, RuleCode::MissingField, format!("`{name}` is required"))
}

fn wrong_type(name: &'static str, expected: &str) -> RuleError {
    RuleError::invalid(name, RuleCode::InvalidType, format!("`{name}` must be {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_members() {
        let value = json!({"s": "x", "n": 1.5, "b": true, "i": 3, "z": null, "neg": -1});
        let map = value.as_object().unwrap();
        assert_eq!(string(map, "s").unwrap(), Some("x"));
        assert_eq!(string(map, "z").unwrap(), None);
        assert_eq!(string(map, "missing").unwrap(), None);
        let error = string(map, "n").unwrap_err();
        assert_eq!((error.code.as_str(), error.param), ("invalid_type", Some("n")));
        assert_eq!(required_string(map, "z").unwrap_err().code.as_str(), "missing_field");
        assert_eq!(required_string(map, "absent").unwrap_err().code.as_str(), "missing_field");
        assert_eq!(number(map, "n").unwrap(), Some(1.5));
        assert_eq!(number(map, "s").unwrap_err().code.as_str(), "invalid_type");
        assert_eq!(boolean(map, "b").unwrap(), Some(true));
        assert_eq!(boolean(map, "i").unwrap_err().code.as_str(), "invalid_type");
        assert_eq!(speaker(map, "i").unwrap(), Some("3".to_owned()));
        assert_eq!(speaker(map, "s").unwrap(), Some("x".to_owned()));
        assert_eq!(speaker(map, "neg").unwrap_err().code.as_str(), "invalid_type");
        assert_eq!(speaker(map, "n").unwrap_err().code.as_str(), "invalid_type");
    }
}
