//! What one record allows: who owns its slot (claim, takeover of an idle slot, sharing on a
//! live collision), refilling its buckets, checking and charging costs, in-flight leases,
//! refunds, and the status each limit reports.

use super::bucket::{BucketSpec, BucketState};
use super::record::{Record, MAX_LEASES};

/// The limits that apply to one record: its buckets (`None`: not limited) and the cap on
/// requests in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pub buckets: Vec<Option<BucketSpec>>,
    pub max_in_flight: Option<u32>,
}

impl Policy {
    /// The policy for a newcomer that shares a slot with a live resident: each bucket the
    /// tighter of the two. The in-flight cap applies only when the newcomer's own plan has
    /// one, so that every lease taken is one its owner will release.
    fn shared_with(&self, resident: &Policy) -> Policy {
        let buckets = self
            .buckets
            .iter()
            .zip(&resident.buckets)
            .map(|(mine, theirs)| match (mine, theirs) {
                (Some(a), Some(b)) => Some(a.tighter(*b)),
                (Some(a), None) | (None, Some(a)) => Some(*a),
                (None, None) => None,
            })
            .collect();
        let max_in_flight = self.max_in_flight.map(|mine| resident.max_in_flight.map_or(mine, |r| mine.min(r)));
        Policy { buckets, max_in_flight }
    }
}

/// One limit of a record: a bucket by index, or the in-flight cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    Bucket(usize),
    InFlight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub limit: Limit,
    pub retry_after_s: u64,
}

/// Where one limit stands, for the rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status {
    pub limit: Limit,
    pub capacity: u64,
    pub remaining: u64,
    /// Seconds until full; `None` for the in-flight cap, which frees up when a stream ends.
    pub reset_s: Option<u64>,
    /// Seconds to refill from empty; `None` when the limit does not refill over time.
    pub window_s: Option<u64>,
}

/// A record as the current caller may use it.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub record: Record,
    pub policy: Policy,
    /// The stored bytes did not decode and were replaced by a fresh record.
    pub state_reset: bool,
}

/// Takes the record read from a slot for the identity `tag` charged under `policies[plan]`:
/// an empty slot or an unreadable value becomes a fresh record; the owner's record is used
/// under its current plan; another identity's record is taken over when it is idle (every
/// bucket full again, nothing in flight), and shared under the tighter of both plans while
/// it is live, so a collision can only make limits stricter, never looser.
pub(crate) fn claim(
    stored: Option<&[u8]>,
    bucket_count: usize,
    tag: u64,
    plan: u16,
    policies: &[Policy],
    now_ms: u64,
    lease_ttl_ms: u64,
) -> Claimed {
    let mine = &policies[usize::from(plan)];
    let fresh = |state_reset| Claimed {
        record: Record::fresh(tag, plan, bucket_count, now_ms),
        policy: mine.clone(),
        state_reset,
    };
    let Some(bytes) = stored else {
        return fresh(false);
    };
    let Some(mut record) = Record::decode(bytes, bucket_count) else {
        return fresh(true);
    };
    if record.tag == tag {
        record.plan = plan;
        settle(&mut record, mine, now_ms, lease_ttl_ms);
        return Claimed { record, policy: mine.clone(), state_reset: false };
    }
    let resident = policies.get(usize::from(record.plan)).unwrap_or(mine);
    settle(&mut record, resident, now_ms, lease_ttl_ms);
    if is_idle(&record, resident) {
        return fresh(false);
    }
    let policy = mine.shared_with(resident);
    settle(&mut record, &policy, now_ms, lease_ttl_ms);
    Claimed { record, policy, state_reset: false }
}

/// Brings the record to `now_ms`: buckets refilled (and clamped to their capacity), leases
/// older than the lease lifetime dropped, so a stream whose end was never reported cannot
/// hold its slot forever.
pub(crate) fn settle(record: &mut Record, policy: &Policy, now_ms: u64, lease_ttl_ms: u64) {
    for (state, spec) in record.buckets.iter_mut().zip(&policy.buckets) {
        if let Some(spec) = spec {
            *state = spec.refill(*state, now_ms);
        }
    }
    record.leases.retain(|&start| now_ms.saturating_sub(start) < lease_ttl_ms);
}

fn is_idle(record: &Record, policy: &Policy) -> bool {
    record.leases.is_empty()
        && record.buckets.iter().zip(&policy.buckets).all(|(state, spec)| spec.is_none_or(|s| s.is_full(*state)))
}

