//! Reservations: blocks of a cluster-wide budget that this Envoy has already counted at the
//! rate-limit service and not yet spent. With `rate_limits.cluster.reserve` set, a call asks
//! for the request's cost plus a block; the block is kept here, in shared data seen by every
//! worker, and the next requests of the same holder take from it without a call.
//!
//! Nothing is ever admitted that the service has not counted, so reservations never let a
//! limit be overshot; what they cost is budget held by one Envoy that another cannot use
//! (at most a block per worker and holder, until the service's window ends). A reservation
//! expires when the window it was counted in ends: its expiry is the call's start plus the
//! service's `duration_until_reset`, never later than the window's true end.
//!
//! A record also remembers what the service said was left when it last refused the holder:
//! within one window a counter only grows, so a request costing more than that is refused
//! here, exactly as the service would refuse it, without a call.
//!
//! Layout of a record (32 bytes, little-endian): identity tag (u64), tokens reserved (u64),
//! expiry in ms (u64), units the service had left when it refused (u64, `u64::MAX`: unknown).

use super::super::keys::SlotTable;
use super::super::store::{self, SharedStore, Step, StoreError};

const RECORD_LEN: usize = 32;
const UNKNOWN: u64 = u64::MAX;

/// One holder's reserved tokens, and what its window has left at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    tag: u64,
    tokens: u64,
    expires_ms: u64,
    /// The most the service has left for the holder in this window (`UNKNOWN`: no bound).
    left: u64,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN);
        out.extend_from_slice(&self.tag.to_le_bytes());
        out.extend_from_slice(&self.tokens.to_le_bytes());
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
        out.extend_from_slice(&self.left.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() != RECORD_LEN {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        Some(Record { tag: word(0), tokens: word(1), expires_ms: word(2), left: word(3) })
    }

    /// `tag`'s record at `now_ms`: none when the slot is another holder's, unreadable, or its
    /// window has ended.
    fn live(stored: Option<&[u8]>, tag: u64, now_ms: u64) -> Option<Record> {
        stored.and_then(Record::decode).filter(|r| r.tag == tag && now_ms < r.expires_ms)
    }
}

/// What a request found in its holder's reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The reservation held the whole cost: taken.
    Covered(Held),
    /// It held less (maybe nothing): all of it taken, the rest to be asked for.
    Short(Held),
    /// The service said it has less left than the rest of the cost: nothing taken, the request
    /// is refused as the service would refuse it, until `until_ms`.
    Spent { left: u64, until_ms: u64 },
}

/// Tokens taken from a reservation for one request, to be given back if the request is
/// refused after all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    identity: String,
    pub tokens: u64,
    /// The expiry of the reservation they came from: they go back only into the same one.
    expires_ms: u64,
}

/// The reservations of one Envoy, one record per holder (limit, plan and subject or client)
/// in a fixed table of slots, so memory stays bounded whatever the number of holders. A holder
/// whose slot another takes over loses its reservation: budget stranded, never overshot.
#[derive(Debug, Clone)]
pub struct Reservations {
    slots: SlotTable,
}

impl Reservations {
    pub fn new(slots: u32) -> Self {
        Reservations { slots: SlotTable::new("cluster_reserve", slots) }
    }

    /// Takes `cost` tokens of `identity`'s reservation, or what it holds of them.
    pub fn take(&self, store: &dyn SharedStore, now_ms: u64, identity: &str, cost: u64) -> Result<Taken, StoreError> {
        let slot = self.slots.locate(store, identity)?;
        let (taken, _) = store::update(store, &slot.key, |stored| {
            let Some(record) = Record::live(stored, slot.tag, now_ms) else {
                return Step { write: None, result: Taken::Short(Held { identity: identity.to_string(), tokens: 0, expires_ms: 0 }) };
            };
            let tokens = record.tokens.min(cost);
            if tokens < cost && record.left < cost - tokens {
                return Step { write: None, result: Taken::Spent { left: record.left, until_ms: record.expires_ms } };
            }
            let held = Held { identity: identity.to_string(), tokens, expires_ms: record.expires_ms };
            let write = (tokens > 0).then(|| Record { tokens: record.tokens - tokens, ..record }.encode());
            Step { write, result: if tokens == cost { Taken::Covered(held) } else { Taken::Short(held) } }
        })?;
        Ok(taken)
    }

