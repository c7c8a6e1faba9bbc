//! The cluster tier: counters shared by every Envoy of a deployment, kept by a rate-limit
//! service that speaks Envoy's RLS protocol (the one voxgate ships, envoyproxy/ratelimit or
//! Limitador). The local buckets decide first; a request they admit is then put to the
//! service, one descriptor per cluster-wide limit with that limit's cost as its
//! `hits_addend`. Pure logic: the request bytes go out and the answer comes back through the
//! request flow, which owns the call.
//!
//! Descriptor layout (the contract a third-party server is configured for), one descriptor
//! per limit, each entry `key=value`:
//! - `limit=subject_requests|subject_characters`, `plan=<plan>`, `subject=<verified subject>`;
//! - `limit=anonymous_requests|anonymous_characters`, `client=<client address key>`;
//! - `limit=global_requests|global_characters`.

mod config;
pub mod proto;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prost::Message;

pub use config::{ClusterConfig, Cost, FailureMode, GlobalLimit, Holder, ServiceLimit, NEVER_RESETS_SECONDS};

use super::charge::{Limit, Status};
use super::headers::{self, HeaderStyle, Reported};
use super::keys::client_key;
use super::limiter::Identity;

/// The gRPC service and method of Envoy's rate-limit service protocol.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// Keys of the descriptor entries.
pub const LIMIT_KEY: &str = "limit";
pub const PLAN_KEY: &str = "plan";
pub const SUBJECT_KEY: &str = "subject";
pub const CLIENT_KEY: &str = "client";

/// An answer larger than this is not one a rate-limit service sends: it is refused unread.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The cluster tier of one VM's configuration.
#[derive(Debug, Clone)]
pub struct ClusterTier {
    config: ClusterConfig,
    headers: HeaderStyle,
    /// `local_only`: no call is made before this instant (ms) after a failure. Shared by the
    /// clones of one configuration; an atomic only because the limiter is `Sync` for tests.
    local_only_until_ms: Arc<AtomicU64>,
    /// When a failure was last logged (ms): a down service is logged once a second, not once
    /// per request.
    failure_logged_ms: Arc<AtomicU64>,
}

/// One question to the service: the encoded `RateLimitRequest`, and the limit of each of its
/// descriptors, in order, to read the answer by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub message: Vec<u8>,
    pub limits: Vec<GlobalLimit>,
}

/// What the service's answer means for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Allowed,
    /// Refused by `limit`, with `Retry-After` and the rate-limit headers of the answer.
    OverLimit { limit: GlobalLimit, retry_after_s: u64, headers: Vec<(String, String)> },
    /// No decision: why, in words that carry no user data.
    Failed(String),
}