/// Every limit that would refuse `costs` (one per bucket), with the wait each needs.
pub(crate) fn assess(record: &Record, policy: &Policy, costs: &[u64], wants_lease: bool) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    for (index, ((state, spec), cost)) in record.buckets.iter().zip(&policy.buckets).zip(costs).enumerate() {
        if let Some(spec) = spec {
            let deficit = spec.deficit(*state, *cost);
            if deficit > 0 {
                refusals.push(Refusal { limit: Limit::Bucket(index), retry_after_s: spec.wait_secs(deficit) });
            }
        }
    }
    if let (true, Some(max)) = (wants_lease, policy.max_in_flight) {
        if record.leases.len() >= max as usize {
            refusals.push(Refusal { limit: Limit::InFlight, retry_after_s: 1 });
        }
    }
    refusals
}

/// Charges `costs`; the caller has checked that `assess` found nothing to refuse.
pub(crate) fn apply(record: &mut Record, policy: &Policy, costs: &[u64]) {
    for ((state, spec), cost) in record.buckets.iter_mut().zip(&policy.buckets).zip(costs) {
        if let Some(spec) = spec {
            spec.take(state, *cost);
        }
    }
}

/// Records one more request in flight; `false` when the list is at its hard cap (possible in
/// shadow mode only, where the in-flight cap is not enforced).
pub(crate) fn add_lease(record: &mut Record, now_ms: u64) -> bool {
    if record.leases.len() >= MAX_LEASES {
        return false;
    }
    record.leases.push(now_ms);
    true
}

/// Ends one request in flight. Leases are interchangeable, so the oldest goes: the ones
/// left are the youngest and expire last.
pub(crate) fn remove_lease(record: &mut Record) -> bool {
    match record.leases.iter().enumerate().min_by_key(|(_, &start)| start) {
        Some((index, _)) => {
            record.leases.swap_remove(index);
            true
        }
        None => false,
    }
}

/// Gives back what `apply` charged.
pub(crate) fn refund(record: &mut Record, policy: &Policy, costs: &[u64]) {
    for ((state, spec), cost) in record.buckets.iter_mut().zip(&policy.buckets).zip(costs) {
        if let Some(spec) = spec {
            spec.refund(state, *cost);
        }
    }
}

pub(crate) fn statuses(record: &Record, policy: &Policy) -> Vec<Status> {
    let mut out: Vec<Status> = record
        .buckets
        .iter()
        .zip(&policy.buckets)
        .enumerate()
        .filter_map(|(index, (state, spec))| {
            spec.map(|spec| status_of(Limit::Bucket(index), &spec, *state))
        })
        .collect();
    if let Some(max) = policy.max_in_flight {
        let used = u64::try_from(record.leases.len()).unwrap_or(u64::MAX);
        out.push(Status {
            limit: Limit::InFlight,
            capacity: u64::from(max),
            remaining: u64::from(max).saturating_sub(used),
            reset_s: None,
            window_s: None,
        });
    }
    out
}

