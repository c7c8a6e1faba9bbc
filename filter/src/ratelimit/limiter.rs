//! The request limiter: which records a request is charged to (the subject under its plan,
//! or the client address; then the global record), all-or-nothing across them, in-flight
//! leases, shadow mode, and the verdict with its headers; then, once the sidecar has priced
//! the text, the audio seconds its answer reports, charged after the fact.

use super::charge::{self, Limit, Policy, Refusal, Status};
use super::cluster::ClusterTier;
use super::config::RateLimitConfig;
use super::headers::{self, HeaderStyle, Reported};
use super::keys::{client_key, Slot, SlotTable};
use super::record::Record;
use super::store::{self, SharedStore, Step, StoreError};
use crate::error::ConfigError;
use crate::decision::{Code, Rejection};

/// Buckets per record: requests (cost 1 per request), characters (cost 1 per character), and
/// audio seconds (charged after the answer; a speech request needs a balance above zero).
const BUCKETS: usize = 3;
const CHARACTERS: usize = 1;
const AUDIO: usize = 2;
/// Micro-tokens per token, for audio costs reported in fractions of a second.
const MICRO: f64 = 1_000_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Subject,
    Anonymous,
    Global,
}

impl Kind {
    /// The name of a limit in `Outcome`, metrics and headers.
    fn limit_name(self, limit: Limit) -> &'static str {
        match (self, limit) {
            (Kind::Subject, Limit::Bucket(0)) => "subject_requests",
            (Kind::Subject, Limit::Bucket(AUDIO)) => "subject_audio_seconds",
            (Kind::Subject, Limit::Bucket(_)) => "subject_characters",
            (Kind::Subject, Limit::InFlight) => "subject_in_flight",
            (Kind::Anonymous, Limit::Bucket(0)) => "anonymous_requests",
            (Kind::Anonymous, Limit::Bucket(AUDIO)) => "anonymous_audio_seconds",
            (Kind::Anonymous, Limit::Bucket(_)) => "anonymous_characters",
            (Kind::Anonymous, Limit::InFlight) => "anonymous_in_flight",
            (Kind::Global, Limit::Bucket(0)) => "global_requests",
            (Kind::Global, Limit::Bucket(AUDIO)) => "global_audio_seconds",
            (Kind::Global, Limit::Bucket(_)) => "global_characters",
            (Kind::Global, Limit::InFlight) => "global_in_flight",
        }
    }
}

/// One kind of record: its slot table and the policy of each plan (one plan outside subjects).
#[derive(Debug, Clone)]
struct Scope {
    kind: Kind,
    table: SlotTable,
    policies: Vec<Policy>,
}

/// Who a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    /// The verified subject; `None` on routes without authentication.
    pub subject: Option<&'a str>,
    /// The value of the plan claim (`RateLimiter::plan_claim`), if any.
    pub plan: Option<&'a str>,
    /// The client address as Envoy reports it (`ip:port` is fine: see `client_key`).
    pub client_addr: &'a str,
}

/// What `admit` decided. A refusal always carries the answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward the request.
    Admitted,
    /// Forward the request: shadow mode, where `limit` (e.g. `subject_requests`) would have
    /// refused it.
    WouldRefuse { limit: &'static str },
    /// Answer with `rejection` (429, or 400 `text_exceeds_plan`): `limit` refused the request.
    Refused { limit: &'static str, rejection: Rejection },
}

/// The outcome of `admit`, with what the request flow reports and keeps around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// Rate-limit headers for the answer, plus `Retry-After` when refused.
    pub headers: Vec<(String, String)>,
    /// Writes lost to another worker and retried.
    pub cas_retries: u32,
    /// The request holds an in-flight slot: call `release_in_flight` once when it ends.
    pub in_flight_lease: bool,
    /// A stored record was unreadable and was replaced by a full one (worth a log line).
    pub state_reset: bool,
    /// The caller's audio budget as the sidecar is to see it, when its plan has one.
    pub audio: Option<AudioBudget>,
    /// What an admitted request took, for `give_back` when a later tier refuses it.
    pub receipt: Receipt,
}

