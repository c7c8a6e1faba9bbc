//! The filter's hand-declared protobuf messages (`voxgate_filter::ratelimit::cluster::proto`)
//! against the compiled Envoy protos (`envoy-types`): what the filter encodes decodes as
//! Envoy's `RateLimitRequest` with the same values, and Envoy's `RateLimitResponse` decodes
//! as the filter's with the same values. Then the whole loop: a query of the filter, decided
//! by this service, read back by the filter.

use std::time::Instant;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration;
use prost::Message;
use voxgate_filter::ratelimit::cluster::{proto, Answer, ClusterConfig, ClusterTier, GlobalLimit};
use voxgate_filter::ratelimit::{HeaderStyle, Identity};
use voxgate_rls::config;
use voxgate_rls::service::RateLimiter;
use voxgate_rls::store::{MemoryStore, Store};

fn tier() -> ClusterTier {
    let config: ClusterConfig = serde_json::from_str(
        r#"{"service": "voxgate_rls", "domain": "tts",
            "limits": ["subject_requests", "subject_characters", "anonymous_requests",
                       "anonymous_characters", "global_requests", "global_characters"]}"#,
    )
    .unwrap();
    ClusterTier::new(config, &[], HeaderStyle::Draft03, 64)
}

const ALICE: Identity = Identity {
    subject: Some("alice:1"),
    plan: Some("pro"),
    client_addr: "10.0.0.1:5000",
};
const ANONYMOUS: Identity = Identity {
    subject: None,
    plan: None,
    client_addr: "[2001:db8::1]:443",
};

fn entries_of_filter(descriptor: &proto::RateLimitDescriptor) -> Vec<(String, String)> {
    descriptor
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

#[test]
fn the_filters_requests_decode_as_envoys_with_the_same_values() {
    for (who, plan, chars) in [
        (&ALICE, Some("pro"), 42),
        (&ANONYMOUS, None, 7),
        (&ANONYMOUS, None, 0),
    ] {
        let query = tier().query(who, plan, chars).unwrap();
        let filter = proto::RateLimitRequest::decode(query.message.as_slice()).unwrap();
        let envoy = RateLimitRequest::decode(query.message.as_slice()).unwrap();
        assert_eq!(envoy.domain, filter.domain);
        assert_eq!(envoy.domain, "tts");
        assert_eq!(envoy.hits_addend, filter.hits_addend);
        assert_eq!(envoy.descriptors.len(), filter.descriptors.len());
        assert_eq!(envoy.descriptors.len(), query.limits.len());
        for (envoy, filter) in envoy.descriptors.iter().zip(&filter.descriptors) {
            let entries: Vec<(String, String)> = envoy
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            assert_eq!(entries, entries_of_filter(filter));
            assert_eq!(
                envoy.hits_addend.map(|h| h.value),
                filter.hits_addend.as_ref().map(|h| h.value)
            );
            assert!(envoy.hits_addend.is_some());
            assert_eq!(envoy.limit, None);
            assert!(!envoy.is_negative_hits);
        }
        // Envoy's messages encode to the same bytes: nothing the filter sends was dropped.
        assert_eq!(envoy.encode_to_vec(), query.message);
    }
}

#[test]
fn envoys_responses_decode_as_the_filters_with_the_same_values() {
    let envoy = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            DescriptorStatus {
                code: Code::Ok as i32,
                current_limit: Some(RateLimit {
                    name: "subject_requests/pro".into(),
                    requests_per_unit: 100,
                    unit: Unit::Minute as i32,
                }),
                limit_remaining: 99,
                duration_until_reset: Some(Duration {
                    seconds: 59,
                    nanos: 250_000_000,
                }),
                quota: None,
            },
            DescriptorStatus {
                code: Code::OverLimit as i32,
                current_limit: Some(RateLimit {
                    name: "global_characters".into(),
                    requests_per_unit: u32::MAX,
                    unit: Unit::Week as i32,
                }),
                limit_remaining: 0,
                duration_until_reset: Some(Duration {
                    seconds: 604_799,
                    nanos: 1,
                }),
                quota: None,
            },
            DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let filter = proto::RateLimitResponse::decode(envoy.encode_to_vec().as_slice()).unwrap();
    assert_eq!(filter.overall_code, proto::Code::OverLimit as i32);
    assert_eq!(filter.statuses.len(), envoy.statuses.len());
    for (filter, envoy) in filter.statuses.iter().zip(&envoy.statuses) {
        assert_eq!(filter.code, envoy.code);
        assert_eq!(filter.limit_remaining, envoy.limit_remaining);
        assert_eq!(
            filter
                .current_limit
                .as_ref()
                .map(|l| (l.name.as_str(), l.requests_per_unit, l.unit)),
            envoy
                .current_limit
                .as_ref()
                .map(|l| (l.name.as_str(), l.requests_per_unit, l.unit))
        );
        assert_eq!(
            filter
                .duration_until_reset
                .as_ref()
                .map(|d| (d.seconds, d.nanos)),
            envoy.duration_until_reset.map(|d| (d.seconds, d.nanos))
        );
    }
    // And back: the filter's encoding is Envoy's.
    assert_eq!(
        RateLimitResponse::decode(filter.encode_to_vec().as_slice()).unwrap(),
        envoy
    );
}

#[test]
fn the_enumerations_have_the_same_numbers() {
    let codes = [
        (proto::Code::Unknown, "UNKNOWN"),
        (proto::Code::Ok, "OK"),
        (proto::Code::OverLimit, "OVER_LIMIT"),
    ];
    for (code, name) in codes {
        assert_eq!(Code::try_from(code as i32).unwrap().as_str_name(), name);
    }
    let units = [
        (proto::Unit::Unknown, "UNKNOWN"),
        (proto::Unit::Second, "SECOND"),
        (proto::Unit::Minute, "MINUTE"),
        (proto::Unit::Hour, "HOUR"),
        (proto::Unit::Day, "DAY"),
        (proto::Unit::Month, "MONTH"),
        (proto::Unit::Year, "YEAR"),
        (proto::Unit::Week, "WEEK"),
    ];
    for (unit, name) in units {
        assert_eq!(Unit::try_from(unit as i32).unwrap().as_str_name(), name);
    }
}

/// A filter configuration whose cluster section matches `tier()`'s, for the service.
const FILTER_CONFIG: &str = r#"{
    "routes": [{"prefix": "/", "api": "openai_speech", "auth": true}],
    "rate_limits": {
        "default_plan": "pro",
        "plans": {"pro": {"requests": {"capacity": 2, "refill_per_second": 0.1},
                          "characters": {"capacity": 100, "refill_per_second": 1}}},
        "global": {"requests": {"capacity": 1000, "refill_per_second": 100}},
        "cluster": {"service": "voxgate_rls", "domain": "tts",
                    "limits": ["subject_requests", "subject_characters", "global_requests"]}
    }
}"#;

