//! The counters: fixed windows that start at a counter's first hit, kept in Redis (shared by
//! any number of service processes) or in this process's memory (one Envoy, or tests). One
//! call checks every counter of a request and increments all of them or none.
//!
//! Also the storage health the admin server reports: every call is timed, and the last call's
//! success or failure is the `voxgate_rls_storage_up` gauge.

mod memory;
mod redis;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
use crate::metrics;

/// One counter a request adds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub key: String,
    /// What the request adds; 0 only reads the counter.
    pub cost: u64,
    pub capacity: u64,
    pub window_seconds: u64,
}

impl Charge {
    /// Whether adding this charge to `count` would pass the capacity.
    pub fn exceeds(&self, count: u64) -> bool {
        count.saturating_add(self.cost) > self.capacity
    }
}

/// A counter as a request leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// The count after the request when it was admitted, the unchanged count when refused.
    pub count: u64,
    /// Time left in the counter's window; the whole window for a counter not yet created.
    pub reset: Duration,
}

/// The decision over all the charges of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Every counter was incremented; otherwise none was.
    pub admitted: bool,
    /// One level per charge, in order.
    pub levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No answer within `--storage-timeout-ms`.
    Timeout,
    /// Redis answered with an error, or the connection failed.
    Redis(String),
    /// In memory: the request needs new counters and `--max-counters` live ones exist.
    Full,
}

impl StoreError {
    /// The `kind` label of `voxgate_rls_storage_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Redis(_) => "redis",
            StoreError::Full => "full",
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Timeout => f.write_str("timed out"),
            StoreError::Redis(message) => f.write_str(message),
            StoreError::Full => f.write_str("too many counters"),
        }
    }
}

enum Backend {
    Redis(RedisStore),
    Memory(MemoryStore),
}

/// The storage of the service, with its health.
pub struct Store {
    backend: Backend,
    /// Whether the last call succeeded: a change is logged once, not once per request.
    /// Assumed at first, so that only a failure is logged.
    up: AtomicBool,
}

impl Store {
    pub fn redis(store: RedisStore) -> Self {
        // The gauge says down until a call succeeds.
        metrics::storage_up(false);
        Store {
            backend: Backend::Redis(store),
            up: AtomicBool::new(true),
        }
    }

    pub fn memory(store: MemoryStore) -> Self {
        metrics::storage_up(true);
        Store {
            backend: Backend::Memory(store),
            up: AtomicBool::new(true),
        }
    }

    /// `redis` or `memory`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Redis(_) => "redis",
            Backend::Memory(_) => "memory",
        }
    }

    /// Checks every charge and increments all of them or none (keys must be distinct).
    pub async fn apply(&self, charges: &[Charge]) -> Result<Outcome, StoreError> {
        let started = Instant::now();
        let result = match &self.backend {
            Backend::Redis(redis) => redis.apply(charges).await,
            Backend::Memory(memory) => memory.apply_at(charges, Instant::now()),
        };
        metrics::storage_seconds(started.elapsed().as_secs_f64());
        self.record(&result);
        result
    }

    /// Whether the storage answers now (Redis `PING`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let result = match &self.backend {
            Backend::Redis(redis) => redis.ping().await,
            Backend::Memory(_) => Ok(()),
        };
        self.record(&result);
        result
    }

    fn record<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    eprintln!("voxgate-rls: {} storage answers", self.kind());
                }
                metrics::storage_up(true);
            }
            // A full memory store still answers: its health is not in question.
            Err(StoreError::Full) => metrics::storage_error(StoreError::Full.kind()),
            Err(error) => {
                if self.up.swap(false, Ordering::Relaxed) {
                    eprintln!("voxgate-rls: {} storage unavailable: {error}", self.kind());
                }
                metrics::storage_error(error.kind());
                metrics::storage_up(false);
            }
        }
    }
}
