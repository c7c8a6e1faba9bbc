use prost::Message;

use super::proto::{self, Code, DescriptorStatus, RateLimitResponse};
use super::*;
use crate::testing::MemoryStore;

fn tier(limits: &str) -> ClusterTier {
    let config: ClusterConfig =
        serde_json::from_str(&format!(r#"{{"service": "voxgate_rls", "limits": {limits}}}"#)).unwrap();
    ClusterTier::new(config, &[], HeaderStyle::Draft03, 64)
}

/// A tier reserving `reserve` of each limit, built from a whole `rate_limits` section as the
/// filter builds it: pro has 100 requests and 1,000 characters, the whole service 10,000.
fn reserving(reserve: f64) -> ClusterTier {
    let rate_limits: crate::ratelimit::RateLimitConfig = serde_json::from_value(serde_json::json!({
        "plans": {"pro": {"requests": {"capacity": 100, "refill_per_second": 1},
                          "characters": {"capacity": 1000, "refill_per_second": 10}}},
        "default_plan": "pro",
        "global": {"requests": {"capacity": 10000, "refill_per_second": 100}},
        "cluster": {"service": "voxgate_rls", "reserve": reserve,
                    "limits": ["subject_requests", "subject_characters", "global_requests"]}
    }))
    .unwrap();
    let config = rate_limits.cluster.clone().unwrap();
    let limits = config.service_limits(&rate_limits);
    ClusterTier::new(config, &limits, HeaderStyle::Draft03, 64)
}

fn asked(prepared: Prepared) -> Query {
    match prepared {
        Prepared::Ask(query) => query,
        other => panic!("should ask, got {other:?}"),
    }
}

fn hits(query: &Query) -> Vec<u64> {
    decoded(query).descriptors.iter().map(|d| d.hits_addend.as_ref().unwrap().value).collect()
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
    assert_eq!(answer_of(&tier, &limits, ok), Answer::Allowed { resets_ms: vec![None, None] });

    let over = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            status(Code::Ok, 7, Some((3, 0)), Some((10, proto::Unit::Minute))),
            status(Code::OverLimit, 0, Some((41, 500_000_000)), Some((2000, proto::Unit::Minute))),
        ],
    };
    let Answer::OverLimit { limit, retry_after_s, headers, spent } = answer_of(&tier, &limits, over) else {
        panic!("should refuse");
    };
    assert_eq!(spent, vec![None, Some(Spent { left: 0, reset_ms: 41_500 })], "what the refusing counter has left");
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
            headers: vec![("Retry-After".to_string(), "1".to_string())],
            spent: vec![None],
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

#[test]
fn an_allowed_answer_carries_each_counters_reset_in_milliseconds() {
    let tier = all_limits();
    let limits = [GlobalLimit::SubjectRequests, GlobalLimit::SubjectCharacters];
    let ok = RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: vec![status(Code::Ok, 7, Some((3, 250_000_000)), None), status(Code::Ok, 9, None, None)],
    };
    assert_eq!(answer_of(&tier, &limits, ok), Answer::Allowed { resets_ms: vec![Some(3_250), None] });
    let negative = RateLimitResponse { overall_code: Code::Ok as i32, statuses: vec![status(Code::Ok, 1, Some((-5, 0)), None)] };
    assert_eq!(answer_of(&tier, &limits[..1], negative), Answer::Allowed { resets_ms: vec![None] });
}

#[test]
fn a_reserving_tier_asks_for_a_block_on_top_and_the_next_requests_take_from_it() {
    let tier = reserving(0.05);
    let store = MemoryStore::with_fixed_secret();
    let first = asked(tier.prepare(&store, 0, &ALICE, Some("pro"), 40).unwrap());
    assert!(first.reserves());
    assert_eq!(hits(&first), vec![1 + 5, 40 + 50, 1 + 500], "cost plus 5% of each capacity");
    let resets = vec![Some(60_000), Some(60_000), Some(1_000)];
    tier.keep_reserved(&store, 20, &first, &resets, 10).unwrap();
    // The next requests are covered: 5 requests, 50 characters.
    assert_eq!(tier.prepare(&store, 30, &ALICE, Some("pro"), 30).unwrap(), Prepared::Reserved);
    assert_eq!(tier.prepare(&store, 30, &ALICE, Some("pro"), 20).unwrap(), Prepared::Reserved);
    // 0 characters left: only the characters limit is asked, for the cost and a new block.
    let third = asked(tier.prepare(&store, 40, &ALICE, Some("pro"), 10).unwrap());
    assert_eq!(third.limits, vec![GlobalLimit::SubjectCharacters]);
    assert_eq!(hits(&third), vec![10 + 50]);
    // The global block expired with its window (reset 1 s after the call at 10 ms).
    let later = asked(tier.prepare(&store, 1_010, &ALICE, Some("pro"), 1).unwrap());
    assert_eq!(later.limits, vec![GlobalLimit::SubjectCharacters, GlobalLimit::GlobalRequests]);
}

