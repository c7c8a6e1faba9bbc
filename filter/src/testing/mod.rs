//! Test doubles of Envoy that behave like Envoy, shared by the unit tests, the examples that
//! measure the filter on the host, and the fuzz targets (feature `testing`): a `Host` that
//! records what the filter did, over shared data with proxy-wasm-cpp-host's CAS rules, and the
//! exact claims a test signs.

mod claims;
mod host;
mod shared_data;

pub use claims::raw_claims;
pub use host::{FakeHost, GrpcCall, SentResponse};
pub use shared_data::MemoryStore;