/// What `admit` took from the records of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    taken: Vec<Taken>,
}

/// What was taken from one record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Taken {
    key: String,
    /// Owner of the record charged (differs from the caller's tag on a shared slot).
    resident_tag: u64,
    policy: Policy,
    costs: [u64; BUCKETS],
    /// Tokens were taken.
    charged: bool,
    /// An in-flight lease was recorded.
    lease: bool,
}

impl Taken {
    fn of(target: &Target, charged: &Charged) -> Self {
        Taken {
            key: target.slot.key.clone(),
            resident_tag: charged.resident_tag,
            policy: charged.policy.clone(),
            costs: charged.costs,
            charged: charged.charged,
            lease: charged.lease,
        }
    }
}

/// What the filter tells the sidecar about an admitted caller's audio budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioBudget {
    /// Opaque identity of the record charged: the sidecar's ledger key for the caller.
    pub tenant: String,
    /// Milliseconds of audio left (never below zero: a caller in debt is not admitted).
    pub balance_ms: u64,
    /// Seconds the bucket holds when full: the most one request may cost.
    pub capacity_seconds: u64,
    pub max_in_flight: Option<u32>,
}

/// The answer to a request the sidecar refused for its audio budget: when to retry, and the
/// rate-limit headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioRefusal {
    pub limit: &'static str,
    pub retry_after_s: u64,
    pub headers: Vec<(String, String)>,
}

impl Verdict {
    /// Whether the request is forwarded (always, in shadow mode).
    pub fn allowed(&self) -> bool {
        !matches!(self.outcome, Outcome::Refused { .. })
    }

    /// The limit that refused the request, or would have in shadow mode.
    pub fn refused_by(&self) -> Option<&'static str> {
        match &self.outcome {
            Outcome::Admitted => None,
            Outcome::WouldRefuse { limit } | Outcome::Refused { limit, .. } => Some(limit),
        }
    }

    pub fn rejection(&self) -> Option<&Rejection> {
        match &self.outcome {
            Outcome::Refused { rejection, .. } => Some(rejection),
            _ => None,
        }
    }

    fn admitted() -> Self {
        Verdict {
            outcome: Outcome::Admitted,
            headers: Vec::new(),
            cas_retries: 0,
            in_flight_lease: false,
            state_reset: false,
            audio: None,
            receipt: Receipt::default(),
        }
    }
}

/// Token buckets in shared data, one view for every Envoy worker.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    shadow: bool,
    plan_claim: String,
    plan_names: Vec<String>,
    default_plan: u16,
    subjects: Option<Scope>,
    anonymous: Option<Scope>,
    global: Option<Scope>,
    headers: HeaderStyle,
    lease_ttl_ms: u64,
    cluster: Option<ClusterTier>,
}

/// The record a request is charged to.
struct Target<'s> {
    scope: &'s Scope,
    slot: Slot,
    plan: u16,
}

/// What charging one record did.
struct Charged {
    refusals: Vec<Refusal>,
    /// Statuses before and after the charge.
    before: Vec<Status>,
    after: Vec<Status>,
    /// Owner of the record charged (differs from the caller's tag on a shared slot).
    resident_tag: u64,
    policy: Policy,
    /// The costs assessed, per bucket.
    costs: [u64; BUCKETS],
    /// Tokens were taken.
    charged: bool,
    /// An in-flight lease was recorded.
    lease: bool,
    /// The audio bucket's level after the charge, when the policy has one.
    audio_balance_micro: Option<i128>,
}

