//! The `x-voxgate-*` headers that tell the sidecar who was authenticated: subject, issuer
//! and the configured claims, rendered as safe header values; and which characters an
//! identity the filter logs or forwards may hold.

use serde_json::{Map, Value};

use voxgate_rules::text::forbidden_kind;

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

/// Why a character may not appear in an identity the filter logs or forwards: control and
/// line-separator characters would split a log line or a header (and forge the next one);
/// bidirectional controls and invisible characters would show a reader another identity than
/// the one checked (`admin\u{200B}` looks like `admin`). The invisible characters are those
/// refused in text to synthesize, from the one list in `validate`.
pub(crate) fn unsafe_character(c: char) -> Option<&'static str> {
    match c {
        c if c.is_control() => Some("control character"),
        '\u{2028}' | '\u{2029}' => Some("line separator"),
        c => forbidden_kind(c),
    }
}

/// The value as forwarded: trimmed and bounded in length; `None` (not forwarded at all) when
/// empty or when it holds a character `unsafe_character` refuses. Such a value is dropped
/// rather than cleaned, because cleaning could turn it into another one (`ad\u{200B}min` into
/// `admin`).
pub(crate) fn header_value(text: &str) -> Option<String> {
    if text.chars().any(|c| unsafe_character(c).is_some()) {
        return None;
    }
    let mut value = text.trim();
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

    const SUBJECT: &str = "alice";

    fn forward(claims: Value, names: &[(&str, &str)]) -> Vec<(String, String)> {
        let names: Vec<(String, String)> = names.iter().map(|(c, h)| (c.to_string(), h.to_string())).collect();
        forwarded_headers(SUBJECT, "https://idp.example", claims.as_object().unwrap(), &names)
    }

    #[test]
    fn a_value_with_a_character_unsafe_in_a_log_or_header_is_not_forwarded() {
        // `claims::subject` refuses such a subject; should one get this far, it is left out.
        let headers = forwarded_headers("alice\r\nx-injected: 1", "https://idp.example", &Map::new(), &[]);
        assert_eq!(headers, vec![("x-voxgate-issuer".to_string(), "https://idp.example".to_string())]);
        for unsafe_value in ["ad\u{200B}min", "pro\u{202E}", "a\u{2028}b", "a\u{2029}", "a\u{85}b", "\u{FEFF}pro", "a\tb"] {
            let headers = forward(json!({"plan": unsafe_value}), &[("plan", "x-voxgate-plan")]);
            assert!(headers.iter().all(|(name, _)| name != "x-voxgate-plan"), "{unsafe_value:?}");
        }
        let headers = forward(json!({"plan": "  pro plan  "}), &[("plan", "x-voxgate-plan")]);
        assert_eq!(headers[2].1, "pro plan");
    }

    #[test]
    fn unsafe_characters_are_named() {
        assert_eq!(unsafe_character('\r'), Some("control character"));
        assert_eq!(unsafe_character('\u{2028}'), Some("line separator"));
        assert_eq!(unsafe_character('\u{202E}'), Some("bidirectional control"));
        assert_eq!(unsafe_character('\u{200B}'), Some("invisible character"));
        for c in ['a', 'é', '@', ' ', '\u{4E2D}', '\u{1F600}'] {
            assert_eq!(unsafe_character(c), None, "{c:?}");
        }
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
