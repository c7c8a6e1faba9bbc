//! The token path on raw request headers: the input is a header block (`name: value` lines;
//! the first line may be `@<seconds>` to move the clock), which goes through
//! `Authenticator::token_from_headers` and, when a token is found, `verify`.
//!
//! Judged: refusals are 401/403 with known codes and never echo the token; an accepted token
//! carries a genuine HMAC by a configured secret (the only signature the fuzzer can know),
//! names its subject, is not expired, and verifies again the same way from the cache.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxgate_fuzz::{jwt, oracle};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut now_s = jwt::NOW_S;
    let mut headers = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        if index == 0 {
            if let Some(seconds) = line
                .strip_prefix('@')
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                now_s = seconds;
                continue;
            }
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((
                name.to_string(),
                value.strip_prefix(' ').unwrap_or(value).to_string(),
            ));
        }
    }
    let authenticator = jwt::authenticator();
    let token = match authenticator.token_from_headers(&headers) {
        Ok(Some(token)) => token,
        Ok(None) => return,
        Err(rejection) => {
            let values: Vec<&str> = headers
                .iter()
                .flat_map(|(_, v)| [v.trim(), v.split_whitespace().last().unwrap_or("")])
                .collect();
            oracle::check_auth_rejection(&rejection, &values);
            return;
        }
    };
    assert!(
        !token.is_empty() && !token.contains(|c: char| c.is_ascii_whitespace() || c.is_control())
    );
    jwt::check_verification(&authenticator, &token, now_s);
});