impl RateLimitConfig {
    pub fn compile(self) -> Result<RateLimiter, ConfigError> {
        let c = self.check()?;
        let scope = |kind, name, slots, policies| Scope { kind, table: SlotTable::new(name, slots), policies };
        let single = |buckets: Vec<_>| vec![Policy { buckets, max_in_flight: None }];
        let subjects = (!c.plans.is_empty()).then(|| {
            let policies = c
                .plans
                .iter()
                .map(|p| Policy { buckets: p.buckets.clone(), max_in_flight: p.max_in_flight })
                .collect();
            scope(Kind::Subject, "subject", c.slots, policies)
        });
        Ok(RateLimiter {
            shadow: c.shadow,
            plan_claim: c.plan_claim,
            plan_names: c.plans.into_iter().map(|p| p.name).collect(),
            default_plan: c.default_plan,
            subjects,
            anonymous: c.anonymous.map(|b| scope(Kind::Anonymous, "anonymous", c.slots, single(b))),
            global: c.global.map(|b| scope(Kind::Global, "global", 1, single(b))),
            cluster: c.cluster.map(|(config, limits)| ClusterTier::new(config, &limits, c.headers, c.slots)),
            headers: c.headers,
            lease_ttl_ms: c.lease_ttl_ms,
        })
    }
}

fn named(kind: Kind, statuses: &[Status]) -> impl Iterator<Item = Reported> + '_ {
    statuses.iter().map(move |status| Reported { name: kind.limit_name(status.limit), status: *status })
}

impl RateLimiter {
    /// Count and report, never refuse.
    pub fn shadow(&self) -> bool {
        self.shadow
    }

    /// The cluster tier, when limits are shared with the other Envoys of the deployment.
    pub fn cluster(&self) -> Option<&ClusterTier> {
        self.cluster.as_ref()
    }

    /// The claim whose value selects a subject's plan.
    pub fn plan_claim(&self) -> &str {
        &self.plan_claim
    }

    /// The plan a subject's requests are charged under: the one its plan claim names, else
    /// the default plan. `None` for a request without a subject or a limiter without plans.
    pub fn plan_name(&self, who: &Identity) -> Option<&str> {
        who.subject?;
        self.plan_names.get(usize::from(self.plan_index(who.plan))).map(String::as_str)
    }

    fn plan_index(&self, claimed: Option<&str>) -> u16 {
        claimed
            .and_then(|name| self.plan_names.iter().position(|p| p == name))
            .map_or(self.default_plan, |index| index as u16)
    }