#[tokio::test]
async fn a_filter_query_decided_by_the_service_is_read_back_by_the_filter() {
    let limits = config::limits(FILTER_CONFIG.as_bytes()).unwrap();
    let limiter = RateLimiter::new(limits, Store::memory(MemoryStore::new(100, Instant::now())));
    let tier = tier();
    let decide = |chars: u64| {
        let query = tier.query(&ALICE, Some("pro"), chars).unwrap();
        let limiter = &limiter;
        let tier = &tier;
        async move {
            let request = RateLimitRequest::decode(query.message.as_slice()).unwrap();
            let response = limiter.decide(&request).await.unwrap();
            tier.answer(&query.limits, 0, Some(&response.encode_to_vec()))
        }
    };
    // An OK answer reports every counter's reset: what a reserving filter keeps its blocks by.
    let Answer::Allowed { resets_ms } = decide(60).await else {
        panic!("should be allowed");
    };
    assert_eq!(resets_ms.len(), 4);
    assert!(resets_ms[..3].iter().all(|reset| reset.is_some_and(|ms| ms > 0)), "{resets_ms:?}");
    assert_eq!(resets_ms[3], None, "global_characters: no limit here, so nothing to reserve");
    // 60 + 60 characters would pass 100: refused by the characters limit, retry when its
    // 100-second window ends.
    let Answer::OverLimit {
        limit,
        retry_after_s,
        headers,
        spent,
    } = decide(60).await
    else {
        panic!("should be refused");
    };
    assert_eq!(limit, GlobalLimit::SubjectCharacters);
    assert_eq!(retry_after_s, 100);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("X-RateLimit-Remaining"), Some("40"));
    assert_eq!(header("Retry-After"), Some("100"));
    // Nothing was counted for the refused request (all or nothing): 40 are left, as a
    // reserving filter remembers.
    assert_eq!(spent[1].map(|s| s.left), Some(40));
    assert!(matches!(decide(40).await, Answer::Allowed { .. }));
    // Two requests: the requests limit (2 per 20 s) refuses the third.
    let Answer::OverLimit { limit, .. } = decide(0).await else {
        panic!("should be refused");
    };
    assert_eq!(limit, GlobalLimit::SubjectRequests);
}
