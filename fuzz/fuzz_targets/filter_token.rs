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
    judge(&authenticator, &token, now_s);
});

fn judge(authenticator: &voxgate_filter::auth::Authenticator, token: &str, now_s: u64) {
    match authenticator.verify(token, now_s) {
        Ok(verified) => {
            assert!(
                jwt::is_genuine_hs256(token, &[jwt::DEV_SECRET, jwt::LAX_SECRET]),
                "accepted a token without a valid signature by a configured key"
            );
            assert!(!verified.subject.is_empty());
            assert!([jwt::DEV_ISSUER, jwt::LAX_ISSUER].contains(&verified.issuer.as_str()));
            assert!(
                now_s <= verified.expires_at.saturating_add(jwt::CLOCK_SKEW_S),
                "accepted an expired token"
            );
            oracle::check_forwarded(&authenticator.forwarded_headers(&verified));
            let again = authenticator
                .verify(token, now_s)
                .expect("a verified token verifies again from the cache");
            assert_eq!(again, verified);
        }
        Err(rejection) => oracle::check_auth_rejection(&rejection, &[token]),
    }
}