    /// Consumes cost from every applicable bucket (subject requests+characters, or anonymous;
    /// then global). All-or-nothing: if a later bucket refuses, what was taken earlier is
    /// given back. `chars` is the character count of the validated text (0 off speech routes).
    pub fn admit(&self, store: &dyn SharedStore, now_ms: u64, who: &Identity, chars: u64) -> Result<Verdict, StoreError> {
        let costs = [1, chars, u64::from(chars > 0)];
        let first = self.first_target(store, who)?;
        let global = match &self.global {
            Some(scope) => Some(Target { scope, slot: scope.table.locate(store, "")?, plan: 0 }),
            None => None,
        };
        let mut verdict = Verdict::admitted();

        for target in first.iter().chain(global.iter()) {
            if let Some(spec) = target.scope.policies[usize::from(target.plan)].buckets[CHARACTERS] {
                if chars > spec.capacity() {
                    let name = target.scope.kind.limit_name(Limit::Bucket(CHARACTERS));
                    return Ok(self.too_long_for_any_wait(verdict, name, chars, spec.capacity()));
                }
            }
        }

        let mut reported: Vec<Reported> = Vec::new();
        let mut first_charge = None;
        if let Some(target) = &first {
            let charged = self.charge(store, now_ms, target, &costs, &mut verdict)?;
            verdict.in_flight_lease = charged.lease;
            if !charged.refusals.is_empty() {
                let shown: Vec<Reported> = named(target.scope.kind, &charged.before).collect();
                return Ok(self.refuse(verdict, target.scope.kind, &charged.refusals, shown));
            }
            reported.extend(named(target.scope.kind, &charged.after));
            let policy = &charged.policy;
            // In shadow mode nothing may be refused, so the sidecar is not given a budget to
            // enforce; the audio is still charged and counted.
            if let (false, Some(spec), Some(balance)) = (self.shadow, policy.buckets[AUDIO], charged.audio_balance_micro) {
                verdict.audio = Some(AudioBudget {
                    tenant: format!("{:016x}", target.slot.tag),
                    balance_ms: u64::try_from(balance.max(0) / 1000).unwrap_or(u64::MAX),
                    capacity_seconds: spec.capacity(),
                    max_in_flight: policy.max_in_flight,
                });
            }
            first_charge = Some(charged);
        }

        if let Some(target) = &global {
            let outcome = self.charge(store, now_ms, target, &costs, &mut verdict);
            let refused = match &outcome {
                Ok(charged) => !charged.refusals.is_empty(),
                Err(_) => true,
            };
            if refused {
                if let (Some(first), Some(first_charge)) = (&first, &first_charge) {
                    let drop_lease = !self.shadow || outcome.is_err();
                    verdict.cas_retries += self.undo(store, now_ms, &Taken::of(first, first_charge), drop_lease)?;
                    if drop_lease {
                        verdict.in_flight_lease = false;
                    }
                }
            }
            let charged = outcome?;
            if refused {
                let mut shown: Vec<Reported> = first_charge
                    .as_ref()
                    .zip(first.as_ref())
                    .map(|(c, t)| named(t.scope.kind, &c.before).collect())
                    .unwrap_or_default();
                shown.extend(named(Kind::Global, &charged.before));
                return Ok(self.refuse(verdict, Kind::Global, &charged.refusals, shown));
            }
            reported.extend(named(Kind::Global, &charged.after));
            verdict.receipt.taken.push(Taken::of(target, &charged));
        }
        if let (Some(target), Some(charged)) = (&first, &first_charge) {
            verdict.receipt.taken.insert(0, Taken::of(target, charged));
        }

        verdict.headers = headers::render(self.headers, &reported, headers::most_constraining(&reported));
        Ok(verdict)
    }

    /// Gives back everything an admitted request took (tokens and its in-flight lease), when a
    /// later tier refused it. Returns the CAS retries.
    pub fn give_back(&self, store: &dyn SharedStore, now_ms: u64, receipt: &Receipt) -> Result<u32, StoreError> {
        let mut retries = 0;
        for taken in &receipt.taken {
            retries += self.undo(store, now_ms, taken, true)?;
        }
        Ok(retries)
    }

    /// Ends one in-flight request of `who`, admitted earlier with `in_flight_lease` set.
    /// Does nothing when `who`'s plan has no in-flight cap.
    pub fn release_in_flight(&self, store: &dyn SharedStore, who: &Identity) -> Result<(), StoreError> {
        let Some(target) = self.first_target(store, who)? else {
            return Ok(());
        };
        if target.scope.policies[usize::from(target.plan)].max_in_flight.is_none() {
            return Ok(());
        }
        store::update(store, &target.slot.key, |stored| {
            let Some(mut record) = stored.and_then(|bytes| Record::decode(bytes, BUCKETS)) else {
                return Step { write: None, result: () };
            };
            let removed = charge::remove_lease(&mut record);
            Step { write: removed.then(|| record.encode()), result: () }
        })?;
        Ok(())
    }

