//! The `x-voxgate-*` headers that tell the sidecar who was authenticated: subject, issuer
//! and the configured claims, rendered as safe header values.

use serde_json::{Map, Value};

pub const SUBJECT_HEADER: &str = "x-voxgate-subject";
pub const ISSUER_HEADER: &str = "x-voxgate-issuer";
/// Prefix of every forwarded header; the pipeline strips client-sent ones, so these cannot be spoofed.
pub const FORWARDED_PREFIX: &str = "x-voxgate-";
/// Longest forwarded value, in bytes; longer claims are cut at a character boundary.
const MAX_VALUE_BYTES: usize = 256;

/// Rendered once when a token is verified: every later request with the token reuses them.
pub(crate) fn forwarded_headers(
    subject: &str,
    issuer: &str,
    claims: &Map<String, Value>,
    forward_claims: &[(String, String)],
) -> Vec<(String, String)> {
    let mut headers = Vec::with_capacity(2 + forward_claims.len());
    for (name, value) in [(SUBJECT_HEADER, subject), (ISSUER_HEADER, issuer)] {
        if let Some(value) = header_value(value) {
            headers.push((name.to_string(), value));
        }
    }
    for (claim, header) in forward_claims {
        if let Some(value) = claims.get(claim).and_then(claim_text).and_then(|t| header_value(&t)) {
            headers.push((header.clone(), value));
        }
    }
    headers
}

/// Scalars as text; arrays of scalars joined with spaces (like `scope`); objects are not forwarded.
fn claim_text(value: &Value) -> Option<String> {
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match value {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(scalar).collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        }
        other => scalar(other),
    }
}

/// Removes control characters (CR/LF would split headers), trims, bounds the length.
pub(crate) fn header_value(text: &str) -> Option<String> {
    let cleaned: String = text.chars().filter(|c| !c.is_control()).collect();
    let mut value = cleaned.trim();
    if value.len() > MAX_VALUE_BYTES {
        let mut end = MAX_VALUE_BYTES;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value = value[..end].trim_end();
    }
    (!value.is_empty()).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn forward(claims: Value, names: &[(&str, &str)]) -> Vec<(String, String)> {
        let names: Vec<(String, String)> = names.iter().map(|(c, h)| (c.to_string(), h.to_string())).collect();
        forwarded_headers("alice\r\nx-injected: 1", "https://idp.example", claims.as_object().unwrap(), &names)
    }

    #[test]
    fn subject_and_issuer_are_always_forwarded_without_control_characters() {
        let headers = forward(json!({}), &[]);
        assert_eq!(headers[0], ("x-voxgate-subject".to_string(), "alicex-injected: 1".to_string()));
        assert_eq!(headers[1], ("x-voxgate-issuer".to_string(), "https://idp.example".to_string()));
    }

    #[test]
    fn claims_render_as_text() {
        let claims =
            json!({"plan": "pro", "n": 42, "ok": true, "groups": ["a", "b", 3], "obj": {"x": 1}, "empty": " "});
        let headers = forward(
            claims,
            &[
                ("plan", "x-voxgate-plan"),
                ("n", "x-voxgate-n"),
                ("ok", "x-voxgate-ok"),
                ("groups", "x-voxgate-groups"),
                ("obj", "x-voxgate-obj"),
                ("empty", "x-voxgate-empty"),
                ("absent", "x-voxgate-absent"),
            ],
        );
        let rendered: Vec<(&str, &str)> = headers[2..].iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            rendered,
            vec![
                ("x-voxgate-plan", "pro"),
                ("x-voxgate-n", "42"),
                ("x-voxgate-ok", "true"),
                ("x-voxgate-groups", "a b 3")
            ]
        );
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(200);
        let headers = forward(json!({"name": long}), &[("name", "x-voxgate-name")]);
        let value = &headers[2].1;
        assert!(value.len() <= MAX_VALUE_BYTES && value.len() >= MAX_VALUE_BYTES - 1);
        assert!(value.chars().all(|c| c == 'é'));
    }
}
