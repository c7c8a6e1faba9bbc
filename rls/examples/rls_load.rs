//! A load generator for `make bench` (benchmark 10): `CONCURRENCY` callers of
//! `ShouldRateLimit` on one HTTP/2 connection each, for `SECONDS`, each request one
//! `subject_requests` descriptor of one of `SUBJECTS` subjects, so every call reads and writes a
//! real counter. Prints one JSON line: decisions, errors, seconds, decisions per second and the
//! p50/p99 latency of a call.
//!
//! `rls_load ADDRESS CONCURRENCY SECONDS SUBJECTS PLAN`

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

fn request(subject: &str, plan: &str) -> RateLimitRequest {
    let entry = |key: &str, value: &str| Entry { key: key.to_string(), value: value.to_string() };
    RateLimitRequest {
        domain: "voxgate".to_string(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![entry("limit", "subject_requests"), entry("plan", plan), entry("subject", subject)],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [address, concurrency, seconds, subjects, plan] = args.as_slice() else {
        eprintln!("usage: rls_load ADDRESS CONCURRENCY SECONDS SUBJECTS PLAN");
        std::process::exit(2);
    };
    let concurrency: usize = concurrency.parse().expect("CONCURRENCY is a number");
    let subjects: usize = subjects.parse().expect("SUBJECTS is a number");
    let duration = Duration::from_secs_f64(seconds.parse().expect("SECONDS is a number"));
    let start = Instant::now();
    let mut callers = Vec::new();
    for caller in 0..concurrency {
        let address = format!("http://{address}");
        let plan = plan.clone();
        callers.push(tokio::spawn(async move {
            let mut client = RateLimitServiceClient::connect(address).await.expect("connects");
            let (mut latencies, mut errors, mut n) = (Vec::new(), 0u64, caller);
            while start.elapsed() < duration {
                let subject = format!("load-{}", n % subjects);
                n += concurrency;
                let sent = Instant::now();
                match client.should_rate_limit(request(&subject, &plan)).await {
                    Ok(_) => latencies.push(sent.elapsed().as_secs_f64()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for caller in callers {
        let (mine, failed) = caller.await.expect("caller finishes");
        latencies.extend(mine);
        errors += failed;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    println!(
        "{}",
        serde_json::json!({
            "decisions": latencies.len(),
            "errors": errors,
            "seconds": elapsed,
            "per_second": latencies.len() as f64 / elapsed,
            "p50_ms": at(0.5).map(|s| s * 1e3),
            "p99_ms": at(0.99).map(|s| s * 1e3),
        })
    );
}
