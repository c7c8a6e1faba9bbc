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
mod reserve;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prost::Message;

pub use config::{ClusterConfig, Cost, FailureMode, GlobalLimit, Holder, ServiceLimit, NEVER_RESETS_SECONDS};

use super::charge::{Limit, Status};
use super::headers::{self, HeaderStyle, Reported};
use super::keys::client_key;
use super::limiter::Identity;
use super::store::{SharedStore, StoreError};
use reserve::{Held, Reservations, Taken};

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
    /// The numbers of each limit the service holds, by limit and plan.
    limits: BTreeMap<(GlobalLimit, Option<String>), Numbers>,
    reservations: Reservations,
    /// `local_only`: no call is made before this instant (ms) after a failure. Shared by the
    /// clones of one configuration; an atomic only because the limiter is `Sync` for tests.
    local_only_until_ms: Arc<AtomicU64>,
    /// When a failure was last logged (ms): a down service is logged once a second, not once
    /// per request.
    failure_logged_ms: Arc<AtomicU64>,
}

/// A limit's numbers at the service, and the block a call reserves of it.
#[derive(Debug, Clone, Copy)]
struct Numbers {
    capacity: u64,
    window_seconds: u64,
    /// `reserve` × capacity, rounded down; 0 without `reserve`.
    block: u64,
}

/// What the service said of a descriptor it refused: the units it has left, and the
/// milliseconds until the counter resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub left: u64,
    pub reset_ms: u64,
}

/// One question to the service: the encoded `RateLimitRequest`, the limit of each of its
/// descriptors, in order, to read the answer by, and what the request took from this
/// Envoy's reservations (given back if it is refused after all).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub message: Vec<u8>,
    pub limits: Vec<GlobalLimit>,
    asks: Vec<Ask>,
    domain: String,
    held: Vec<Held>,
}

/// One descriptor of a query.
#[derive(Debug, Clone, PartialEq)]
struct Ask {
    entries: Vec<proto::Entry>,
    /// The request's own units the service is asked to count (its cost, less what a
    /// reservation held).
    hits: u64,
    /// Units asked for on top, to keep as a reservation; 0 in synchronous mode.
    block: u64,
    /// The reservation the block goes to.
    holder: String,
}

/// What the cluster tier needs before a request the local buckets admitted goes on.
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    /// No cluster-wide limit applies to the request.
    Nothing,
    /// This Envoy's reservations covered every cluster-wide limit: no call.
    Reserved,
    /// The service must be asked.
    Ask(Query),
    /// The service refused this holder before and has less left than the request costs: the
    /// refusal it would answer, made here (`Answer::OverLimit`).
    Refused(Answer),
}

/// What the service's answer means for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Admitted; for each descriptor, the milliseconds until its counter resets, where the
    /// service said.
    Allowed { resets_ms: Vec<Option<u64>> },
    /// Refused by `limit`, with `Retry-After` and the rate-limit headers of the answer; for
    /// each descriptor, what the service said is left of it when it reported it over its limit.
    OverLimit { limit: GlobalLimit, retry_after_s: u64, headers: Vec<(String, String)>, spent: Vec<Option<Spent>> },
    /// No decision: why, in words that carry no user data.
    Failed(String),
}

impl Query {
    fn new(domain: String, limits: Vec<GlobalLimit>, asks: Vec<Ask>, held: Vec<Held>) -> Query {
        let descriptors = asks
            .iter()
            .map(|ask| proto::RateLimitDescriptor {
                entries: ask.entries.clone(),
                hits_addend: Some(proto::UInt64Value { value: ask.hits + ask.block }),
            })
            .collect();
        let request = proto::RateLimitRequest { domain: domain.clone(), descriptors, hits_addend: 1 };
        Query { message: request.encode_to_vec(), limits, asks, domain, held }
    }

    /// Whether the query asks for more than the request's own cost.
    pub fn reserves(&self) -> bool {
        self.asks.iter().any(|ask| ask.block > 0)
    }

    /// The same question without the blocks: asked when the service refused the blocks, so
    /// that a request that fits the budget left is never refused for them.
    pub fn exact(self) -> Query {
        let asks = self.asks.into_iter().map(|ask| Ask { block: 0, ..ask }).collect();
        Query::new(self.domain, self.limits, asks, self.held)
    }
}