    /// Remembers that the service has at most `left` units for `identity` until `until_ms`
    /// (it refused a request costing more).
    pub fn mark_spent(&self, store: &dyn SharedStore, now_ms: u64, identity: &str, left: u64, until_ms: u64) -> Result<(), StoreError> {
        if until_ms <= now_ms {
            return Ok(());
        }
        let slot = self.slots.locate(store, identity)?;
        store::update(store, &slot.key, |stored| {
            let record = match Record::live(stored, slot.tag, now_ms) {
                Some(r) => Record { left: r.left.min(left), expires_ms: r.expires_ms.min(until_ms), ..r },
                None => Record { tag: slot.tag, tokens: 0, expires_ms: until_ms, left },
            };
            Step { write: Some(record.encode()), result: () }
        })?;
        Ok(())
    }

    /// Keeps `tokens` the service has just counted for `identity`, until `expires_ms`.
    pub fn keep(&self, store: &dyn SharedStore, now_ms: u64, identity: &str, tokens: u64, expires_ms: u64) -> Result<(), StoreError> {
        if tokens == 0 || expires_ms <= now_ms {
            return Ok(());
        }
        let slot = self.slots.locate(store, identity)?;
        store::update(store, &slot.key, |stored| {
            // A live reservation was counted in the same window (it ends after now, and the
            // service counted this block no earlier than the call's start): the two add up, and
            // the sum expires with the earlier estimate of the window's end.
            let record = match Record::live(stored, slot.tag, now_ms) {
                Some(r) => Record { tokens: r.tokens.saturating_add(tokens), expires_ms: r.expires_ms.min(expires_ms), ..r },
                None => Record { tag: slot.tag, tokens, expires_ms, left: UNKNOWN },
            };
            Step { write: Some(record.encode()), result: () }
        })?;
        Ok(())
    }