    /// Charges `seconds` of audio that the sidecar reported for `who` to its audio bucket and
    /// to the global one, where they exist. The buckets may go into debt: the audio is already
    /// made. Returns the CAS retries.
    pub fn charge_audio(&self, store: &dyn SharedStore, now_ms: u64, who: &Identity, seconds: f64) -> Result<u32, StoreError> {
        let micro = (seconds.max(0.0) * MICRO).round() as u64;
        let global = match &self.global {
            Some(scope) => Some(Target { scope, slot: scope.table.locate(store, "")?, plan: 0 }),
            None => None,
        };
        let mut retries = 0;
        for target in self.first_target(store, who)?.iter().chain(global.iter()) {
            if target.scope.policies[usize::from(target.plan)].buckets[AUDIO].is_none() {
                continue;
            }
            let ((), tries) = store::update(store, &target.slot.key, |stored| {
                let mut claimed = self.claim(target, stored, now_ms);
                if let Some(spec) = claimed.policy.buckets[AUDIO] {
                    spec.charge_after(&mut claimed.record.buckets[AUDIO], micro);
                }
                Step { write: Some(claimed.record.encode()), result: () }
            })?;
            retries += tries;
        }
        Ok(retries)
    }

    /// When `who` will have `required_seconds` of audio budget, and the rate-limit headers of
    /// its audio bucket: the answer to a request the sidecar priced above what is left.
    pub fn audio_refusal(
        &self,
        store: &dyn SharedStore,
        now_ms: u64,
        who: &Identity,
        required_seconds: f64,
    ) -> Result<Option<AudioRefusal>, StoreError> {
        let Some(target) = self.first_target(store, who)? else { return Ok(None) };
        let scope = target.scope;
        let stored = store.get(&target.slot.key)?;
        let claimed = self.claim(&target, stored.as_ref().map(|(bytes, _)| bytes.as_slice()), now_ms);
        let Some(spec) = claimed.policy.buckets[AUDIO] else { return Ok(None) };
        let required_micro = (required_seconds.max(0.0) * MICRO).ceil() as i128;
        let deficit = spec.deficit_micro(claimed.record.buckets[AUDIO], required_micro);
        let retry_after_s = spec.wait_secs(deficit.max(1));
        let statuses = charge::statuses(&claimed.record, &claimed.policy);
        let shown: Vec<Reported> = named(scope.kind, &statuses).collect();
        let name = scope.kind.limit_name(Limit::Bucket(AUDIO));
        let focus = shown.iter().position(|r| r.name == name).unwrap_or(0);
        let mut headers = headers::render(self.headers, &shown, focus);
        headers.push(("Retry-After".to_string(), retry_after_s.to_string()));
        Ok(Some(AudioRefusal { limit: name, retry_after_s, headers }))
    }

    /// The record `target` holds in `stored`, as its caller may use it now (see `charge::claim`).
    fn claim(&self, target: &Target, stored: Option<&[u8]>, now_ms: u64) -> charge::Claimed {
        charge::claim(stored, BUCKETS, target.slot.tag, target.plan, &target.scope.policies, now_ms, self.lease_ttl_ms)
    }

