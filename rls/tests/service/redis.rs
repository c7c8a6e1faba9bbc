//! Counters in a real Redis: exact under concurrency across processes, all or nothing across
//! counters, served over gRPC, and through a Redis crash and restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{rate_limit::Unit, Code};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use voxgate_filter::ratelimit::cluster::GlobalLimit;

use super::support::{
    descriptor, get, limit, redis_limiter, request, wait_for, Redis, Serving, PATIENCE,
};

/// Generous: these tests are about counting, not about a loaded machine's latency.
const RELAXED: Duration = Duration::from_secs(5);

async fn count(redis: &Redis, key: &str) -> Option<u64> {
    ::redis::cmd("GET")
        .arg(key)
        .query_async(&mut redis.connection().await)
        .await
        .unwrap()
}

fn codes(response: &RateLimitResponse) -> (i32, Vec<i32>) {
    (
        response.overall_code,
        response.statuses.iter().map(|s| s.code).collect(),
    )
}

fn remaining(response: &RateLimitResponse) -> Vec<u32> {
    response
        .statuses
        .iter()
        .map(|s| s.limit_remaining)
        .collect()
}

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_from_several_processes_admit_exactly_the_capacity() {
    let redis = Redis::start();
    // Four stores, each with its own connection: four service processes sharing one Redis.
    let limiters: Vec<_> = (0..4)
        .map(|_| {
            Arc::new(redis_limiter(
                &redis,
                vec![limit(GlobalLimit::GlobalRequests, None, 37, 60)],
                RELAXED,
            ))
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8 {
        let limiter = limiters[task % limiters.len()].clone();
        tasks.spawn(async move {
            let mut admitted = 0;
            for _ in 0..50 {
                let response = limiter
                    .decide(&request(vec![descriptor(
                        &[("limit", "global_requests")],
                        1,
                    )]))
                    .await
                    .unwrap();
                if response.overall_code == OK {
                    admitted += 1;
                }
            }
            admitted
        });
    }
    let admitted: u32 = tasks.join_all().await.into_iter().sum();
    assert_eq!(admitted, 37);
    assert_eq!(
        count(&redis, "voxgate:voxgate:global_requests:-:-").await,
        Some(37)
    );
}

#[tokio::test]
async fn all_counters_of_a_request_or_none_with_different_costs() {
    let redis = Redis::start();
    let limiter = redis_limiter(
        &redis,
        vec![
            limit(GlobalLimit::SubjectRequests, Some("free"), 5, 60),
            limit(GlobalLimit::SubjectCharacters, Some("free"), 1000, 100),
        ],
        RELAXED,
    );
    let ask = |characters: u64| {
        request(vec![
            descriptor(
                &[
                    ("limit", "subject_requests"),
                    ("plan", "free"),
                    ("subject", "alice"),
                ],
                1,
            ),
            descriptor(
                &[
                    ("limit", "subject_characters"),
                    ("plan", "free"),
                    ("subject", "alice"),
                ],
                characters,
            ),
        ])
    };
    let requests_key = "voxgate:voxgate:subject_requests:free:alice";
    let characters_key = "voxgate:voxgate:subject_characters:free:alice";

    let first = limiter.decide(&ask(400)).await.unwrap();
    assert_eq!(codes(&first), (OK, vec![OK, OK]));
    assert_eq!(remaining(&first), vec![4, 600]);
    let second = limiter.decide(&ask(400)).await.unwrap();
    assert_eq!(remaining(&second), vec![3, 200]);

    // 1200 characters would pass 1000: the requests counter is not incremented either.
    let refused = limiter.decide(&ask(400)).await.unwrap();
    assert_eq!(codes(&refused), (OVER, vec![OK, OVER]));
    assert_eq!(remaining(&refused), vec![3, 200]);
    assert_eq!(count(&redis, requests_key).await, Some(2));
    assert_eq!(count(&redis, characters_key).await, Some(800));
    let reset = refused.statuses[1].duration_until_reset.unwrap();
    assert!(
        (1..=100).contains(&reset.seconds) || (reset.seconds == 0 && reset.nanos > 0),
        "{reset:?}"
    );

    let exact = limiter.decide(&ask(200)).await.unwrap();
    assert_eq!(codes(&exact), (OK, vec![OK, OK]));
    assert_eq!(remaining(&exact), vec![2, 0]);

    // A cost of 0 only looks.
    let look = limiter.decide(&ask(0)).await.unwrap();
    assert_eq!(codes(&look), (OK, vec![OK, OK]));
    assert_eq!(count(&redis, characters_key).await, Some(1000));

    // The window started at the first hit, with the limit's own length.
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(characters_key)
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 100_000, "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_service_answers_over_tcp() {
    let redis = Redis::start();
    let limiter = redis_limiter(
        &redis,
        vec![
            limit(GlobalLimit::SubjectRequests, Some("free"), 2, 60),
            limit(GlobalLimit::GlobalRequests, None, 100, 3_600),
        ],
        RELAXED,
    );
    let serving = Serving::start(limiter).await;
    let mut client = serving.client().await;
    let ask = || {
        request(vec![
            descriptor(
                &[
                    ("limit", "subject_requests"),
                    ("plan", "free"),
                    ("subject", "bob"),
                ],
                1,
            ),
            descriptor(&[("limit", "global_requests")], 1),
            descriptor(
                &[("limit", "anonymous_requests"), ("client", "10.0.0.1")],
                1,
            ),
        ])
    };
    for _ in 0..2 {
        let response = client.should_rate_limit(ask()).await.unwrap().into_inner();
        assert_eq!(codes(&response), (OK, vec![OK, OK, OK]));
    }
    let refused = client.should_rate_limit(ask()).await.unwrap().into_inner();
    assert_eq!(codes(&refused), (OVER, vec![OVER, OK, OK]));
    let [subject, global, unmatched] = &refused.statuses[..] else {
        panic!("three statuses")
    };
    let subject_limit = subject.current_limit.as_ref().unwrap();
    assert_eq!(
        (
            subject_limit.name.as_str(),
            subject_limit.requests_per_unit,
            subject_limit.unit
        ),
        ("subject_requests/free", 2, Unit::Minute as i32)
    );
    assert_eq!(subject.limit_remaining, 0);
    assert!(subject.duration_until_reset.unwrap().seconds <= 60);
    assert_eq!(global.limit_remaining, 98);
    assert_eq!(
        global.current_limit.as_ref().unwrap().unit,
        Unit::Hour as i32
    );
    assert_eq!(unmatched.current_limit, None);

    let mut other = ask();
    other.domain = "elsewhere".to_string();
    let error = client.should_rate_limit(other).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert_eq!(error.message(), "unknown domain");

    assert_eq!(
        get(serving.admin, "/readyz").await,
        (200, r#"{"status":"ready","storage":"redis"}"#.to_string())
    );
    assert_eq!(get(serving.admin, "/healthz").await.0, 200);
    let (status, page) = get(serving.admin, "/metrics").await;
    assert_eq!(status, 200);
    for series in [
        r#"voxgate_rls_requests_total{result="over_limit"}"#,
        r#"voxgate_rls_descriptors_total{limit="subject_requests",decision="over_limit"}"#,
        "voxgate_rls_storage_seconds_bucket",
        "voxgate_rls_storage_up",
    ] {
        assert!(page.contains(series), "{series} missing from\n{page}");
    }
    serving.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_makes_calls_unavailable_until_it_is_back() {
    let mut redis = Redis::start();
    let timeout = Duration::from_secs(1);
    let limiter = redis_limiter(
        &redis,
        vec![limit(GlobalLimit::GlobalRequests, None, 1_000, 60)],
        timeout,
    );
    let serving = Serving::start(limiter).await;
    let mut client = serving.client().await;
    let ask = || request(vec![descriptor(&[("limit", "global_requests")], 1)]);
    client.should_rate_limit(ask()).await.unwrap();

    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let error = client.should_rate_limit(ask()).await.unwrap_err();
        eprintln!(
            "unavailable after {:?} (storage timeout {timeout:?})",
            started.elapsed()
        );
        assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
    }
    let (status, body) = get(serving.admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains(r#""status":"unavailable""#), "{body}");
    assert!(body.contains(r#""storage":"redis""#), "{body}");

    redis.restart();
    let deadline = Instant::now() + PATIENCE;
    while client.should_rate_limit(ask()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the service never reconnected to Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(serving.admin, "/readyz", 200).await;
    serving.stop().await;
}
