//! A generic table of single token buckets keyed by any identity (for example the
//! failed-authentication bucket per client address), with the same exactness and bounded
//! memory as the request limiter.

use super::bucket::BucketSpec;
use super::charge::{self, Policy};
use super::config::{BucketConfig, SLOTS_RANGE};
use super::keys::SlotTable;
use super::store::{self, SharedStore, Step, StoreError};
use crate::error::ConfigError;

/// Leases are not used by a bucket table; records never hold any.
const NO_LEASES_TTL_MS: u64 = u64::MAX;

/// One bucket per identity in a fixed table of slots (`vg:rl:<kind>:<slot>`).
#[derive(Debug, Clone)]
pub struct BucketTable {
    slots: SlotTable,
    policies: [Policy; 1],
}

/// The answer of `take` or `peek`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    pub allowed: bool,
    /// Whole tokens left after this call.
    pub remaining: u64,
    /// Whole seconds, rounded up, before the same cost could pass; 0 when allowed.
    pub retry_after_s: u64,
    /// Whole seconds until the bucket is full again.
    pub reset_s: u64,
    pub cas_retries: u32,
    /// The stored state was unreadable and was replaced by a full bucket (worth a log line).
    pub state_reset: bool,
}

impl BucketTable {
    /// `kind` names the table in shared-data keys (`[a-z0-9_]+`); `field` is the JSON path of
    /// `config`, used in errors.
    pub fn new(kind: &str, config: &BucketConfig, slots: u32, field: &str) -> Result<BucketTable, ConfigError> {
        if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(ConfigError::new(field, format!("bucket table name `{kind}` must match [a-z0-9_]+")));
        }
        if !SLOTS_RANGE.contains(&slots) {
            return Err(ConfigError::new(
                field,
                format!("slots must be between {} and {}", SLOTS_RANGE.start(), SLOTS_RANGE.end()),
            ));
        }
        let spec: BucketSpec = config.compile(field)?;
        Ok(BucketTable {
            slots: SlotTable::new(kind, slots),
            policies: [Policy { buckets: vec![Some(spec)], max_in_flight: None }],
        })
    }

    /// Takes `cost` tokens from `identity`'s bucket if it holds them; takes nothing otherwise.
    pub fn take(&self, store: &dyn SharedStore, now_ms: u64, identity: &str, cost: u64) -> Result<Take, StoreError> {
        self.run(store, now_ms, identity, cost, true)
    }

    /// Whether one token is available, without taking it.
    pub fn peek(&self, store: &dyn SharedStore, now_ms: u64, identity: &str) -> Result<Take, StoreError> {
        self.run(store, now_ms, identity, 1, false)
    }

    fn run(&self, store: &dyn SharedStore, now_ms: u64, identity: &str, cost: u64, consume: bool) -> Result<Take, StoreError> {
        let slot = self.slots.locate(store, identity)?;
        let (take, retries) = store::update(store, &slot.key, |stored| {
            let mut claimed = charge::claim(stored, 1, slot.tag, 0, &self.policies, now_ms, NO_LEASES_TTL_MS);
            let refusals = charge::assess(&claimed.record, &claimed.policy, &[cost], false);
            let allowed = refusals.is_empty();
            if allowed && consume {
                charge::apply(&mut claimed.record, &claimed.policy, &[cost]);
            }
            let status = charge::statuses(&claimed.record, &claimed.policy)[0];
            let take = Take {
                allowed,
                remaining: status.remaining,
                retry_after_s: refusals.first().map_or(0, |r| r.retry_after_s),
                reset_s: status.reset_s.unwrap_or(0),
                cas_retries: 0,
                state_reset: claimed.state_reset,
            };
            Step { write: (allowed && consume).then(|| claimed.record.encode()), result: take }
        })?;
        Ok(Take { cas_retries: retries, ..take })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryStore;

    fn table(capacity: u64, rate: f64) -> BucketTable {
        BucketTable::new("failed_auth", &BucketConfig { capacity, refill_per_second: rate }, 64, "auth.failed_auth").unwrap()
    }

    #[test]
    fn takes_until_empty_then_reports_the_wait() {
        let store = MemoryStore::with_fixed_secret();
        let t = table(3, 0.5);
        for left in [2, 1, 0] {
            let take = t.take(&store, 1_000, "198.51.100.1", 1).unwrap();
            assert!(take.allowed);
            assert_eq!(take.remaining, left);
        }
        let refused = t.take(&store, 1_000, "198.51.100.1", 1).unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_s, 2);
        assert_eq!(refused.reset_s, 6);
        assert!(t.take(&store, 3_000, "198.51.100.1", 1).unwrap().allowed);
        assert!(t.take(&store, 1_000, "198.51.100.2", 1).unwrap().allowed, "other identities are separate");
    }

    #[test]
    fn peek_never_consumes() {
        let store = MemoryStore::with_fixed_secret();
        let t = table(1, 0.0);
        for _ in 0..5 {
            assert!(t.peek(&store, 0, "a").unwrap().allowed);
        }
        assert!(t.take(&store, 0, "a", 1).unwrap().allowed);
        assert!(!t.take(&store, 0, "a", 1).unwrap().allowed);
        let peek = t.peek(&store, 0, "a").unwrap();
        assert!(!peek.allowed);
        assert_eq!(peek.remaining, 0);
    }

    #[test]
    fn names_and_slots_are_checked() {
        let config = BucketConfig { capacity: 1, refill_per_second: 1.0 };
        assert_eq!(BucketTable::new("Bad-Name", &config, 64, "f").unwrap_err().field, "f");
        assert!(BucketTable::new("ok", &config, 1, "f").is_err());
        let bad = BucketConfig { capacity: 0, refill_per_second: 1.0 };
        assert_eq!(BucketTable::new("ok", &bad, 64, "auth.failed_auth").unwrap_err().field, "auth.failed_auth.capacity");
    }

    #[test]
    fn memory_is_bounded_by_the_slot_count() {
        let store = MemoryStore::with_fixed_secret();
        let t = table(5, 1.0);
        for i in 0..20_000 {
            t.take(&store, 0, &format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256), 1).unwrap();
        }
        assert_eq!(store.key_count(), 64 + 1, "the slots and the hash key");
    }
}