impl ClusterTier {
    pub fn new(config: ClusterConfig, headers: HeaderStyle) -> Self {
        ClusterTier { config, headers, local_only_until_ms: Arc::new(AtomicU64::new(0)), failure_logged_ms: Arc::new(AtomicU64::new(0)) }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.config.timeout_ms)
    }

    /// Whether a `local_only` failure still stands in for the service at `now_ms`.
    pub fn in_local_only(&self, now_ms: u64) -> bool {
        now_ms < self.local_only_until_ms.load(Ordering::Relaxed)
    }

    /// After a failure in `local_only` mode: ask the service again only after the pause.
    pub fn start_local_only(&self, now_ms: u64) {
        self.local_only_until_ms.store(now_ms + self.config.local_only_seconds * 1000, Ordering::Relaxed);
    }

    /// Whether a failure at `now_ms` is to be logged (at most one a second).
    pub fn should_log_failure(&self, now_ms: u64) -> bool {
        let last = self.failure_logged_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms < last + 1000 {
            return false;
        }
        self.failure_logged_ms.store(now_ms, Ordering::Relaxed);
        true
    }

    /// The question for a request the local buckets admitted, charged to `who` under `plan`
    /// with `chars` characters; `None` when no cluster-wide limit applies to it.
    pub fn query(&self, who: &Identity, plan: Option<&str>, chars: u64) -> Option<Query> {
        let mut descriptors = Vec::new();
        let mut limits = Vec::new();
        for &limit in &self.config.limits {
            let cost = match limit.cost() {
                Cost::Requests => 1,
                Cost::Characters if chars > 0 => chars,
                Cost::Characters => continue,
            };
            let mut entries = vec![entry(LIMIT_KEY, limit.name())];
            match (limit.holder(), who.subject, plan) {
                (Holder::Subject, Some(subject), Some(plan)) => {
                    entries.push(entry(PLAN_KEY, plan));
                    entries.push(entry(SUBJECT_KEY, subject));
                }
                (Holder::Client, None, _) => entries.push(entry(CLIENT_KEY, &client_key(who.client_addr))),
                (Holder::Everyone, _, _) => {}
                _ => continue,
            }
            descriptors.push(proto::RateLimitDescriptor {
                entries,
                hits_addend: Some(proto::UInt64Value { value: cost }),
            });
            limits.push(limit);
        }
        if descriptors.is_empty() {
            return None;
        }
        let request = proto::RateLimitRequest { domain: self.config.domain.clone(), descriptors, hits_addend: 1 };
        Some(Query { message: request.encode_to_vec(), limits })
    }

    /// Reads the service's answer to a query about `limits`: the gRPC status of the call, and
    /// the answer's bytes when the status is OK (`None` when they could not be read).
    pub fn answer(&self, limits: &[GlobalLimit], grpc_status: u32, message: Option<&[u8]>) -> Answer {
        if grpc_status != 0 {
            return Answer::Failed(format!("the rate-limit service answered gRPC status {}", grpc_status_name(grpc_status)));
        }
        let Some(message) = message else {
            return Answer::Failed("the rate-limit service's answer could not be read".to_string());
        };
        if message.len() > MAX_ANSWER_BYTES {
            return Answer::Failed(format!("the rate-limit service's answer is larger than {MAX_ANSWER_BYTES} bytes"));
        }
        let Ok(response) = proto::RateLimitResponse::decode(message) else {
            return Answer::Failed("the rate-limit service's answer does not decode as a RateLimitResponse".to_string());
        };
        match proto::Code::try_from(response.overall_code) {
            Ok(proto::Code::Ok) => Answer::Allowed,
            Ok(proto::Code::OverLimit) => self.over_limit(limits, &response.statuses),
            _ => Answer::Failed(format!("the rate-limit service answered code {}", response.overall_code)),
        }
    }

    /// A refusal: the limit of the first descriptor over its limit (the first limit asked
    /// about, when the service reports no statuses), retrying when the last refusing counter
    /// resets.
    fn over_limit(&self, limits: &[GlobalLimit], statuses: &[proto::DescriptorStatus]) -> Answer {
        let refusing: Vec<(GlobalLimit, &proto::DescriptorStatus)> = limits
            .iter()
            .zip(statuses)
            .filter(|(_, s)| s.code == proto::Code::OverLimit as i32)
            .map(|(limit, status)| (*limit, status))
            .collect();
        let limit = refusing.first().map(|(limit, _)| *limit).or_else(|| limits.first().copied());
        let Some(limit) = limit else {
            return Answer::Failed("the rate-limit service refused a request it was not asked about".to_string());
        };
        let retry_after_s = refusing
            .iter()
            .filter_map(|(_, s)| s.duration_until_reset.as_ref())
            .map(reset_seconds)
            .max()
            .unwrap_or(1);
        let reported: Vec<Reported> = refusing
            .iter()
            .filter_map(|(limit, status)| {
                let current = status.current_limit.as_ref()?;
                let window_s = proto::Unit::try_from(current.unit).ok().and_then(proto::Unit::seconds);
                Some(Reported {
                    name: limit.refusal_name(),
                    status: Status {
                        limit: match limit.cost() {
                            Cost::Requests => Limit::Bucket(0),
                            Cost::Characters => Limit::Bucket(1),
                        },
                        capacity: u64::from(current.requests_per_unit),
                        remaining: u64::from(status.limit_remaining),
                        reset_s: status.duration_until_reset.as_ref().map(reset_seconds),
                        window_s,
                    },
                })
            })
            .collect();
        let mut headers = headers::render(self.headers, &reported, 0);
        headers.push(("Retry-After".to_string(), retry_after_s.to_string()));
        Answer::OverLimit { limit, retry_after_s, headers }
    }
}

fn entry(key: &str, value: &str) -> proto::Entry {
    proto::Entry { key: key.to_string(), value: value.to_string() }
}

/// Whole seconds until a counter resets, rounded up, at least 1 and at most a year.
fn reset_seconds(duration: &proto::Duration) -> u64 {
    let seconds = u64::try_from(duration.seconds).unwrap_or(0);
    let seconds = if duration.nanos > 0 { seconds.saturating_add(1) } else { seconds };
    seconds.clamp(1, NEVER_RESETS_SECONDS)
}

fn grpc_status_name(status: u32) -> String {
    let name = match status {
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        16 => "UNAUTHENTICATED",
        _ => return status.to_string(),
    };
    format!("{status} ({name})")
}

#[cfg(test)]
mod tests;
