//! voxgate filter: a proxy-wasm HTTP filter that guards a text-to-speech service.
//!
//! Request pipeline: route → JWT → text validation → token buckets → forward.
//! Every step is plain Rust over the `host::Host` trait, so it is unit-tested on the host.
pub mod access_log;
pub mod auth;
pub mod config;
pub mod decision;
pub mod error;
pub mod host;
pub mod http;
pub mod metrics;
pub mod ratelimit;
pub mod response;
pub mod root;
pub mod routes;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // The SDK's logger also turns a panic message into a log line before the VM aborts.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::new()) });
}}
