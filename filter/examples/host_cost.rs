//! The filter's own work on the host, without Envoy or V8 (`make bench` benchmark 11): an
//! ES256 signature check (a token-cache miss), a token-cache hit, and a whole request with a
//! cached token through the request flow, every bucket charged. Prints one JSON object of
//! microseconds per operation, each the median of `ROUNDS` rounds.
//!
//! `cargo run --release -p voxgate-filter --features testing --example host_cost [-- --quick]`

use std::rc::Rc;
use std::time::Instant;

use jwt_simple::prelude::*;
use proxy_wasm::types::Action;
use serde_json::{json, Value};
use voxgate_filter::auth::AuthConfig;
use voxgate_filter::config::FilterConfig;
use voxgate_filter::http::{Guard, RequestFlow};
use voxgate_filter::metrics::Metrics;
use voxgate_filter::testing::{raw_claims, FakeHost};

const ISSUER: &str = "https://issuer.bench";
const NOW_S: u64 = 1_800_000_000;
const ROUNDS: usize = 5;

fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).expect("base64url")
}

fn provider(key: &ES256KeyPair) -> Value {
    let point = key.public_key().public_key().to_bytes_uncompressed();
    json!({"name": "bench", "issuer": ISSUER, "audiences": ["voxgate"],
           "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": b64(&point[1..33]), "y": b64(&point[33..65])}]}})
}

fn token(key: &ES256KeyPair, subject: &str) -> String {
    let claims = raw_claims(&json!({"iss": ISSUER, "sub": subject, "aud": "voxgate", "plan": "free",
                                     "iat": NOW_S - 10, "exp": NOW_S + 3600}));
    ES256KeyPair::from_bytes(&key.to_bytes()).expect("P-256 key").with_key_id("k1").sign(claims).expect("signing")
}

/// Microseconds per call of `work`, run `count` times, median over the rounds.
fn per_call_us(count: usize, mut work: impl FnMut(usize)) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for i in 0..count {
                work(i);
            }
            started.elapsed().as_secs_f64() * 1e6 / count as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (tokens_per_round, requests_per_round) = if quick { (50, 20_000) } else { (300, 200_000) };
    let key = ES256KeyPair::generate();

    let auth_config = json!({"providers": [provider(&key)], "cache_entries": tokens_per_round * ROUNDS + 1});
    let auth = serde_json::from_value::<AuthConfig>(auth_config).unwrap().compile().unwrap();
    let tokens: Vec<String> = (0..tokens_per_round * ROUNDS).map(|i| token(&key, &format!("user-{i}"))).collect();
    let mut next = 0;
    let verify_us = per_call_us(tokens_per_round, |_| {
        auth.verify(&tokens[next], NOW_S).expect("a valid token");
        next += 1;
    });
    let hot = &tokens[0];
    let hit_us = per_call_us(tokens_per_round * 10, |_| {
        auth.verify(hot, NOW_S).expect("a valid token");
    });

    let unreachable = json!({"capacity": 1_000_000_000u64, "refill_per_second": 1_000_000});
    let config = json!({
        "routes": [{"prefix": "/v1/", "api": "metadata", "auth": true, "budget": "plan"}],
        "auth": {"providers": [provider(&key)]},
        "rate_limits": {"default_plan": "free",
                        "plans": {"free": {"requests": unreachable, "max_in_flight": 256}},
                        "global": {"requests": unreachable}}
    });
    let compiled = FilterConfig::parse(config.to_string().as_bytes()).unwrap().compile().unwrap();
    let guard = Rc::new(Guard { config: compiled, metrics: Metrics::new() });
    let host = FakeHost::new();
    host.now_ms.set(NOW_S * 1000);
    let authorization = format!("Bearer {hot}");
    let request_us = per_call_us(requests_per_round, |_| {
        host.request(&[(":method", "GET"), (":path", "/v1/models"), ("authorization", &authorization)]);
        let mut flow = RequestFlow::new(Some(guard.clone()));
        assert_eq!(flow.on_request_headers(&host, true), Action::Continue, "the request is admitted");
        flow.on_response_headers(&host);
        flow.on_log(&host);
    });

    println!(
        "{}",
        json!({
            "es256_verify_us": verify_us,
            "token_cache_hit_us": hit_us,
            "cached_request_us": request_us,
            "token_bytes": hot.len(),
            "rounds": ROUNDS,
            "tokens_per_round": tokens_per_round,
            "requests_per_round": requests_per_round,
        })
    );
}
