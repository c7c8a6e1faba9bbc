//! When to fetch a provider's remote JWKS: on start, every `refresh_seconds` after a good
//! fetch, sooner with exponential backoff after a failure, and early (at most every
//! `EARLY_REFRESH_MIN_INTERVAL_S`) when a token names a `kid` the set does not hold yet,
//! which is how a key rotation at the provider shows up.

/// First retry delay after a failed fetch; doubles with each consecutive failure.
const FIRST_RETRY_S: u64 = 1;
/// Longest retry delay after failures (or `refresh_seconds`, if shorter).
const MAX_RETRY_S: u64 = 60;
/// Unknown `kid`s are attacker-controlled, so they may not cause more fetches than this.
const EARLY_REFRESH_MIN_INTERVAL_S: u64 = 30;

/// A remote JWKS the root context fetches through an Envoy cluster (`dispatch_http_call`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwksSource {
    /// Provider name, to pass back to `update_jwks` / `note_fetch_failed`.
    pub provider: String,
    pub cluster: String,
    /// `:authority` of the request.
    pub authority: String,
    /// `:path` of the request.
    pub path: String,
    pub timeout_ms: u64,
    /// Second (since the epoch) from which the next fetch is due; 0 = now.
    pub next_fetch_s: u64,
    /// Whether the provider has a usable key set yet (until then its tokens get 401).
    pub has_keys: bool,
}

impl RemoteJwksSource {
    pub fn is_due(&self, now_s: u64) -> bool {
        now_s >= self.next_fetch_s
    }
}

#[derive(Debug, Clone)]
pub(crate) struct FetchSchedule {
    refresh_s: u64,
    /// How long a dispatched fetch may stay unanswered before it counts as lost.
    in_flight_s: u64,
    next_fetch_s: u64,
    started_s: Option<u64>,
    consecutive_failures: u32,
}

impl FetchSchedule {
    pub(crate) fn new(refresh_s: u64, timeout_ms: u64) -> Self {
        FetchSchedule {
            refresh_s,
            in_flight_s: timeout_ms.div_ceil(1000) + 1,
            next_fetch_s: 0,
            started_s: None,
            consecutive_failures: 0,
        }
    }

    pub(crate) fn next_fetch_s(&self) -> u64 {
        self.next_fetch_s
    }

    pub(crate) fn is_due(&self, now_s: u64) -> bool {
        now_s >= self.next_fetch_s
    }

    /// A fetch was dispatched: not due again until it is answered or presumed lost.
    pub(crate) fn started(&mut self, now_s: u64) {
        self.started_s = Some(now_s);
        self.next_fetch_s = now_s.saturating_add(self.in_flight_s);
    }

    /// A usable key set arrived; returns the time it counts as fetched at (the dispatch, or
    /// `fallback_now_s` when no dispatch was noted).
    pub(crate) fn succeeded(&mut self, fallback_now_s: u64) -> u64 {
        let anchor = self.started_s.take().unwrap_or(fallback_now_s);
        self.consecutive_failures = 0;
        self.next_fetch_s = anchor.saturating_add(self.refresh_s);
        anchor
    }

    pub(crate) fn failed(&mut self, now_s: u64) {
        self.started_s = None;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let doubling = FIRST_RETRY_S.saturating_mul(1u64 << (self.consecutive_failures - 1).min(16));
        let delay = doubling.min(MAX_RETRY_S).min(self.refresh_s);
        self.next_fetch_s = now_s.saturating_add(delay);
    }

    /// Brings the next fetch forward after an unknown `kid`, rate-limited.
    pub(crate) fn request_early(&mut self, now_s: u64, last_success_s: Option<u64>) {
        if self.started_s.is_some() {
            return;
        }
        let earliest = last_success_s.map_or(now_s, |t| t.saturating_add(EARLY_REFRESH_MIN_INTERVAL_S));
        self.next_fetch_s = self.next_fetch_s.min(earliest.max(now_s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_at_start_then_in_flight_then_refresh_interval() {
        let mut s = FetchSchedule::new(300, 2000);
        assert!(s.is_due(1000));
        s.started(1000);
        assert!(!s.is_due(1002));
        assert!(s.is_due(1003), "an unanswered fetch counts as lost after its timeout");
        s.succeeded(1001);
        assert_eq!(s.next_fetch_s(), 1300);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_a_cap() {
        let mut s = FetchSchedule::new(300, 2000);
        let delays: Vec<u64> = (0..9)
            .map(|_| {
                s.started(1000);
                s.failed(1000);
                s.next_fetch_s() - 1000
            })
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        s.succeeded(2000);
        s.failed(2000);
        assert_eq!(s.next_fetch_s(), 2001, "a success resets the backoff");
    }

    #[test]
    fn backoff_never_exceeds_the_refresh_interval() {
        let mut s = FetchSchedule::new(10, 2000);
        for _ in 0..6 {
            s.failed(0);
        }
        assert_eq!(s.next_fetch_s(), 10);
    }

    #[test]
    fn unknown_kid_brings_the_fetch_forward_at_most_every_30_seconds() {
        let mut s = FetchSchedule::new(300, 2000);
        s.started(1000);
        s.succeeded(1000);
        s.request_early(1010, Some(1000));
        assert_eq!(s.next_fetch_s(), 1030);
        s.request_early(1040, Some(1000));
        assert_eq!(s.next_fetch_s(), 1030, "never later than already planned");
        s.started(1040);
        s.request_early(1041, Some(1000));
        assert_eq!(s.next_fetch_s(), 1043, "no second fetch while one is in flight");
    }
}
