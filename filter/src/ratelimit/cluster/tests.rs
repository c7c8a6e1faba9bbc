use prost::Message;

use super::proto::{self, Code, DescriptorStatus, RateLimitResponse};
use super::*;

fn tier(limits: &str) -> ClusterTier {
    let config: ClusterConfig =
        serde_json::from_str(&format!(r#"{{"service": "voxgate_rls", "limits": {limits}}}"#)).unwrap();
    ClusterTier::new(config, HeaderStyle::Draft03)
}

fn all_limits() -> ClusterTier {
    tier(r#"["subject_requests", "subject_characters", "anonymous_requests", "anonymous_characters",
             "global_requests", "global_characters"]"#)
}

fn decoded(query: &Query) -> proto::RateLimitRequest {
    proto::RateLimitRequest::decode(query.message.as_slice()).unwrap()
}

fn entries(descriptor: &proto::RateLimitDescriptor) -> Vec<(&str, &str)> {
    descriptor.entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect()
}

const ALICE: Identity = Identity { subject: Some("alice"), plan: Some("pro"), client_addr: "10.0.0.1:5000" };
const ANONYMOUS: Identity = Identity { subject: None, plan: None, client_addr: "10.0.0.1:5000" };

#[test]
fn a_subject_is_asked_about_its_limits_and_the_global_ones_each_with_its_cost() {
    let query = all_limits().query(&ALICE, Some("pro"), 42).unwrap();
    assert_eq!(
        query.limits,
        vec![
            GlobalLimit::SubjectRequests,
            GlobalLimit::SubjectCharacters,
            GlobalLimit::GlobalRequests,
            GlobalLimit::GlobalCharacters
        ]
    );
    let request = decoded(&query);
    assert_eq!(request.domain, "voxgate");
    assert_eq!(request.hits_addend, 1);
    let d = &request.descriptors;
    assert_eq!(entries(&d[0]), vec![("limit", "subject_requests"), ("plan", "pro"), ("subject", "alice")]);
    assert_eq!(entries(&d[1]), vec![("limit", "subject_characters"), ("plan", "pro"), ("subject", "alice")]);
    assert_eq!(entries(&d[2]), vec![("limit", "global_requests")]);
    let costs: Vec<u64> = d.iter().map(|d| d.hits_addend.as_ref().unwrap().value).collect();
    assert_eq!(costs, vec![1, 42, 1, 42]);
}

#[test]
fn an_anonymous_caller_is_counted_by_its_address_without_the_port() {
    let query = all_limits().query(&ANONYMOUS, None, 0).unwrap();
    assert_eq!(query.limits, vec![GlobalLimit::AnonymousRequests, GlobalLimit::GlobalRequests]);
    let request = decoded(&query);
    assert_eq!(entries(&request.descriptors[0]), vec![("limit", "anonymous_requests"), ("client", "10.0.0.1")]);
}

#[test]
fn a_request_no_cluster_limit_applies_to_asks_nothing() {
    assert_eq!(tier(r#"["subject_characters"]"#).query(&ALICE, Some("pro"), 0), None);
    assert_eq!(tier(r#"["subject_requests"]"#).query(&ANONYMOUS, None, 10), None);
}

fn status(code: Code, remaining: u32, reset: Option<(i64, i32)>, limit: Option<(u32, proto::Unit)>) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: limit.map(|(requests_per_unit, unit)| proto::RateLimit {
            requests_per_unit,
            unit: unit as i32,
            name: String::new(),
        }),
        limit_remaining: remaining,
        duration_until_reset: reset.map(|(seconds, nanos)| proto::Duration { seconds, nanos }),
    }
}

fn answer_of(tier: &ClusterTier, limits: &[GlobalLimit], response: RateLimitResponse) -> Answer {
    tier.answer(limits, 0, Some(&response.encode_to_vec()))
}

#[test]
fn ok_allows_and_over_limit_refuses_with_the_limit_that_refused_and_its_reset() {
    let tier = all_limits();
    let limits = [GlobalLimit::SubjectRequests, GlobalLimit::SubjectCharacters];
    let ok = RateLimitResponse { overall_code: Code::Ok as i32, statuses: vec![] };
    assert_eq!(answer_of(&tier, &limits, ok), Answer::Allowed);

    let over = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            status(Code::Ok, 7, Some((3, 0)), Some((10, proto::Unit::Minute))),
            status(Code::OverLimit, 0, Some((41, 500_000_000)), Some((2000, proto::Unit::Minute))),
        ],
    };
    let Answer::OverLimit { limit, retry_after_s, headers } = answer_of(&tier, &limits, over) else {
        panic!("should refuse");
    };
    assert_eq!(limit, GlobalLimit::SubjectCharacters);
    assert_eq!(retry_after_s, 42, "rounded up");
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(header("Retry-After"), Some("42"));
    assert_eq!(header("X-RateLimit-Limit"), Some("2000, 2000;w=60;name=\"cluster_subject_characters\""));
    assert_eq!(header("X-RateLimit-Remaining"), Some("0"));
    assert_eq!(header("X-RateLimit-Reset"), Some("42"));
}

#[test]
fn an_over_limit_answer_without_statuses_names_the_first_limit_asked() {
    let tier = all_limits();
    let over = RateLimitResponse { overall_code: Code::OverLimit as i32, statuses: vec![] };
    let answer = answer_of(&tier, &[GlobalLimit::GlobalRequests], over);
    assert_eq!(
        answer,
        Answer::OverLimit {
            limit: GlobalLimit::GlobalRequests,
            retry_after_s: 1,
            headers: vec![("Retry-After".to_string(), "1".to_string())]
        }
    );
}

#[test]
fn answers_that_decide_nothing_are_failures_naming_why() {
    let tier = all_limits();
    let limits = [GlobalLimit::GlobalRequests];
    let failed = |answer: Answer| match answer {
        Answer::Failed(why) => why,
        other => panic!("should fail, got {other:?}"),
    };
    assert!(failed(tier.answer(&limits, 14, None)).contains("14 (UNAVAILABLE)"));
    assert!(failed(tier.answer(&limits, 4, None)).contains("DEADLINE_EXCEEDED"));
    assert!(failed(tier.answer(&limits, 0, None)).contains("could not be read"));
    assert!(failed(tier.answer(&limits, 0, Some(&[0xff, 0xff, 0xff]))).contains("does not decode"));
    assert!(failed(tier.answer(&limits, 0, Some(&vec![0; MAX_ANSWER_BYTES + 1]))).contains("larger than"));
    let unknown = RateLimitResponse { overall_code: Code::Unknown as i32, statuses: vec![] };
    assert!(failed(answer_of(&tier, &limits, unknown)).contains("code 0"));
    let invented = RateLimitResponse { overall_code: 7, statuses: vec![] };
    assert!(failed(answer_of(&tier, &limits, invented)).contains("code 7"));
    assert!(failed(tier.answer(&[], 0, Some(&RateLimitResponse { overall_code: 2, statuses: vec![] }.encode_to_vec())))
        .contains("not asked about"));
}

#[test]
fn an_empty_answer_is_unknown_not_ok() {
    // Protobuf encodes an all-default message as no bytes: `overall_code` UNKNOWN.
    assert!(matches!(all_limits().answer(&[GlobalLimit::GlobalRequests], 0, Some(&[])), Answer::Failed(_)));
}

#[test]
fn local_only_pauses_the_calls_for_its_seconds() {
    let tier = tier(r#"["global_requests"]"#);
    assert!(!tier.in_local_only(1_000));
    tier.start_local_only(1_000);
    assert!(tier.in_local_only(5_999));
    assert!(!tier.in_local_only(6_000));
}
