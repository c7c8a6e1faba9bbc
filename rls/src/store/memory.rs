//! Counters in this process's memory, for a single Envoy (or a single service process): the
//! semantics of the Redis script, under one mutex.
//!
//! Bounded memory: at most `max_counters` counters exist. Expired counters are swept every
//! `SWEEP_INTERVAL`, and at most once per `FULL_SWEEP_INTERVAL` while the table is full. A
//! request that needs a new counter while `max_counters` live ones exist fails with
//! `StoreError::Full` (answered UNAVAILABLE, so the filter's `failure_mode` decides), rather
//! than evicting a live counter, which would hand its holder a fresh budget.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Charge, Level, Outcome, StoreError};

/// How often expired counters are dropped while the table has room.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often a full table may be swept: a sweep walks every counter under the lock, so a
/// flood of new holders must not cause one per request.
pub const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub struct MemoryStore {
    max_counters: usize,
    state: Mutex<State>,
}

struct State {
    counters: HashMap<String, Counter>,
    last_sweep: Instant,
}

struct Counter {
    count: u64,
    expires: Instant,
}

impl MemoryStore {
    pub fn new(max_counters: usize, now: Instant) -> Self {
        MemoryStore {
            max_counters,
            state: Mutex::new(State {
                counters: HashMap::new(),
                last_sweep: now,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the counters are still
        // consistent (each update is a single assignment), so keep serving them.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `Store::apply` at the instant `now` (the clock is passed in so expiry is testable).
    pub fn apply_at(&self, charges: &[Charge], now: Instant) -> Result<Outcome, StoreError> {
        let mut state = self.lock();
        state.sweep_if_older_than(now, SWEEP_INTERVAL);
        let counts: Vec<u64> = charges
            .iter()
            .map(|c| state.live(&c.key, now).map_or(0, |c| c.count))
            .collect();
        let admitted = charges
            .iter()
            .zip(&counts)
            .all(|(charge, &count)| !charge.exceeds(count));
        if admitted {
            if state.counters.len() + state.new_counters(charges) > self.max_counters {
                state.sweep_if_older_than(now, FULL_SWEEP_INTERVAL);
                if state.counters.len() + state.new_counters(charges) > self.max_counters {
                    return Err(StoreError::Full);
                }
            }
            for charge in charges.iter().filter(|c| c.cost > 0) {
                match state.counters.get_mut(&charge.key) {
                    Some(counter) if counter.expires > now => counter.count += charge.cost,
                    _ => {
                        let counter = Counter {
                            count: charge.cost,
                            expires: window_end(now, charge),
                        };
                        state.counters.insert(charge.key.clone(), counter);
                    }
                }
            }
        }
        let levels = charges
            .iter()
            .zip(counts)
            .map(|(charge, before)| match state.live(&charge.key, now) {
                Some(counter) => Level {
                    count: counter.count,
                    reset: counter.expires - now,
                },
                None => Level {
                    count: before,
                    reset: Duration::from_secs(charge.window_seconds),
                },
            })
            .collect();
        Ok(Outcome { admitted, levels })
    }

    /// Counters held, expired ones not yet swept included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().counters.len()
    }
}

impl State {
    fn live(&self, key: &str, now: Instant) -> Option<&Counter> {
        self.counters.get(key).filter(|c| c.expires > now)
    }

    /// Counters an admitted request would add (expired ones are reused in place).
    fn new_counters(&self, charges: &[Charge]) -> usize {
        charges
            .iter()
            .filter(|c| c.cost > 0 && !self.counters.contains_key(&c.key))
            .count()
    }

    fn sweep_if_older_than(&mut self, now: Instant, interval: Duration) {
        if now.saturating_duration_since(self.last_sweep) >= interval {
            self.counters.retain(|_, c| c.expires > now);
            self.last_sweep = now;
        }
    }
}

fn window_end(now: Instant, charge: &Charge) -> Instant {
    // Windows are at most a year (the filter's configuration bounds them); the fallback only
    // keeps an absurd value from panicking.
    now.checked_add(Duration::from_secs(charge.window_seconds))
        .unwrap_or(now + Duration::from_secs(365 * 86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(key: &str, cost: u64, capacity: u64, window_seconds: u64) -> Charge {
        Charge {
            key: key.to_string(),
            cost,
            capacity,
            window_seconds,
        }
    }

    fn counts(outcome: &Outcome) -> Vec<u64> {
        outcome.levels.iter().map(|l| l.count).collect()
    }

    #[test]
    fn counts_up_to_the_capacity_and_no_further() {
        let now = Instant::now();
        let store = MemoryStore::new(100, now);
        let charges = [charge("a", 3, 10, 60)];
        for expected in [3, 6, 9] {
            let outcome = store.apply_at(&charges, now).unwrap();
            assert!(outcome.admitted);
            assert_eq!(counts(&outcome), vec![expected]);
        }
        let refused = store.apply_at(&charges, now).unwrap();
        assert!(!refused.admitted);
        assert_eq!(counts(&refused), vec![9]);
        assert!(
            store
                .apply_at(&[charge("a", 1, 10, 60)], now)
                .unwrap()
                .admitted
        );
        assert!(
            !store
                .apply_at(&[charge("a", 1, 10, 60)], now)
                .unwrap()
                .admitted
        );
    }

    #[test]
    fn all_counters_or_none() {
        let now = Instant::now();
        let store = MemoryStore::new(100, now);
        let both = [
            charge("requests", 1, 5, 60),
            charge("characters", 400, 1000, 60),
        ];
        assert_eq!(counts(&store.apply_at(&both, now).unwrap()), vec![1, 400]);
        assert_eq!(counts(&store.apply_at(&both, now).unwrap()), vec![2, 800]);
        // The characters would pass 1000: the requests counter is not touched either.
        let refused = store.apply_at(&both, now).unwrap();
        assert!(!refused.admitted);
        assert_eq!(counts(&refused), vec![2, 800]);
        let smaller = [
            charge("requests", 1, 5, 60),
            charge("characters", 200, 1000, 60),
        ];
        assert_eq!(
            counts(&store.apply_at(&smaller, now).unwrap()),
            vec![3, 1000]
        );
    }

    #[test]
    fn a_zero_cost_looks_without_creating_a_counter() {
        let now = Instant::now();
        let store = MemoryStore::new(100, now);
        let outcome = store.apply_at(&[charge("a", 0, 10, 60)], now).unwrap();
        assert!(outcome.admitted);
        assert_eq!(
            outcome.levels,
            vec![Level {
                count: 0,
                reset: Duration::from_secs(60)
            }]
        );
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn a_window_starts_at_the_first_hit_and_resets_when_it_ends() {
        let start = Instant::now();
        let store = MemoryStore::new(100, start);
        let charges = [charge("a", 2, 2, 60)];
        let first = store.apply_at(&charges, start).unwrap();
        assert_eq!(first.levels[0].reset, Duration::from_secs(60));
        let later = start + Duration::from_secs(45);
        let refused = store.apply_at(&charges, later).unwrap();
        assert!(!refused.admitted);
        assert_eq!(
            refused.levels[0],
            Level {
                count: 2,
                reset: Duration::from_secs(15)
            }
        );
        let next_window = start + Duration::from_secs(60);
        let admitted = store.apply_at(&charges, next_window).unwrap();
        assert!(admitted.admitted);
        assert_eq!(
            admitted.levels[0],
            Level {
                count: 2,
                reset: Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn expired_counters_are_swept() {
        let start = Instant::now();
        let store = MemoryStore::new(100, start);
        for key in ["a", "b", "c"] {
            store.apply_at(&[charge(key, 1, 5, 1)], start).unwrap();
        }
        assert_eq!(store.len(), 3);
        store.apply_at(&[], start + SWEEP_INTERVAL).unwrap();
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn new_counters_are_refused_while_the_table_is_full_of_live_ones() {
        let start = Instant::now();
        let store = MemoryStore::new(2, start);
        store
            .apply_at(&[charge("a", 1, 5, 5), charge("b", 1, 5, 100)], start)
            .unwrap();
        assert_eq!(
            store.apply_at(&[charge("c", 1, 5, 100)], start),
            Err(StoreError::Full)
        );
        // Existing counters still count, and a refusal needs no new counter.
        assert!(
            store
                .apply_at(&[charge("a", 1, 5, 5)], start)
                .unwrap()
                .admitted
        );
        assert!(
            !store
                .apply_at(&[charge("a", 1, 5, 5), charge("c", 9, 5, 100)], start)
                .unwrap()
                .admitted
        );
        // Once `a` expired, a sweep makes room.
        let later = start + Duration::from_secs(5) + FULL_SWEEP_INTERVAL;
        assert!(
            store
                .apply_at(&[charge("c", 1, 5, 100)], later)
                .unwrap()
                .admitted
        );
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn an_expired_counter_is_reused_in_place_when_full() {
        let start = Instant::now();
        let store = MemoryStore::new(1, start);
        store.apply_at(&[charge("a", 1, 5, 1)], start).unwrap();
        let later = start + Duration::from_secs(1);
        assert_eq!(
            counts(&store.apply_at(&[charge("a", 4, 5, 1)], later).unwrap()),
            vec![4]
        );
    }
}
