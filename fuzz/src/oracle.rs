//! Judgements every target applies to what the filter answers: the refusal has the OpenAI
//! error shape and an expected status, carries no secret or user text, and forwarded headers
//! cannot split a header block.

use voxgate_filter::auth::FORWARDED_PREFIX;
use voxgate_filter::decision::Rejection;

/// A refusal with one of `statuses`, a well-formed JSON body, and no trace of the token-like
/// strings among `hidden` in its message or headers (see `token_like`).
pub fn check_rejection(rejection: &Rejection, statuses: &[u16], hidden: &[&str]) {
    assert!(
        statuses.contains(&rejection.status()),
        "unexpected status {} ({})",
        rejection.status(),
        rejection.code
    );
    let body: serde_json::Value =
        serde_json::from_str(&rejection.body()).expect("the error body is JSON");
    assert_eq!(
        body["error"]["code"], rejection.code.as_str(),
        "the body names the code"
    );
    assert!(body["error"]["type"].is_string() && body["error"]["message"].is_string());
    for (name, value) in &rejection.headers {
        assert!(
            is_header_safe(name) && is_header_safe(value),
            "unsafe response header {name:?}: {value:?}"
        );
    }
    for secret in hidden.iter().filter(|s| token_like(s)) {
        assert!(
            !rejection.message.contains(secret),
            "the refusal message echoes input: {:?}",
            rejection.message
        );
        for (_, value) in &rejection.headers {
            assert!(
                !value.contains(secret),
                "a refusal header echoes input: {value:?}"
            );
        }
    }
}

/// An authentication refusal: 401 or 403 (its code is one of `decision::Code`'s by type).
pub fn check_auth_rejection(rejection: &Rejection, hidden: &[&str]) {
    check_rejection(rejection, &[401, 403], hidden);
}

/// `x-voxgate-*` headers with values that are non-empty, short and free of control characters.
pub fn check_forwarded(headers: &[(String, String)]) {
    for (name, value) in headers {
        assert!(
            name.starts_with(FORWARDED_PREFIX),
            "forwarded header outside x-voxgate-*: {name}"
        );
        assert!(
            !value.is_empty() && value.len() <= 256,
            "forwarded value of {} bytes",
            value.len()
        );
        assert!(
            is_header_safe(value),
            "forwarded value with control characters: {value:?}"
        );
        assert_eq!(
            value.trim(),
            value,
            "forwarded value with surrounding whitespace"
        );
    }
}

/// Long enough, dotted and unspaced like a JWT: such a string cannot occur by chance in the
/// fixed English messages, so finding one there means the input was echoed.
pub fn token_like(text: &str) -> bool {
    text.len() >= 12 && text.contains('.') && !text.contains(|c: char| c.is_whitespace())
}

fn is_header_safe(text: &str) -> bool {
    !text.chars().any(|c| c.is_control())
}
