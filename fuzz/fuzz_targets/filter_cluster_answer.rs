//! The cluster tier's reading of a rate-limit service's answer, on arbitrary bytes: what a
//! hostile or broken service can send back through `dispatch_grpc_call`. Byte 0 picks the
//! limits the question was about; the rest is the answer's message.
//!
//! Judged: it never panics; an answer that decodes as `RateLimitResponse` with code OK allows,
//! one with OVER_LIMIT refuses naming a limit that was asked about, with `Retry-After` between
//! 1 s and a year and equal to the header it sends; everything else is a failure, which the
//! failure mode decides.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use voxgate_filter::ratelimit::cluster::proto::{Code, RateLimitResponse};
use voxgate_filter::ratelimit::cluster::{Answer, ClusterConfig, ClusterTier, GlobalLimit, NEVER_RESETS_SECONDS};
use voxgate_filter::ratelimit::HeaderStyle;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, message)) = data.split_first() else {
        return;
    };
    let limits: Vec<GlobalLimit> = GlobalLimit::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| selector & (1 << i) != 0)
        .map(|(_, limit)| *limit)
        .collect();
    let config = ClusterConfig {
        service: "voxgate_rls".to_string(),
        domain: "voxgate".to_string(),
        timeout_ms: 100,
        failure_mode: Default::default(),
        local_only_seconds: 5,
        limits: GlobalLimit::ALL.to_vec(),
        reserve: None,
    };
    let style = if selector & 0x40 == 0 { HeaderStyle::Draft03 } else { HeaderStyle::Ietf };
    let tier = ClusterTier::new(config, &[], style, 64);
    let decoded = RateLimitResponse::decode(message).ok();
    match tier.answer(&limits, 0, Some(message)) {
        Answer::Allowed { resets_ms } => {
            assert_eq!(decoded.map(|r| r.overall_code), Some(Code::Ok as i32), "allowed without an OK");
            assert_eq!(resets_ms.len(), limits.len(), "one reset per descriptor asked");
        }
        Answer::OverLimit { limit, retry_after_s, headers, spent } => {
            assert_eq!(spent.len(), limits.len(), "one entry per descriptor asked");
            assert_eq!(decoded.map(|r| r.overall_code), Some(Code::OverLimit as i32), "refused without OVER_LIMIT");
            assert!(limits.contains(&limit), "refused by a limit nobody asked about");
            assert!((1..=NEVER_RESETS_SECONDS).contains(&retry_after_s), "Retry-After {retry_after_s}");
            let sent = headers.iter().find(|(name, _)| name == "Retry-After").map(|(_, v)| v.as_str());
            assert_eq!(sent, Some(retry_after_s.to_string().as_str()));
        }
        Answer::Failed(why) => {
            assert!(!why.is_empty());
            if let Some(response) = decoded.filter(|_| message.len() <= voxgate_filter::ratelimit::cluster::MAX_ANSWER_BYTES) {
                assert!(
                    response.overall_code != Code::Ok as i32
                        && (response.overall_code != Code::OverLimit as i32 || limits.is_empty()),
                    "a decided answer read as a failure"
                );
            }
        }
    }
});