#[test]
fn the_exact_question_asks_for_the_cost_less_what_the_reservation_held() {
    let tier = reserving(0.05);
    let store = MemoryStore::with_fixed_secret();
    let first = asked(tier.prepare(&store, 0, &ALICE, Some("pro"), 10).unwrap());
    tier.keep_reserved(&store, 0, &first, &[Some(60_000), Some(60_000), Some(60_000)], 0).unwrap();
    let short = asked(tier.prepare(&store, 0, &ALICE, Some("pro"), 80).unwrap());
    assert_eq!(short.limits, vec![GlobalLimit::SubjectCharacters]);
    assert_eq!(hits(&short), vec![80 - 50 + 50]);
    let exact = short.exact();
    assert!(!exact.reserves());
    assert_eq!(hits(&exact), vec![30]);
    // Refused after all: the 50 characters and the covered request go back.
    tier.give_back(&store, 0, &exact).unwrap();
    assert_eq!(tier.prepare(&store, 0, &ALICE, Some("pro"), 50).unwrap(), Prepared::Reserved);
}

#[test]
fn holders_are_kept_apart_and_a_service_without_reset_times_leaves_nothing_reserved() {
    let tier = reserving(0.05);
    let store = MemoryStore::with_fixed_secret();
    let alice = asked(tier.prepare(&store, 0, &ALICE, Some("pro"), 10).unwrap());
    tier.keep_reserved(&store, 0, &alice, &[None, None, None], 0).unwrap();
    assert!(matches!(tier.prepare(&store, 0, &ALICE, Some("pro"), 10).unwrap(), Prepared::Ask(_)));
    let resets = [Some(60_000), Some(60_000), Some(60_000)];
    let alice = asked(tier.prepare(&store, 0, &ALICE, Some("pro"), 10).unwrap());
    tier.keep_reserved(&store, 0, &alice, &resets, 0).unwrap();
    let bob = Identity { subject: Some("bob"), ..ALICE };
    let bobs = asked(tier.prepare(&store, 0, &bob, Some("pro"), 10).unwrap());
    assert_eq!(bobs.limits, vec![GlobalLimit::SubjectRequests, GlobalLimit::SubjectCharacters], "the global block is shared");
}

#[test]
fn no_domain_plan_and_subject_spell_another_reservation() {
    let pairs = [("pro", "alice"), ("pro:alice", ""), ("", "pro:alice"), ("pro:", "alice"), ("pro", ":alice"), ("3", "pro:alice")];
    let mut names: Vec<String> =
        pairs.iter().map(|(plan, subject)| reservation_holder("voxgate", GlobalLimit::SubjectRequests, plan, subject)).collect();
    names.push(reservation_holder("voxgate", GlobalLimit::SubjectCharacters, "pro", "alice"));
    names.push(reservation_holder("voxgate:1", GlobalLimit::SubjectRequests, "pro", "alice"));
    names.push(reservation_holder("tts", GlobalLimit::SubjectRequests, "pro", "alice"));
    let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "{names:?}");
}

