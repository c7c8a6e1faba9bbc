//! Token-bucket arithmetic in integer micro-tokens: refill, take, refund, and the waits
//! (`Retry-After`, reset, window) derived from a bucket's state.
//!
//! A rate is configured with a resolution of 0.001 token per second, i.e. `r` milli-tokens per
//! second. Counting tokens in micro-tokens makes that exactly `r` micro-tokens per millisecond,
//! so a refill computed from elapsed milliseconds is an exact integer: no rounding, no drift,
//! however often the bucket is updated.
//!
//! A bucket that may go into debt (audio seconds, whose cost is known only after the sidecar
//! has priced the text) stores its level shifted up by its capacity, so one unsigned number
//! still holds it: a stored 0 is a debt of a whole capacity, the most it can owe.

/// Micro-tokens per token.
pub(crate) const MICRO: u64 = 1_000_000;

/// Largest accepted capacity, so that a full bucket in micro-tokens fits in a `u64`.
pub const MAX_CAPACITY: u64 = 1_000_000_000_000;

/// Wait reported for a bucket that never refills (refill rate 0): one day.
pub const NEVER_REFILLS_SECS: u64 = 86_400;

/// The shape of one bucket: how many tokens it holds and how fast it refills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSpec {
    capacity: u64,
    refill_milli_per_sec: u64,
    /// Charged after the fact and may go below zero; admits only while above zero.
    debt: bool,
}

/// A bucket's level in micro-tokens, as of `last_ms` (milliseconds on the host clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BucketState {
    pub tokens: u64,
    pub last_ms: u64,
}

impl BucketState {
    /// A bucket nobody has drawn from: full whatever its capacity (clamped on first use).
    pub fn untouched(now_ms: u64) -> Self {
        BucketState { tokens: u64::MAX, last_ms: now_ms }
    }
}

impl BucketSpec {
    /// `capacity` in tokens (1..=`MAX_CAPACITY`, checked by the configuration),
    /// refill in thousandths of a token per second.
    pub fn new(capacity: u64, refill_milli_per_sec: u64) -> Self {
        BucketSpec { capacity: capacity.min(MAX_CAPACITY), refill_milli_per_sec, debt: false }
    }