    /// Returns tokens a refused request took. They go back only into the reservation they came
    /// from; once it has expired or been replaced they are dropped (counted by the service in
    /// a window that is over, they are worth nothing).
    pub fn give_back(&self, store: &dyn SharedStore, now_ms: u64, held: &Held) -> Result<(), StoreError> {
        if held.tokens == 0 || now_ms >= held.expires_ms {
            return Ok(());
        }
        let slot = self.slots.locate(store, &held.identity)?;
        store::update(store, &slot.key, |stored| {
            let record = stored.and_then(Record::decode).filter(|r| r.tag == slot.tag && r.expires_ms == held.expires_ms);
            match record {
                Some(r) => Step { write: Some(Record { tokens: r.tokens.saturating_add(held.tokens), ..r }.encode()), result: () },
                None => Step { write: None, result: () },
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryStore;

    fn taken(result: Taken) -> (bool, u64) {
        match result {
            Taken::Covered(held) => (true, held.tokens),
            Taken::Short(held) => (false, held.tokens),
            Taken::Spent { .. } => panic!("not spent"),
        }
    }

    fn held(result: Taken) -> Held {
        match result {
            Taken::Covered(held) | Taken::Short(held) => held,
            Taken::Spent { .. } => panic!("not spent"),
        }
    }

    #[test]
    fn a_kept_block_covers_the_next_requests_until_it_runs_out() {
        let store = MemoryStore::with_fixed_secret();
        let r = Reservations::new(64);
        assert_eq!(taken(r.take(&store, 0, "a", 1).unwrap()), (false, 0), "nothing reserved yet");
        r.keep(&store, 0, "a", 3, 60_000).unwrap();
        for _ in 0..3 {
            assert_eq!(taken(r.take(&store, 10, "a", 1).unwrap()), (true, 1));
        }
        assert_eq!(taken(r.take(&store, 10, "a", 1).unwrap()), (false, 0));
        assert_eq!(taken(r.take(&store, 10, "b", 1).unwrap()), (false, 0), "holders are separate");
    }

    #[test]
    fn a_short_reservation_is_taken_whole_to_be_topped_up() {
        let store = MemoryStore::with_fixed_secret();
        let r = Reservations::new(64);
        r.keep(&store, 0, "a", 30, 60_000).unwrap();
        assert_eq!(taken(r.take(&store, 0, "a", 50).unwrap()), (false, 30));
        assert_eq!(taken(r.take(&store, 0, "a", 1).unwrap()), (false, 0), "the 30 left with the request");
    }

    #[test]
    fn a_reservation_ends_with_its_window() {
        let store = MemoryStore::with_fixed_secret();
        let r = Reservations::new(64);
        r.keep(&store, 0, "a", 5, 1_000).unwrap();
        assert_eq!(taken(r.take(&store, 999, "a", 1).unwrap()), (true, 1));
        assert_eq!(taken(r.take(&store, 1_000, "a", 1).unwrap()), (false, 0));
        r.keep(&store, 1_000, "a", 2, 2_000).unwrap();
        assert_eq!(taken(r.take(&store, 1_000, "a", 3).unwrap()), (false, 2), "the expired 4 did not carry over");
    }

    #[test]
    fn blocks_of_one_window_add_up_and_expire_at_the_earlier_estimate() {
        let store = MemoryStore::with_fixed_secret();
        let r = Reservations::new(64);
        r.keep(&store, 0, "a", 2, 5_000).unwrap();
        r.keep(&store, 10, "a", 2, 5_400).unwrap();
        assert_eq!(taken(r.take(&store, 4_999, "a", 4).unwrap()), (true, 4));
        r.keep(&store, 0, "b", 2, 5_000).unwrap();
        r.keep(&store, 10, "b", 2, 5_400).unwrap();
        assert_eq!(taken(r.take(&store, 5_000, "b", 1).unwrap()), (false, 0));
    }

    #[test]
    fn tokens_given_back_return_only_to_their_own_reservation() {
        let store = MemoryStore::with_fixed_secret();
        let r = Reservations::new(64);
        r.keep(&store, 0, "a", 4, 1_000).unwrap();
        let three = held(r.take(&store, 0, "a", 3).unwrap());
        r.give_back(&store, 10, &three).unwrap();
        assert_eq!(taken(r.take(&store, 10, "a", 4).unwrap()), (true, 4));

        r.keep(&store, 0, "b", 4, 1_000).unwrap();
        let four = held(r.take(&store, 0, "b", 4).unwrap());
        r.keep(&store, 1_000, "b", 1, 2_000).unwrap();
        r.give_back(&store, 1_000, &four).unwrap();
        assert_eq!(taken(r.take(&store, 1_000, "b", 2).unwrap()), (false, 1), "the old window's 4 are worth nothing");
    }

    #[test]
    fn what_the_service_said_is_left_refuses_costlier_requests_until_the_window_ends() {
        let store = MemoryStore::with_fixed_secret();
        let r = Reservations::new(64);
        r.mark_spent(&store, 0, "a", 5, 10_000).unwrap();
        assert_eq!(r.take(&store, 0, "a", 6).unwrap(), Taken::Spent { left: 5, until_ms: 10_000 });
        assert_eq!(taken(r.take(&store, 0, "a", 5).unwrap()), (false, 0), "what may fit is asked");
        r.mark_spent(&store, 0, "a", 2, 12_000).unwrap();
        assert_eq!(r.take(&store, 0, "a", 3).unwrap(), Taken::Spent { left: 2, until_ms: 10_000 }, "only lower, never later");
        // A block kept since still covers; past it, the bound on what is left holds.
        r.keep(&store, 0, "a", 4, 10_000).unwrap();
        assert_eq!(taken(r.take(&store, 0, "a", 3).unwrap()), (true, 3));
        assert_eq!(r.take(&store, 0, "a", 4).unwrap(), Taken::Spent { left: 2, until_ms: 10_000 }, "1 held + 2 left < 4");
        assert_eq!(taken(r.take(&store, 10_000, "a", 100).unwrap()), (false, 0), "a new window knows nothing");
        assert_eq!(taken(r.take(&store, 0, "b", 100).unwrap()), (false, 0));
    }

    #[test]
    fn unreadable_records_hold_nothing_and_memory_is_bounded() {
        let store = MemoryStore::with_fixed_secret();
        let r = Reservations::new(64);
        for i in 0..5_000 {
            r.keep(&store, 0, &format!("holder-{i}"), 1, 60_000).unwrap();
        }
        assert_eq!(store.key_count(), 64 + 1, "the slots and the hash key");
        let slot = r.slots.locate(&store, "x").unwrap();
        store.set(&slot.key, b"garbage", None).unwrap();
        assert_eq!(taken(r.take(&store, 0, "x", 1).unwrap()), (false, 0));
        r.keep(&store, 0, "x", 2, 60_000).unwrap();
        assert_eq!(taken(r.take(&store, 0, "x", 2).unwrap()), (true, 2));
    }
}