fn status_of(limit: Limit, spec: &BucketSpec, state: BucketState) -> Status {
    Status {
        limit,
        capacity: spec.capacity(),
        remaining: spec.remaining(state),
        reset_s: Some(spec.reset_secs(state)),
        window_s: spec.window_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 300_000;

    fn policies() -> Vec<Policy> {
        vec![
            Policy { buckets: vec![Some(BucketSpec::new(10, 1000)), None], max_in_flight: Some(2) },
            Policy { buckets: vec![Some(BucketSpec::new(100, 10_000)), Some(BucketSpec::new(50, 0))], max_in_flight: None },
        ]
    }

    fn charged(tag: u64, plan: u16, cost: u64, now: u64) -> Vec<u8> {
        let p = policies();
        let mut c = claim(None, 2, tag, plan, &p, now, TTL);
        apply(&mut c.record, &c.policy, &[cost, 0]);
        c.record.encode()
    }

    #[test]
    fn empty_slot_and_garbage_give_a_fresh_record() {
        let p = policies();
        let c = claim(None, 2, 7, 0, &p, 5, TTL);
        assert!(!c.state_reset);
        assert_eq!(c.record, Record::fresh(7, 0, 2, 5));
        let c = claim(Some(b"\x01garbage"), 2, 7, 0, &p, 5, TTL);
        assert!(c.state_reset);
        assert_eq!(c.record.tag, 7);
    }

    #[test]
    fn owner_keeps_its_record_and_follows_plan_changes() {
        let p = policies();
        let stored = charged(7, 0, 4, 0);
        let c = claim(Some(&stored), 2, 7, 0, &p, 0, TTL);
        assert_eq!(statuses(&c.record, &c.policy)[0].remaining, 6);
        // upgraded to plan 1: keeps its 6 tokens and refills at the new rate to the new capacity
        let c = claim(Some(&stored), 2, 7, 1, &p, 1_000, TTL);
        assert_eq!(c.record.plan, 1);
        assert_eq!(statuses(&c.record, &c.policy)[0].remaining, 16);
    }

    #[test]
    fn idle_resident_is_taken_over() {
        let p = policies();
        let stored = charged(7, 0, 4, 0);
        // 4 tokens at 1/s: full again after 4 s
        let c = claim(Some(&stored), 2, 8, 1, &p, 4_000, TTL);
        assert_eq!(c.record, Record::fresh(8, 1, 2, 4_000));
        assert_eq!(c.policy, p[1]);
    }

    #[test]
    fn live_resident_is_shared_under_the_tighter_plan() {
        let p = policies();
        let stored = charged(7, 0, 4, 0);
        let c = claim(Some(&stored), 2, 8, 1, &p, 1_000, TTL);
        assert_eq!(c.record.tag, 7, "the resident keeps the slot");
        assert_eq!(c.record.plan, 0);
        assert_eq!(c.policy.buckets, vec![Some(BucketSpec::new(10, 1000)), Some(BucketSpec::new(50, 0))]);
        assert_eq!(c.policy.max_in_flight, None, "the newcomer's plan has no in-flight cap");
        assert_eq!(statuses(&c.record, &c.policy)[0].remaining, 7);
    }

    #[test]
    fn a_resident_with_a_request_in_flight_is_not_idle() {
        let p = policies();
        let mut c = claim(None, 2, 7, 0, &p, 0, TTL);
        assert!(add_lease(&mut c.record, 0));
        let stored = c.record.encode();
        let c2 = claim(Some(&stored), 2, 8, 0, &p, 1_000, TTL);
        assert_eq!(c2.record.tag, 7);
        assert_eq!(c2.policy.max_in_flight, Some(2));
        // once the lease has expired the slot is idle again
        let c3 = claim(Some(&stored), 2, 8, 0, &p, TTL, TTL);
        assert_eq!(c3.record.tag, 8);
    }

    #[test]
    fn assess_lists_every_refusing_limit() {
        let p = policies();
        let mut c = claim(None, 2, 7, 1, &p, 0, TTL);
        apply(&mut c.record, &c.policy, &[100, 45]);
        let refusals = assess(&c.record, &c.policy, &[1, 10], false);
        assert_eq!(
            refusals,
            vec![
                Refusal { limit: Limit::Bucket(0), retry_after_s: 1 },
                Refusal { limit: Limit::Bucket(1), retry_after_s: super::super::bucket::NEVER_REFILLS_SECS },
            ]
        );
        let mut c = claim(None, 2, 7, 0, &p, 0, TTL);
        add_lease(&mut c.record, 0);
        add_lease(&mut c.record, 0);
        assert_eq!(assess(&c.record, &c.policy, &[1, 0], true), vec![Refusal { limit: Limit::InFlight, retry_after_s: 1 }]);
        assert!(assess(&c.record, &c.policy, &[1, 0], false).is_empty());
    }

    #[test]
    fn refund_restores_and_leases_come_and_go_oldest_first() {
        let p = policies();
        let mut c = claim(None, 2, 7, 1, &p, 0, TTL);
        let before = c.record.clone();
        apply(&mut c.record, &c.policy, &[3, 20]);
        refund(&mut c.record, &c.policy, &[3, 20]);
        assert_eq!(statuses(&c.record, &c.policy), statuses(&before, &c.policy));
        add_lease(&mut c.record, 30);
        add_lease(&mut c.record, 10);
        add_lease(&mut c.record, 20);
        assert!(remove_lease(&mut c.record));
        let mut left = c.record.leases.clone();
        left.sort_unstable();
        assert_eq!(left, vec![20, 30]);
        assert!(remove_lease(&mut c.record));
        assert!(remove_lease(&mut c.record));
        assert!(!remove_lease(&mut c.record));
    }

    #[test]
    fn statuses_report_buckets_then_in_flight() {
        let p = policies();
        let mut c = claim(None, 2, 7, 0, &p, 0, TTL);
        apply(&mut c.record, &c.policy, &[3, 0]);
        add_lease(&mut c.record, 0);
        assert_eq!(
            statuses(&c.record, &c.policy),
            vec![
                Status { limit: Limit::Bucket(0), capacity: 10, remaining: 7, reset_s: Some(3), window_s: Some(10) },
                Status { limit: Limit::InFlight, capacity: 2, remaining: 1, reset_s: None, window_s: None },
            ]
        );
    }
}
