//! Every call the filter makes into Envoy, behind one small trait.
//!
//! The request flow and the root context only talk to `Host`, so they run unchanged against
//! the in-memory `testing::FakeHost` in unit tests, examples and fuzz targets. `ProxyHost`
//! (`proxy`) is the real implementation over the raw ABI (`abi`); `header_map` is the ABI's
//! header-map encoding.

use std::fmt;
use std::time::Duration;

use proxy_wasm::types::LogLevel;

use crate::ratelimit::SharedStore;

mod abi;
pub mod header_map;
mod proxy;

pub use proxy::ProxyHost;

/// A host call the filter cannot work with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The call returned a status other than OK.
    Status { call: &'static str, status: u32 },
    /// The call succeeded, but what it returned is not a header map in the ABI's encoding.
    MalformedHeaderMap { call: &'static str },
}

impl HostError {
    pub fn new(call: &'static str, status: u32) -> Self {
        HostError::Status { call, status }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Status { call, status } => write!(f, "host call {call} failed with status {status}"),
            HostError::MalformedHeaderMap { call } => write!(f, "host call {call} returned a malformed header map"),
        }
    }
}

/// Header pairs as Envoy hands them over, in order, duplicates kept.
pub type Headers = Vec<(String, String)>;

/// The answer to an HTTP call: its headers and its body.
pub type CallResponse = (Headers, Vec<u8>);

/// A unary gRPC call to make: `service`/`method` on the Envoy cluster `cluster`, with the
/// serialized request `message`, answered or failed within `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct GrpcRequest<'a> {
    pub cluster: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    pub message: &'a [u8],
    pub timeout: Duration,
}

/// The host calls made by the request flow and the root context.
///
/// Shared data comes through the `SharedStore` supertrait, so the rate limiter can use any
/// `Host` as its store.
pub trait Host: SharedStore {
    /// All request headers, names lower-case as Envoy keeps them; values that are not UTF-8
    /// are converted lossily (they can then only fail validation, never pass it).
    fn request_headers(&self) -> Result<Headers, HostError>;
    /// Replaces (or adds) a request header.
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError>;
    /// Removes every value of a request header.
    fn remove_request_header(&self, name: &str) -> Result<(), HostError>;
    /// The upstream response's headers (`:status` among them), as they arrived.
    fn response_headers(&self) -> Result<Headers, HostError>;
    /// Adds a header to the upstream response on its way to the client.
    fn add_response_header(&self, name: &str, value: &str) -> Result<(), HostError>;
    /// The first `size` bytes of the buffered request body.
    fn request_body(&self, size: usize) -> Result<Vec<u8>, HostError>;
    /// Answers the request locally; the upstream never sees it. `details` becomes Envoy's
    /// response code details (`%RESPONSE_CODE_DETAILS%`, no whitespace).
    fn send_response(&self, status: u16, details: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError>;
    /// Wall-clock time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> Result<u64, HostError>;
    /// The downstream peer as Envoy sees it (`source.address`, `ip:port`), honouring
    /// Envoy's own `X-Forwarded-For` trust settings.
    fn client_address(&self) -> Result<Option<String>, HostError>;
    /// Stores `value` in the request's filter state under `wasm.<name>`, where Envoy's access
    /// log reads it (`%FILTER_STATE(wasm.<name>:PLAIN)%`).
    fn set_filter_state(&self, name: &str, value: &str) -> Result<(), HostError>;
    /// The stream's dynamic metadata (`metadata`: `envoy.config.core.v3.Metadata` in protobuf
    /// encoding), where filters before this one, such as `jwt_authn`, leave their results.
    fn dynamic_metadata(&self) -> Result<Option<Vec<u8>>, HostError>;
    /// A variable of the VM's environment (`vm_config.environment_variables`), where secrets
    /// that must stay out of the plugin configuration come from.
    fn env_var(&self, name: &str) -> Option<String>;
    fn log(&self, level: LogLevel, message: &str);
    /// Defines (or finds) a counter by name and returns its id.
    fn define_counter(&self, name: &str) -> Result<u32, HostError>;
    fn increment_counter(&self, id: u32, delta: u64) -> Result<(), HostError>;
    /// Starts an HTTP call to an Envoy cluster; the answer arrives in `on_http_call_response`.
    fn dispatch_http_call(&self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u32, HostError>;
    /// Headers and body of the HTTP call answer being delivered right now.
    fn http_call_response(&self, body_size: usize) -> Result<CallResponse, HostError>;
    /// Starts a unary gRPC call to an Envoy cluster (HTTP/2); the answer arrives in
    /// `on_grpc_call_response`, or a non-zero gRPC status there when the call fails or times out.
    fn dispatch_grpc_call(&self, call: &GrpcRequest) -> Result<u32, HostError>;
    /// The first `size` bytes of the gRPC answer being delivered right now.
    fn grpc_call_response(&self, size: usize) -> Result<Option<Vec<u8>>, HostError>;
    /// Lets the request the filter paused go on to the next filter.
    fn resume_request(&self) -> Result<(), HostError>;
    /// The plugin configuration given by Envoy, if any.
    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, HostError>;
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError>;
}