    /// The same bucket, allowed to owe up to its capacity (see `charge_after`).
    pub fn with_debt(self) -> Self {
        BucketSpec { debt: true, ..self }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn capacity_micro(&self) -> u64 {
        self.capacity * MICRO
    }

    /// Where zero is in the stored level: a debt bucket's level is kept shifted by its capacity.
    fn offset_micro(&self) -> u64 {
        if self.debt {
            self.capacity_micro()
        } else {
            0
        }
    }

    /// The highest stored level: full.
    fn stored_cap(&self) -> u64 {
        self.capacity_micro() + self.offset_micro()
    }

    /// The level in micro-tokens, negative while in debt.
    pub(crate) fn balance_micro(&self, state: BucketState) -> i128 {
        i128::from(state.tokens.min(self.stored_cap())) - i128::from(self.offset_micro())
    }

    /// Micro-tokens added per second.
    fn micro_per_sec(&self) -> u128 {
        u128::from(self.refill_milli_per_sec) * 1000
    }

    /// The state at `now_ms`: tokens added for the elapsed time, capped at capacity.
    /// A clock that reads earlier than `last_ms` (another worker wrote with a later clock)
    /// adds nothing and keeps `last_ms`, so time is never counted twice.
    pub(crate) fn refill(&self, state: BucketState, now_ms: u64) -> BucketState {
        let cap = self.stored_cap();
        let tokens = state.tokens.min(cap);
        if now_ms <= state.last_ms {
            return BucketState { tokens, last_ms: state.last_ms };
        }
        // micro-tokens per millisecond == milli-tokens per second
        let added = u128::from(now_ms - state.last_ms) * u128::from(self.refill_milli_per_sec);
        let tokens = (u128::from(tokens) + added).min(u128::from(cap)) as u64;
        BucketState { tokens, last_ms: now_ms }
    }

    /// Micro-tokens missing for `cost` tokens (0 when the bucket can pay). A cost larger than
    /// the capacity is a deficit that no wait can cover. A debt bucket is charged only after
    /// the fact (`charge_after`): any cost above zero asks just for a level above zero, so a
    /// request is admitted against it only while nothing is owed.
    pub(crate) fn deficit(&self, state: BucketState, cost: u64) -> u128 {
        let needed = match (self.debt, cost) {
            (_, 0) => return 0,
            (true, _) => 1,
            (false, cost) => i128::from(cost) * i128::from(MICRO),
        };
        self.deficit_micro(state, needed)
    }

    /// Micro-tokens missing for a level of `needed_micro`.
    pub(crate) fn deficit_micro(&self, state: BucketState, needed_micro: i128) -> u128 {
        u128::try_from(needed_micro - self.balance_micro(state)).unwrap_or(0)
    }

    /// Removes `cost` tokens; the caller has checked `deficit(..) == 0`. A debt bucket takes
    /// nothing here: its cost is known only later.
    pub(crate) fn take(&self, state: &mut BucketState, cost: u64) {
        if self.debt {
            return;
        }
        let tokens = state.tokens.min(self.stored_cap());
        state.tokens = tokens.saturating_sub(cost.saturating_mul(MICRO));
    }

    /// Charges `cost_micro` that was already spent: the level may go below zero, down to
    /// minus the capacity.
    pub(crate) fn charge_after(&self, state: &mut BucketState, cost_micro: u64) {
        state.tokens = state.tokens.min(self.stored_cap()).saturating_sub(cost_micro);
    }

    /// Gives back `cost` tokens, never above capacity; what `take` took, so nothing for a debt
    /// bucket.
    pub(crate) fn refund(&self, state: &mut BucketState, cost: u64) {
        if self.debt {
            return;
        }
        let tokens = state.tokens.min(self.stored_cap());
        state.tokens = tokens.saturating_add(cost.saturating_mul(MICRO)).min(self.stored_cap());
    }

    /// Whole seconds until the refill covers `deficit_micro`, rounded up, at least 1:
    /// `ceil(deficit / rate)`. Waiting that long is always enough, and one second less is not.
    pub(crate) fn wait_secs(&self, deficit_micro: u128) -> u64 {
        let per_sec = self.micro_per_sec();
        if per_sec == 0 {
            return NEVER_REFILLS_SECS;
        }
        let secs = deficit_micro.div_ceil(per_sec);
        u64::try_from(secs).unwrap_or(u64::MAX).max(1)
    }

    /// Whole seconds until the bucket is full again (0 when full).
    pub(crate) fn reset_secs(&self, state: BucketState) -> u64 {
        let missing = u128::from(self.stored_cap() - state.tokens.min(self.stored_cap()));
        if missing == 0 {
            return 0;
        }
        self.wait_secs(missing)
    }

    /// Whole tokens left.
    pub(crate) fn remaining(&self, state: BucketState) -> u64 {
        u64::try_from(self.balance_micro(state).max(0)).unwrap_or(0) / MICRO
    }

    pub(crate) fn is_full(&self, state: BucketState) -> bool {
        state.tokens >= self.stored_cap()
    }

    /// Seconds to refill an empty bucket, the policy window advertised in rate-limit headers;
    /// `None` for a bucket that never refills.
    pub(crate) fn window_secs(&self) -> Option<u64> {
        (self.refill_milli_per_sec > 0).then(|| self.wait_secs(u128::from(self.capacity_micro())))
    }

    /// The stricter of two buckets: smaller capacity and slower refill.
    pub(crate) fn tighter(self, other: BucketSpec) -> BucketSpec {
        BucketSpec {
            capacity: self.capacity.min(other.capacity),
            refill_milli_per_sec: self.refill_milli_per_sec.min(other.refill_milli_per_sec),
            debt: self.debt || other.debt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(spec: &BucketSpec, now: u64) -> BucketState {
        spec.refill(BucketState::untouched(now), now)
    }

    #[test]
    fn untouched_bucket_is_full_at_its_capacity() {
        let spec = BucketSpec::new(10, 500);
        let s = full(&spec, 1_000);
        assert_eq!(s.tokens, 10 * MICRO);
        assert_eq!(spec.remaining(s), 10);
        assert!(spec.is_full(s));
        assert_eq!(spec.reset_secs(s), 0);
    }

    #[test]
    fn refill_is_exact_over_many_small_steps() {
        // 0.3 tokens/s refilled one millisecond at a time for 10 s must equal 3 tokens exactly.
        let spec = BucketSpec::new(100, 300);
        let mut s = full(&spec, 0);
        spec.take(&mut s, 100);
        assert_eq!(s.tokens, 0);
        for now in 1..=10_000 {
            s = spec.refill(s, now);
        }
        assert_eq!(s.tokens, 3 * MICRO);
        let mut once = full(&spec, 0);
        spec.take(&mut once, 100);
        assert_eq!(spec.refill(once, 10_000), s);
    }

    #[test]
    fn refill_caps_at_capacity_and_survives_huge_gaps() {
        let spec = BucketSpec::new(5, 1_000_000_000_000);
        let mut s = full(&spec, 0);
        spec.take(&mut s, 5);
        let s = spec.refill(s, u64::MAX);
        assert_eq!(s.tokens, 5 * MICRO);
    }

    #[test]
    fn clock_going_backwards_adds_nothing_and_keeps_last() {
        let spec = BucketSpec::new(10, 1000);
        let mut s = full(&spec, 10_000);
        spec.take(&mut s, 4);
        let back = spec.refill(s, 9_000);
        assert_eq!(back, BucketState { tokens: 6 * MICRO, last_ms: 10_000 });
        // the second between 9 000 and 10 000 is not counted again
        assert_eq!(spec.refill(back, 10_500).tokens, 6 * MICRO + MICRO / 2);
    }

    #[test]
    fn retry_after_is_the_rounded_up_deficit_over_the_rate() {
        // 0.5/s, empty, cost 1 → exactly 2 s
        let spec = BucketSpec::new(10, 500);
        let s = BucketState { tokens: 0, last_ms: 0 };
        assert_eq!(spec.wait_secs(spec.deficit(s, 1)), 2);
        // 0.3/s, deficit 1 → 3.33 s → 4
        let spec = BucketSpec::new(10, 300);
        assert_eq!(spec.wait_secs(spec.deficit(s, 1)), 4);
        // 20 chars/s, 12.5 left, cost 100 → 87.5 / 20 = 4.375 → 5
        let spec = BucketSpec::new(2000, 20_000);
        let s = BucketState { tokens: 12 * MICRO + MICRO / 2, last_ms: 0 };
        assert_eq!(spec.deficit(s, 100), 87 * u128::from(MICRO) + u128::from(MICRO / 2));
        assert_eq!(spec.wait_secs(spec.deficit(s, 100)), 5);
        // fast refill: a tiny deficit still says 1 s, never 0
        let spec = BucketSpec::new(10, 1_000_000);
        assert_eq!(spec.wait_secs(1), 1);
    }

    #[test]
    fn waiting_retry_after_is_enough_and_one_second_less_is_not() {
        for rate in [1u64, 7, 300, 333, 500, 999, 1000, 1500, 20_000] {
            for tokens in [0u64, 1, MICRO / 3, MICRO - 1, 7 * MICRO / 2] {
                let spec = BucketSpec::new(10, rate);
                let cost = 5;
                let s = BucketState { tokens, last_ms: 0 };
                let deficit = spec.deficit(s, cost);
                let wait = spec.wait_secs(deficit);
                let later = spec.refill(s, wait * 1000);
                assert_eq!(spec.deficit(later, cost), 0, "rate {rate} tokens {tokens}");
                if wait > 1 {
                    let sooner = spec.refill(s, (wait - 1) * 1000);
                    assert!(spec.deficit(sooner, cost) > 0, "rate {rate} tokens {tokens}");
                }
            }
        }
    }

    #[test]
    fn zero_rate_never_refills() {
        let spec = BucketSpec::new(3, 0);
        let mut s = full(&spec, 0);
        spec.take(&mut s, 3);
        assert_eq!(spec.refill(s, 1_000_000).tokens, 0);
        assert_eq!(spec.wait_secs(spec.deficit(s, 1)), NEVER_REFILLS_SECS);
        assert_eq!(spec.reset_secs(s), NEVER_REFILLS_SECS);
        assert_eq!(spec.window_secs(), None);
    }

    #[test]
    fn cost_above_capacity_is_never_covered() {
        let spec = BucketSpec::new(10, 1000);
        let s = full(&spec, 0);
        assert_eq!(spec.deficit(s, 11), u128::from(MICRO));
        assert!(spec.deficit(spec.refill(s, u64::MAX), 11) > 0);
        assert!(spec.deficit(s, u64::MAX) > 0);
    }

    #[test]
    fn refund_and_reset_and_window() {
        let spec = BucketSpec::new(10, 2000);
        let mut s = full(&spec, 0);
        spec.take(&mut s, 7);
        assert_eq!(spec.remaining(s), 3);
        assert_eq!(spec.reset_secs(s), 4); // 7 tokens at 2/s = 3.5 s
        spec.refund(&mut s, 20);
        assert!(spec.is_full(s));
        assert_eq!(spec.window_secs(), Some(5));
    }

    #[test]
    fn a_debt_bucket_admits_while_above_zero_and_owes_up_to_its_capacity() {
        let spec = BucketSpec::new(10, 1000).with_debt();
        let mut s = full(&spec, 0);
        assert_eq!(spec.balance_micro(s), 10 * i128::from(MICRO));
        assert_eq!(spec.deficit(s, 1), 0);
        spec.take(&mut s, 1);
        assert!(spec.is_full(s), "admission takes nothing from a debt bucket");
        spec.charge_after(&mut s, 13 * MICRO);
        assert_eq!(spec.balance_micro(s), -3 * i128::from(MICRO));
        assert_eq!(spec.remaining(s), 0);
        // Nothing is admitted until the debt is repaid: 3 s, plus a micro-token.
        assert_eq!(spec.deficit(s, 1), 3 * u128::from(MICRO) + 1);
        assert_eq!(spec.deficit(s, 0), 0, "a request that costs nothing here is not gated");
        assert_eq!(spec.wait_secs(spec.deficit(s, 1)), 4);
        assert_eq!(spec.deficit(spec.refill(s, 3_001), 1), 0);
        // The debt stops at one capacity; a refill never goes above the capacity.
        spec.charge_after(&mut s, 100 * MICRO);
        assert_eq!(spec.balance_micro(s), -10 * i128::from(MICRO));
        assert_eq!(spec.reset_secs(s), 20);
        assert_eq!(spec.balance_micro(spec.refill(s, 1_000_000)), 10 * i128::from(MICRO));
        assert!(spec.is_full(spec.refill(s, 1_000_000)));
        assert_eq!(spec.window_secs(), Some(10));
    }

    #[test]
    fn tighter_takes_the_smaller_of_each() {
        let a = BucketSpec::new(10, 5000);
        let b = BucketSpec::new(100, 500);
        assert_eq!(a.tighter(b), BucketSpec::new(10, 500));
    }
}