impl ClusterTier {
    /// `limits` are the service's limits (`ClusterConfig::service_limits`), whose capacities
    /// size the reserved blocks; `slots` bounds the reservations kept.
    pub fn new(config: ClusterConfig, limits: &[ServiceLimit], headers: HeaderStyle, slots: u32) -> Self {
        let share = config.reserve.unwrap_or(0.0);
        let limits = limits
            .iter()
            .map(|l| {
                let block = (l.capacity as f64 * share).floor() as u64;
                ((l.limit, l.plan.clone()), Numbers { capacity: l.capacity, window_seconds: l.window_seconds, block })
            })
            .collect();
        ClusterTier {
            config,
            headers,
            limits,
            reservations: Reservations::new(slots),
            local_only_until_ms: Arc::new(AtomicU64::new(0)),
            failure_logged_ms: Arc::new(AtomicU64::new(0)),
        }
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
    /// with `chars` characters, taking no reservation; `None` when no cluster-wide limit
    /// applies to it.
    pub fn query(&self, who: &Identity, plan: Option<&str>, chars: u64) -> Option<Query> {
        let (limits, asks): (Vec<_>, Vec<_>) = self.descriptors(who, plan, chars).into_iter().unzip();
        (!asks.is_empty()).then(|| Query::new(self.config.domain.clone(), limits, asks, Vec::new()))
    }

    /// What a request the local buckets admitted needs from the service: with `reserve`, each
    /// limit whose reservation holds the request's cost is taken from it, and only the others
    /// are asked, each with a block to reserve on top.
    pub fn prepare(
        &self,
        store: &dyn SharedStore,
        now_ms: u64,
        who: &Identity,
        plan: Option<&str>,
        chars: u64,
    ) -> Result<Prepared, StoreError> {
        let descriptors = self.descriptors(who, plan, chars);
        if descriptors.is_empty() {
            return Ok(Prepared::Nothing);
        }
        let mut limits = Vec::new();
        let mut asks = Vec::new();
        let mut held = Vec::new();
        for (limit, ask) in descriptors {
            if ask.block == 0 {
                limits.push(limit);
                asks.push(ask);
                continue;
            }
            match self.reservations.take(store, now_ms, &ask.holder, ask.hits)? {
                Taken::Covered(covered) => held.push(covered),
                Taken::Short(partial) => {
                    let hits = ask.hits - partial.tokens;
                    held.push(partial);
                    limits.push(limit);
                    asks.push(Ask { hits, ..ask });
                }
                Taken::Spent { left, until_ms } => {
                    for taken in &held {
                        self.reservations.give_back(store, now_ms, taken)?;
                    }
                    return Ok(Prepared::Refused(self.known_refusal(limit, plan, left, until_ms, now_ms)));
                }
            }
        }
        if asks.is_empty() {
            return Ok(Prepared::Reserved);
        }
        Ok(Prepared::Ask(Query::new(self.config.domain.clone(), limits, asks, held)))
    }

    /// After the service admitted `query`, asked at `started_ms`: keeps each block it counted
    /// until its counter resets.
    pub fn keep_reserved(
        &self,
        store: &dyn SharedStore,
        now_ms: u64,
        query: &Query,
        resets_ms: &[Option<u64>],
        started_ms: u64,
    ) -> Result<(), StoreError> {
        for (ask, reset_ms) in query.asks.iter().zip(resets_ms) {
            // Without a reset time the block cannot be known to still be counted: it is left
            // unused rather than risk spending it in a later window.
            if let (true, Some(reset_ms)) = (ask.block > 0, reset_ms) {
                self.reservations.keep(store, now_ms, &ask.holder, ask.block, started_ms.saturating_add(*reset_ms))?;
            }
        }
        Ok(())
    }

    /// Whether the question without its blocks may pass, after the service refused the blocks:
    /// not when it said it has less left of a limit than the request's own cost.
    pub fn exact_may_pass(&self, query: &Query, spent: &[Option<Spent>]) -> bool {
        query.asks.iter().zip(spent).all(|(ask, spent)| spent.is_none_or(|s| s.left >= ask.hits))
    }

    /// After the service refused `query`, asked at `started_ms`: remembers, for each limit it
    /// reported over, what it has left until its counter resets, so that a request costing
    /// more is refused without a call. Reserving tiers only: the synchronous mode asks every
    /// time.
    pub fn remember_refusal(
        &self,
        store: &dyn SharedStore,
        now_ms: u64,
        query: &Query,
        spent: &[Option<Spent>],
        started_ms: u64,
    ) -> Result<(), StoreError> {
        if self.config.reserve.is_none() {
            return Ok(());
        }
        for (ask, spent) in query.asks.iter().zip(spent) {
            if let Some(spent) = spent {
                self.reservations.mark_spent(store, now_ms, &ask.holder, spent.left, started_ms.saturating_add(spent.reset_ms))?;
            }
        }
        Ok(())
    }

    /// The refusal the service would answer for `limit`, which has `left` units until
    /// `until_ms`.
    fn known_refusal(&self, limit: GlobalLimit, plan: Option<&str>, left: u64, until_ms: u64, now_ms: u64) -> Answer {
        let retry_after_s = until_ms.saturating_sub(now_ms).div_ceil(1000).clamp(1, NEVER_RESETS_SECONDS);
        let numbers = self.numbers(limit, plan);
        let reported: Vec<Reported> = numbers
            .map(|n| Reported {
                name: limit.refusal_name(),
                status: Status {
                    limit: bucket_of(limit),
                    capacity: n.capacity,
                    remaining: left,
                    reset_s: Some(retry_after_s),
                    window_s: Some(n.window_seconds),
                },
            })
            .into_iter()
            .collect();
        let mut headers = headers::render(self.headers, &reported, 0);
        headers.push(("Retry-After".to_string(), retry_after_s.to_string()));
        Answer::OverLimit { limit, retry_after_s, headers, spent: Vec::new() }
    }

    fn numbers(&self, limit: GlobalLimit, plan: Option<&str>) -> Option<Numbers> {
        let plan = match limit.holder() {
            Holder::Subject => plan.map(str::to_string),
            Holder::Client | Holder::Everyone => None,
        };
        self.limits.get(&(limit, plan)).copied()
    }

    /// Gives back what a refused or abandoned request took from the reservations.
    pub fn give_back(&self, store: &dyn SharedStore, now_ms: u64, query: &Query) -> Result<(), StoreError> {
        for held in &query.held {
            self.reservations.give_back(store, now_ms, held)?;
        }
        Ok(())
    }

    /// The descriptors of the limits that apply to a request, each with its cost and block.
    fn descriptors(&self, who: &Identity, plan: Option<&str>, chars: u64) -> Vec<(GlobalLimit, Ask)> {
        let mut descriptors = Vec::new();
        for &limit in &self.config.limits {
            let cost = match limit.cost() {
                Cost::Requests => 1,
                Cost::Characters if chars > 0 => chars,
                Cost::Characters => continue,
            };
            let mut entries = vec![entry(LIMIT_KEY, limit.name())];
            let (plan, holder) = match (limit.holder(), who.subject, plan) {
                (Holder::Subject, Some(subject), Some(plan)) => {
                    entries.push(entry(PLAN_KEY, plan));
                    entries.push(entry(SUBJECT_KEY, subject));
                    (Some(plan), subject.to_string())
                }
                (Holder::Client, None, _) => {
                    let client = client_key(who.client_addr);
                    entries.push(entry(CLIENT_KEY, &client));
                    (None, client)
                }
                (Holder::Everyone, _, _) => (None, String::new()),
                _ => continue,
            };
            let block = self.numbers(limit, plan).map_or(0, |n| n.block);
            let holder = reservation_holder(&self.config.domain, limit, plan.unwrap_or_default(), &holder);
            descriptors.push((limit, Ask { entries, hits: cost, block, holder }));
        }
        descriptors
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
            Ok(proto::Code::Ok) => Answer::Allowed { resets_ms: resets_ms(limits, &response.statuses) },
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
                        limit: bucket_of(*limit),
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
        let spent = if statuses.len() == limits.len() {
            statuses
                .iter()
                .map(|s| {
                    let reset_ms = s.duration_until_reset.as_ref().and_then(duration_ms)?;
                    (s.code == proto::Code::OverLimit as i32).then_some(Spent { left: u64::from(s.limit_remaining), reset_ms })
                })
                .collect()
        } else {
            vec![None; limits.len()]
        };
        Answer::OverLimit { limit, retry_after_s, headers, spent }
    }
}

/// The name of a reservation: the service's domain (two configurations of one Envoy may ask
/// different services), the limit, the plan and the holder, length-prefixed so that no domain,
/// plan and subject can spell another's.
fn reservation_holder(domain: &str, limit: GlobalLimit, plan: &str, holder: &str) -> String {
    format!("{}:{domain}:{}:{}:{plan}:{holder}", domain.len(), limit.name(), plan.len())
}

/// The milliseconds until each descriptor's counter resets, where the service reported it for
/// every descriptor asked.
fn resets_ms(limits: &[GlobalLimit], statuses: &[proto::DescriptorStatus]) -> Vec<Option<u64>> {
    if statuses.len() != limits.len() {
        return vec![None; limits.len()];
    }
    statuses
        .iter()
        .map(|status| status.duration_until_reset.as_ref().and_then(duration_ms))
        .collect()
}

/// A duration in whole milliseconds; `None` when negative or beyond `u64`.
fn duration_ms(duration: &proto::Duration) -> Option<u64> {
    let seconds = u64::try_from(duration.seconds).ok()?;
    let millis = u64::try_from(duration.nanos).ok()? / 1_000_000;
    seconds.checked_mul(1000)?.checked_add(millis)
}

/// The local bucket a cluster limit shares its numbers with, for the rate-limit headers.
fn bucket_of(limit: GlobalLimit) -> Limit {
    match limit.cost() {
        Cost::Requests => Limit::Bucket(0),
        Cost::Characters => Limit::Bucket(1),
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