    fn first_target(&self, store: &dyn SharedStore, who: &Identity) -> Result<Option<Target<'_>>, StoreError> {
        let target = match who.subject {
            Some(subject) => {
                let Some(scope) = self.subjects.as_ref() else { return Ok(None) };
                let plan = self.plan_index(who.plan);
                Target { scope, slot: scope.table.locate(store, subject)?, plan }
            }
            None => {
                let Some(scope) = self.anonymous.as_ref() else { return Ok(None) };
                Target { scope, slot: scope.table.locate(store, &client_key(who.client_addr))?, plan: 0 }
            }
        };
        Ok(Some(target))
    }

    /// Charges one record in a CAS loop. A refused request takes nothing, except that in
    /// shadow mode it still records its in-flight lease: it is forwarded, so it is in flight.
    fn charge(
        &self,
        store: &dyn SharedStore,
        now_ms: u64,
        target: &Target,
        costs: &[u64; BUCKETS],
        verdict: &mut Verdict,
    ) -> Result<Charged, StoreError> {
        let (charged, retries) = store::update(store, &target.slot.key, |stored| {
            let mut claimed = self.claim(target, stored, now_ms);
            let wants_lease = claimed.policy.max_in_flight.is_some();
            let refusals = charge::assess(&claimed.record, &claimed.policy, costs, wants_lease);
            let before = charge::statuses(&claimed.record, &claimed.policy);
            let pass = refusals.is_empty();
            if pass {
                charge::apply(&mut claimed.record, &claimed.policy, costs);
            }
            let lease = wants_lease && (pass || self.shadow) && charge::add_lease(&mut claimed.record, now_ms);
            let after = charge::statuses(&claimed.record, &claimed.policy);
            let audio_balance_micro =
                claimed.policy.buckets[AUDIO].map(|spec| spec.balance_micro(claimed.record.buckets[AUDIO]));
            let write = (pass || lease).then(|| claimed.record.encode());
            verdict.state_reset |= claimed.state_reset;
            let result = Charged {
                refusals,
                before,
                after,
                resident_tag: claimed.record.tag,
                policy: claimed.policy,
                costs: *costs,
                charged: pass,
                lease,
                audio_balance_micro,
            };
            Step { write, result }
        })?;
        verdict.cas_retries += retries;
        Ok(charged)
    }

    /// Gives back what `charge` took from one record (and its lease, with `drop_lease`).
    /// Nothing is given back if the slot changed owner in between (it then holds someone
    /// else's record, already full). Returns the CAS retries.
    fn undo(&self, store: &dyn SharedStore, now_ms: u64, taken: &Taken, drop_lease: bool) -> Result<u32, StoreError> {
        let drop_lease = drop_lease && taken.lease;
        if !taken.charged && !drop_lease {
            return Ok(0);
        }
        let ((), retries) = store::update(store, &taken.key, |stored| {
            let record = stored.and_then(|bytes| Record::decode(bytes, BUCKETS));
            let Some(mut record) = record.filter(|r| r.tag == taken.resident_tag) else {
                return Step { write: None, result: () };
            };
            charge::settle(&mut record, &taken.policy, now_ms, self.lease_ttl_ms);
            if taken.charged {
                charge::refund(&mut record, &taken.policy, &taken.costs);
            }
            if drop_lease {
                charge::remove_lease(&mut record);
            }
            Step { write: Some(record.encode()), result: () }
        })?;
        Ok(retries)
    }

    fn refuse(&self, mut verdict: Verdict, kind: Kind, refusals: &[Refusal], shown: Vec<Reported>) -> Verdict {
        let Some(first) = refusals.first() else {
            return verdict;
        };
        let name = kind.limit_name(first.limit);
        let retry_after = refusals.iter().map(|r| r.retry_after_s).max().unwrap_or(1);
        let focus = shown.iter().position(|r| r.name == name).unwrap_or(0);
        let mut headers = headers::render(self.headers, &shown, focus);
        if self.shadow {
            verdict.outcome = Outcome::WouldRefuse { limit: name };
            verdict.headers = headers;
            return verdict;
        }
        headers.push(("Retry-After".to_string(), retry_after.to_string()));
        let rejection = if first.limit == Limit::InFlight {
            Rejection::new(Code::TooManyInFlight, format!("too many requests in flight ({name}); retry after {retry_after} s"))
        } else {
            Rejection::new(Code::RateLimited, format!("rate limit reached ({name}); retry after {retry_after} s"))
        };
        verdict.in_flight_lease = false;
        verdict.outcome = Outcome::Refused { limit: name, rejection: Rejection { headers: headers.clone(), ..rejection } };
        verdict.headers = headers;
        verdict
    }

    /// A text longer than a characters bucket can ever hold would wait forever: it is a bad
    /// request, not a rate-limited one.
    fn too_long_for_any_wait(&self, mut verdict: Verdict, name: &'static str, chars: u64, capacity: u64) -> Verdict {
        if self.shadow {
            verdict.outcome = Outcome::WouldRefuse { limit: name };
            return verdict;
        }
        let rejection = Rejection::new(
            Code::TextExceedsPlan,
            format!("the text has {chars} characters, more than the {name} limit of {capacity} allows in one request"),
        );
        verdict.outcome = Outcome::Refused { limit: name, rejection };
        verdict
    }
}