#[test]
fn without_reserve_every_request_asks_for_its_cost_alone() {
    let all = all_limits();
    let store = MemoryStore::with_fixed_secret();
    for _ in 0..3 {
        let query = asked(all.prepare(&store, 0, &ALICE, Some("pro"), 7).unwrap());
        assert!(!query.reserves());
        assert_eq!(hits(&query), vec![1, 7, 1, 7]);
        all.keep_reserved(&store, 0, &query, &[Some(60_000); 4], 0).unwrap();
    }
    assert_eq!(all.prepare(&store, 0, &ANONYMOUS, None, 0).unwrap(), Prepared::Ask(all.query(&ANONYMOUS, None, 0).unwrap()));
    assert_eq!(tier(r#"["subject_characters"]"#).prepare(&store, 0, &ALICE, Some("pro"), 0).unwrap(), Prepared::Nothing);
}

#[test]
fn reserve_must_be_a_share_of_at_most_half() {
    for bad in ["0", "-0.1", "0.6", "1"] {
        let config: ClusterConfig =
            serde_json::from_str(&format!(r#"{{"service": "s", "limits": ["global_requests"], "reserve": {bad}}}"#)).unwrap();
        let rate_limits: crate::ratelimit::RateLimitConfig =
            serde_json::from_value(serde_json::json!({"global": {"requests": {"capacity": 10, "refill_per_second": 1}}})).unwrap();
        assert_eq!(config.check(&rate_limits).unwrap_err().field, "rate_limits.cluster.reserve", "{bad}");
    }
}

fn over_with_left(left: u32, reset_s: i64) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            status(Code::Ok, 50, Some((reset_s, 0)), None),
            status(Code::OverLimit, left, Some((reset_s, 0)), Some((1000, proto::Unit::Minute))),
            status(Code::Ok, 5000, Some((reset_s, 0)), None),
        ],
    }
}

#[test]
fn a_refused_block_is_asked_again_exactly_only_when_the_cost_fits_what_is_left() {
    let tier = reserving(0.05);
    let store = MemoryStore::with_fixed_secret();
    let query = asked(tier.prepare(&store, 0, &ALICE, Some("pro"), 40).unwrap());
    let spent_of = |answer: Answer| match answer {
        Answer::OverLimit { spent, .. } => spent,
        other => panic!("should refuse, got {other:?}"),
    };
    let fits = spent_of(answer_of(&tier, &query.limits, over_with_left(45, 30)));
    assert!(tier.exact_may_pass(&query, &fits), "40 of 45 left fits without the block");
    let short = spent_of(answer_of(&tier, &query.limits, over_with_left(39, 30)));
    assert!(!tier.exact_may_pass(&query, &short));
    assert!(tier.exact_may_pass(&query, &[None, None, None]), "a service that says nothing is asked again");
}

#[test]
fn what_the_service_said_is_left_refuses_costlier_requests_without_a_call_until_it_resets() {
    let tier = reserving(0.05);
    let store = MemoryStore::with_fixed_secret();
    let query = asked(tier.prepare(&store, 0, &ALICE, Some("pro"), 40).unwrap()).exact();
    let Answer::OverLimit { spent, .. } = answer_of(&tier, &query.limits, over_with_left(12, 30)) else { panic!() };
    tier.remember_refusal(&store, 5, &query, &spent, 0).unwrap();
    let Prepared::Refused(Answer::OverLimit { limit, retry_after_s, headers, .. }) =
        tier.prepare(&store, 10_000, &ALICE, Some("pro"), 13).unwrap()
    else {
        panic!("13 characters against 12 left is refused here");
    };
    assert_eq!((limit, retry_after_s), (GlobalLimit::SubjectCharacters, 20));
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    assert_eq!(header("X-RateLimit-Limit").as_deref(), Some("1000, 1000;w=100;name=\"cluster_subject_characters\""));
    assert_eq!(header("X-RateLimit-Remaining").as_deref(), Some("12"));
    assert_eq!(header("Retry-After").as_deref(), Some("20"));
    // What may fit is asked; a new window knows nothing.
    assert!(matches!(tier.prepare(&store, 10_000, &ALICE, Some("pro"), 12).unwrap(), Prepared::Ask(_)));
    assert!(matches!(tier.prepare(&store, 30_000, &ALICE, Some("pro"), 500).unwrap(), Prepared::Ask(_)));
    // The synchronous mode asks every time.
    let all = all_limits();
    let sync = all.query(&ALICE, Some("pro"), 40).unwrap();
    let spent = vec![Some(Spent { left: 0, reset_ms: 60_000 }); sync.limits.len()];
    all.remember_refusal(&store, 0, &sync, &spent, 0).unwrap();
    assert!(matches!(all.prepare(&store, 0, &ALICE, Some("pro"), 40).unwrap(), Prepared::Ask(_)));
}
