//! Token buckets in proxy-wasm shared data, seen by every Envoy worker.
//!
//! Exact under concurrency: every update is a read-modify-write with CAS, and the first write
//! of a key uses a CAS that only creation can pass (see `store`). Bounded memory: each kind of
//! bucket lives in a fixed table of slots (see `keys`), whatever the number of identities,
//! addressed by a hash keyed with a per-deployment secret (see `secret`).
//! Pure logic: the shared data and the clock are passed in.

mod bucket;
mod charge;
pub mod cluster;
mod config;
mod headers;
mod keys;
mod limiter;
mod record;
mod secret;
mod store;
mod table;
#[cfg(test)]
mod tests;

pub use bucket::{BucketSpec, MAX_CAPACITY, NEVER_REFILLS_SECS};
pub use config::{BucketConfig, PlanConfig, RateLimitConfig, ScopeConfig};
pub use headers::HeaderStyle;
pub use keys::client_key;
pub use limiter::{AudioBudget, AudioRefusal, Identity, Outcome, RateLimiter, Receipt, Verdict};
pub use store::{SharedStore, StoreError, CREATE_ONLY, MAX_CAS_ATTEMPTS};
#[cfg(any(test, feature = "testing"))]
pub(crate) use secret::SECRET_KEY;
pub use table::{BucketTable, Take};
