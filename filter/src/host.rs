//! Every call the filter makes into Envoy, behind one small trait.
//!
//! The request flow and the root context only talk to `Host`, so they run unchanged against
//! the in-memory `fake::FakeHost` in unit tests. `ProxyHost` is the real implementation: it
//! calls the proxy-wasm ABI directly instead of the SDK's `hostcalls` wrappers, because those
//! panic on any status they do not expect (and on header values that are not UTF-8), and a
//! panic inside the VM would take the whole filter down.

use std::fmt;
use std::time::Duration;

use proxy_wasm::types::LogLevel;

use crate::ratelimit::{SharedStore, StoreError};

/// A host call that returned a status the filter cannot work with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub call: &'static str,
    pub status: u32,
}

impl HostError {
    pub fn new(call: &'static str, status: u32) -> Self {
        HostError { call, status }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host call {} failed with status {}", self.call, self.status)
    }
}

/// Header pairs as Envoy hands them over, in order, duplicates kept.
pub type Headers = Vec<(String, String)>;

/// The answer to an HTTP call: its headers and its body.
pub type CallResponse = (Headers, Vec<u8>);

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
    fn dispatch_grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// The first `size` bytes of the gRPC answer being delivered right now.
    fn grpc_call_response(&self, size: usize) -> Result<Option<Vec<u8>>, HostError>;
    /// Lets the request the filter paused go on to the next filter.
    fn resume_request(&self) -> Result<(), HostError>;
    /// The plugin configuration given by Envoy, if any.
    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, HostError>;
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError>;
}

/// `Host` over the proxy-wasm ABI of the Envoy the module runs in.
pub struct ProxyHost;

mod abi {
    //! Raw proxy-wasm 0.2.1 imports. Statuses are read as plain `u32` so an unexpected value
    //! cannot be undefined behaviour.

    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const CAS_MISMATCH: u32 = 8;

    pub const MAP_REQUEST_HEADERS: u32 = 0;
    pub const MAP_RESPONSE_HEADERS: u32 = 2;
    pub const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
    pub const BUFFER_REQUEST_BODY: u32 = 0;
    pub const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
    pub const BUFFER_GRPC_RECEIVE: u32 = 5;
    pub const STREAM_HTTP_REQUEST: u32 = 0;
    pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
    pub const METRIC_COUNTER: u32 = 0;

    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_continue_stream(stream_type: u32) -> u32;
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
        pub fn proxy_add_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
            return_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    }

    /// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`.
    ///
    /// # Safety
    /// `data` must be null or a `size`-byte allocation made by this module's allocator.
    pub unsafe fn take(data: *mut u8, size: usize) -> Vec<u8> {
        if data.is_null() {
            Vec::new()
        } else {
            Vec::from_raw_parts(data, size, size)
        }
    }
}

fn check(call: &'static str, status: u32) -> Result<(), HostError> {
    if status == abi::OK {
        Ok(())
    } else {
        Err(HostError::new(call, status))
    }
}

/// The proxy-wasm header map encoding: count, then (name length, value length) pairs, then the
/// NUL-terminated names and values.
pub fn encode_header_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs.iter().map(|(n, v)| n.len() + v.len() + 10).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// Decodes the header map encoding, refusing (rather than panicking on) a malformed one.
pub fn decode_header_map(bytes: &[u8]) -> Option<Headers> {
    fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(raw) as usize)
    }
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    let mut data_at = count.checked_mul(8)?.checked_add(4)?;
    let mut pairs = Vec::with_capacity(count.min(bytes.len() / 10 + 1));
    for i in 0..count {
        let name_len = read_u32(bytes, 4 + i * 8)?;
        let value_len = read_u32(bytes, 8 + i * 8)?;
        let name = bytes.get(data_at..data_at.checked_add(name_len)?)?;
        data_at = data_at.checked_add(name_len + 1)?;
        let value = bytes.get(data_at..data_at.checked_add(value_len)?)?;
        data_at = data_at.checked_add(value_len + 1)?;
        pairs.push((text(name), text(value)));
    }
    Some(pairs)
}

/// Header bytes as text. Valid UTF-8, the common case, is checked and copied in one pass;
/// `from_utf8_lossy` walks it chunk by chunk, several times slower in the VM.
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

impl ProxyHost {
    fn header_map(&self, call: &'static str, map_type: u32) -> Result<Headers, HostError> {
        let mut data = std::ptr::null_mut();
        let mut size = 0;
        let status = unsafe { abi::proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
        let bytes = unsafe { abi::take(data, size) };
        check(call, status)?;
        decode_header_map(&bytes).ok_or(HostError::new(call, abi::OK))
    }

    fn buffer(&self, call: &'static str, buffer_type: u32, size: usize) -> Result<Option<Vec<u8>>, HostError> {
        let mut data = std::ptr::null_mut();
        let mut returned = 0;
        let status = unsafe { abi::proxy_get_buffer_bytes(buffer_type, 0, size, &mut data, &mut returned) };
        let bytes = unsafe { abi::take(data, returned) };
        match status {
            abi::OK => Ok(Some(bytes)),
            abi::NOT_FOUND => Ok(None),
            other => Err(HostError::new(call, other)),
        }
    }
}

impl ProxyHost {
    fn property(&self, path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        let mut data = std::ptr::null_mut();
        let mut size = 0;
        let status = unsafe { abi::proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        let bytes = unsafe { abi::take(data, size) };
        match status {
            abi::OK => Ok(Some(bytes)),
            abi::NOT_FOUND => Ok(None),
            other => Err(HostError::new("proxy_get_property", other)),
        }
    }
}

impl SharedStore for ProxyHost {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let mut data = std::ptr::null_mut();
        let mut size = 0;
        let mut cas = 0;
        let status = unsafe { abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
        let bytes = unsafe { abi::take(data, size) };
        match status {
            abi::OK => Ok(Some((bytes, cas))),
            abi::NOT_FOUND => Ok(None),
            other => Err(StoreError::Other(
                HostError::new("proxy_get_shared_data", other).to_string(),
            )),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let status = unsafe {
            abi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0))
        };
        match status {
            abi::OK => Ok(()),
            abi::CAS_MISMATCH => Err(StoreError::CasMismatch),
            other => Err(StoreError::Other(
                HostError::new("proxy_set_shared_data", other).to_string(),
            )),
        }
    }
}

impl Host for ProxyHost {
    fn request_headers(&self) -> Result<Headers, HostError> {
        self.header_map("proxy_get_header_map_pairs", abi::MAP_REQUEST_HEADERS)
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        let status = unsafe {
            abi::proxy_replace_header_map_value(
                abi::MAP_REQUEST_HEADERS,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
        check("proxy_replace_header_map_value", status)
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        let status = unsafe { abi::proxy_remove_header_map_value(abi::MAP_REQUEST_HEADERS, name.as_ptr(), name.len()) };
        check("proxy_remove_header_map_value", status)
    }

    fn response_headers(&self) -> Result<Headers, HostError> {
        self.header_map("proxy_get_header_map_pairs", abi::MAP_RESPONSE_HEADERS)
    }

    fn add_response_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        let status = unsafe {
            abi::proxy_add_header_map_value(
                abi::MAP_RESPONSE_HEADERS,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
        check("proxy_add_header_map_value", status)
    }

    fn request_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        Ok(self
            .buffer("proxy_get_buffer_bytes", abi::BUFFER_REQUEST_BODY, size)?
            .unwrap_or_default())
    }

    fn send_response(&self, status: u16, details: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
        let map = encode_header_map(headers);
        let result = unsafe {
            abi::proxy_send_local_response(
                u32::from(status),
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                map.as_ptr(),
                map.len(),
                -1,
            )
        };
        check("proxy_send_local_response", result)
    }

    fn now_ms(&self) -> Result<u64, HostError> {
        let mut nanos = 0u64;
        let status = unsafe { abi::proxy_get_current_time_nanoseconds(&mut nanos) };
        check("proxy_get_current_time_nanoseconds", status)?;
        Ok(nanos / 1_000_000)
    }

    fn client_address(&self) -> Result<Option<String>, HostError> {
        // Property paths are NUL-separated segments.
        Ok(self.property(b"source\0address")?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    fn env_var(&self, name: &str) -> Option<String> {
        // WASI `environ_get`: Envoy serves it from `vm_config.environment_variables`.
        std::env::var(name).ok()
    }

    fn dynamic_metadata(&self) -> Result<Option<Vec<u8>>, HostError> {
        // The whole message, not a path into it: below `filter_metadata`, Envoy hands a
        // `Struct` over as untyped pairs, where a number and an 8-byte string look alike.
        self.property(b"metadata")
    }

    fn set_filter_state(&self, name: &str, value: &str) -> Result<(), HostError> {
        let status = unsafe { abi::proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
        check("proxy_set_property", status)
    }

    fn log(&self, level: LogLevel, message: &str) {
        // Nothing useful can be done when logging itself fails.
        let _ = unsafe { abi::proxy_log(level as u32, message.as_ptr(), message.len()) };
    }

    fn define_counter(&self, name: &str) -> Result<u32, HostError> {
        let mut id = 0;
        let status = unsafe { abi::proxy_define_metric(abi::METRIC_COUNTER, name.as_ptr(), name.len(), &mut id) };
        check("proxy_define_metric", status)?;
        Ok(id)
    }

    fn increment_counter(&self, id: u32, delta: u64) -> Result<(), HostError> {
        let delta = i64::try_from(delta).unwrap_or(i64::MAX);
        check("proxy_increment_metric", unsafe {
            abi::proxy_increment_metric(id, delta)
        })
    }

    fn dispatch_http_call(&self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<u32, HostError> {
        // The SDK's wrapper is used here because it registers the call for its dispatcher,
        // which would otherwise drop (and panic on) the answer. It only panics on statuses
        // Envoy's `http_call` never returns.
        proxy_wasm::hostcalls::dispatch_http_call(cluster, headers.to_vec(), None, Vec::new(), timeout)
            .map_err(|status| HostError::new("proxy_http_call", status as u32))
    }

    fn http_call_response(&self, body_size: usize) -> Result<CallResponse, HostError> {
        let headers = self.header_map("proxy_get_header_map_pairs", abi::MAP_HTTP_CALL_RESPONSE_HEADERS)?;
        let body = self
            .buffer("proxy_get_buffer_bytes", abi::BUFFER_HTTP_CALL_RESPONSE_BODY, body_size)?
            .unwrap_or_default();
        Ok((headers, body))
    }

    fn dispatch_grpc_call(
        &self,
        cluster: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        // The SDK's wrapper, for the same reason as `dispatch_http_call`: the answer is only
        // delivered to a call its dispatcher registered. Envoy's `grpc_call` returns OK, or
        // ParseFailure for a cluster it does not know, which the wrapper passes on.
        proxy_wasm::hostcalls::dispatch_grpc_call(cluster, service, method, Vec::new(), Some(message), timeout)
            .map_err(|status| HostError::new("proxy_grpc_call", status as u32))
    }

    fn grpc_call_response(&self, size: usize) -> Result<Option<Vec<u8>>, HostError> {
        self.buffer("proxy_get_buffer_bytes", abi::BUFFER_GRPC_RECEIVE, size)
    }

    fn resume_request(&self) -> Result<(), HostError> {
        check("proxy_continue_stream", unsafe {
            abi::proxy_continue_stream(abi::STREAM_HTTP_REQUEST)
        })
    }

    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, HostError> {
        self.buffer("proxy_get_buffer_bytes", abi::BUFFER_PLUGIN_CONFIGURATION, usize::MAX)
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
        check("proxy_set_tick_period_milliseconds", unsafe {
            abi::proxy_set_tick_period_milliseconds(millis)
        })
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory `Host` for unit tests: records what the flow did; shared data is the
    //! rate limiter's `MemoryStore`, which follows Envoy's CAS rules exactly, with a fixed
    //! slot-hash secret so that runs are alike.

    use std::cell::{Cell, RefCell};
    use std::time::Duration;

    use proxy_wasm::types::LogLevel;

    use super::{CallResponse, Headers, Host, HostError};
    use crate::ratelimit::memory::MemoryStore;
    use crate::ratelimit::{SharedStore, StoreError};

    /// A local response the flow sent.
    #[derive(Debug, Clone)]
    pub struct SentResponse {
        pub status: u16,
        pub details: String,
        pub headers: Vec<(String, String)>,
        pub body: String,
    }

    impl SentResponse {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        pub fn code(&self) -> String {
            let body: serde_json::Value = serde_json::from_str(&self.body).expect("local response body is JSON");
            body["error"]["code"]
                .as_str()
                .expect("error.code is a string")
                .to_string()
        }
    }

    /// A gRPC call the flow dispatched.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GrpcCall {
        pub cluster: String,
        pub service: String,
        pub method: String,
        pub message: Vec<u8>,
        pub timeout: Duration,
    }

    #[derive(Default)]
    pub struct FakeHost {
        pub request_headers: RefCell<Headers>,
        pub request_body: RefCell<Vec<u8>>,
        pub response_headers: RefCell<Headers>,
        pub sent: RefCell<Option<SentResponse>>,
        pub shared: MemoryStore,
        pub now_ms: Cell<u64>,
        pub clock_reads: Cell<u32>,
        pub client_address: RefCell<Option<String>>,
        pub client_address_reads: Cell<u32>,
        /// The stream's dynamic metadata, protobuf-encoded.
        pub dynamic_metadata: RefCell<Option<Vec<u8>>>,
        /// The VM's environment.
        pub env: RefCell<Vec<(String, String)>>,
        pub logs: RefCell<Vec<(LogLevel, String)>>,
        /// What the filter stored for the access log, by name.
        pub filter_state: RefCell<std::collections::HashMap<String, String>>,
        metric_names: RefCell<Vec<String>>,
        metric_values: RefCell<Vec<u64>>,
        /// Cluster and headers of every HTTP call dispatched.
        pub http_calls: RefCell<Vec<(String, Headers)>>,
        pub http_call_answer: RefCell<CallResponse>,
        /// Every gRPC call dispatched.
        pub grpc_calls: RefCell<Vec<GrpcCall>>,
        /// The message of the gRPC answer being delivered.
        pub grpc_answer: RefCell<Option<Vec<u8>>>,
        /// When set, dispatching a gRPC call fails with this status.
        pub fail_grpc_dispatch: Cell<Option<u32>>,
        /// How many times a paused request was resumed.
        pub resumed: Cell<u32>,
        pub configuration: RefCell<Option<Vec<u8>>>,
        pub tick_period: Cell<Option<Duration>>,
        /// When set, every shared-data call fails like a broken host would.
        pub fail_shared_data: Cell<bool>,
        /// When set, header reads fail like a broken host would.
        pub fail_headers: Cell<bool>,
    }

    impl FakeHost {
        pub fn new() -> Self {
            let host = FakeHost { shared: MemoryStore::with_fixed_secret(), ..FakeHost::default() };
            host.now_ms.set(1_700_000_000_000);
            *host.client_address.borrow_mut() = Some("203.0.113.7:40000".to_string());
            host
        }

        pub fn request(&self, headers: &[(&str, &str)]) {
            *self.request_headers.borrow_mut() = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        }

        pub fn request_header(&self, name: &str) -> Option<String> {
            self.request_headers
                .borrow()
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        }

        pub fn response_header(&self, name: &str) -> Option<String> {
            self.response_headers
                .borrow()
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        }

        pub fn sent(&self) -> Option<SentResponse> {
            self.sent.borrow().clone()
        }

        pub fn counter(&self, name: &str) -> u64 {
            let names = self.metric_names.borrow();
            names
                .iter()
                .position(|n| n == name)
                .map_or(0, |id| self.metric_values.borrow()[id])
        }

        pub fn counter_defined(&self, name: &str) -> bool {
            self.metric_names.borrow().iter().any(|n| n == name)
        }

        pub fn advance(&self, millis: u64) {
            self.now_ms.set(self.now_ms.get() + millis);
        }
    }

    impl SharedStore for FakeHost {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            if self.fail_shared_data.get() {
                return Err(StoreError::Other("proxy_get_shared_data failed with status 10".into()));
            }
            self.shared.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if self.fail_shared_data.get() {
                return Err(StoreError::Other("proxy_set_shared_data failed with status 10".into()));
            }
            self.shared.set(key, value, cas)
        }
    }

    impl Host for FakeHost {
        fn request_headers(&self) -> Result<Headers, HostError> {
            if self.fail_headers.get() {
                return Err(HostError::new("proxy_get_header_map_pairs", 10));
            }
            Ok(self.request_headers.borrow().clone())
        }

        fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
            let mut headers = self.request_headers.borrow_mut();
            headers.retain(|(n, _)| n != name);
            headers.push((name.to_string(), value.to_string()));
            Ok(())
        }

        fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
            self.request_headers.borrow_mut().retain(|(n, _)| n != name);
            Ok(())
        }

        fn response_headers(&self) -> Result<Headers, HostError> {
            Ok(self.response_headers.borrow().clone())
        }

        fn add_response_header(&self, name: &str, value: &str) -> Result<(), HostError> {
            self.response_headers
                .borrow_mut()
                .push((name.to_string(), value.to_string()));
            Ok(())
        }

        fn request_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
            let body = self.request_body.borrow();
            Ok(body[..size.min(body.len())].to_vec())
        }

        fn send_response(
            &self,
            status: u16,
            details: &str,
            headers: &[(&str, &str)],
            body: &[u8],
        ) -> Result<(), HostError> {
            let mut sent = self.sent.borrow_mut();
            assert!(sent.is_none(), "a second local response was sent for one request");
            *sent = Some(SentResponse {
                status,
                details: details.to_string(),
                headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
                body: String::from_utf8(body.to_vec()).expect("local response body is UTF-8"),
            });
            Ok(())
        }

        fn now_ms(&self) -> Result<u64, HostError> {
            self.clock_reads.set(self.clock_reads.get() + 1);
            Ok(self.now_ms.get())
        }

        fn client_address(&self) -> Result<Option<String>, HostError> {
            self.client_address_reads.set(self.client_address_reads.get() + 1);
            Ok(self.client_address.borrow().clone())
        }

        fn set_filter_state(&self, name: &str, value: &str) -> Result<(), HostError> {
            self.filter_state.borrow_mut().insert(name.to_string(), value.to_string());
            Ok(())
        }

        fn dynamic_metadata(&self) -> Result<Option<Vec<u8>>, HostError> {
            Ok(self.dynamic_metadata.borrow().clone())
        }

        fn env_var(&self, name: &str) -> Option<String> {
            self.env.borrow().iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        }

        fn log(&self, level: LogLevel, message: &str) {
            self.logs.borrow_mut().push((level, message.to_string()));
        }

        fn define_counter(&self, name: &str) -> Result<u32, HostError> {
            let mut names = self.metric_names.borrow_mut();
            if let Some(id) = names.iter().position(|n| n == name) {
                return Ok(id as u32);
            }
            names.push(name.to_string());
            self.metric_values.borrow_mut().push(0);
            Ok(names.len() as u32 - 1)
        }

        fn increment_counter(&self, id: u32, delta: u64) -> Result<(), HostError> {
            match self.metric_values.borrow_mut().get_mut(id as usize) {
                Some(value) => {
                    *value += delta;
                    Ok(())
                }
                None => Err(HostError::new("proxy_increment_metric", 1)),
            }
        }

        fn dispatch_http_call(
            &self,
            cluster: &str,
            headers: &[(&str, &str)],
            _timeout: Duration,
        ) -> Result<u32, HostError> {
            let mut calls = self.http_calls.borrow_mut();
            calls.push((
                cluster.to_string(),
                headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            ));
            Ok(calls.len() as u32)
        }

        fn http_call_response(&self, _body_size: usize) -> Result<CallResponse, HostError> {
            Ok(self.http_call_answer.borrow().clone())
        }

        fn dispatch_grpc_call(
            &self,
            cluster: &str,
            service: &str,
            method: &str,
            message: &[u8],
            timeout: Duration,
        ) -> Result<u32, HostError> {
            if let Some(status) = self.fail_grpc_dispatch.get() {
                return Err(HostError::new("proxy_grpc_call", status));
            }
            let mut calls = self.grpc_calls.borrow_mut();
            calls.push(GrpcCall {
                cluster: cluster.to_string(),
                service: service.to_string(),
                method: method.to_string(),
                message: message.to_vec(),
                timeout,
            });
            Ok(calls.len() as u32)
        }

        fn grpc_call_response(&self, size: usize) -> Result<Option<Vec<u8>>, HostError> {
            Ok(self.grpc_answer.borrow().as_ref().map(|m| m[..size.min(m.len())].to_vec()))
        }

        fn resume_request(&self) -> Result<(), HostError> {
            self.resumed.set(self.resumed.get() + 1);
            Ok(())
        }

        fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, HostError> {
            Ok(self.configuration.borrow().clone())
        }

        fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
            self.tick_period.set(Some(period));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_map_round_trips() {
        let pairs = [
            (":path", "/v1/audio/speech"),
            ("x-empty", ""),
            ("authorization", "Bearer abc"),
        ];
        let decoded = decode_header_map(&encode_header_map(&pairs)).unwrap();
        let expected: Vec<(String, String)> = pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn malformed_header_map_is_refused_not_panicking() {
        let mut bytes = encode_header_map(&[("a", "b")]);
        bytes.truncate(bytes.len() - 2);
        assert_eq!(decode_header_map(&bytes), None);
        assert_eq!(decode_header_map(&[1, 0, 0]), None);
        assert_eq!(decode_header_map(&[255, 255, 255, 255]), None);
        assert_eq!(decode_header_map(&[]), Some(Vec::new()));
    }

    #[test]
    fn non_utf8_header_values_are_converted_lossily() {
        let mut bytes = encode_header_map(&[("x", "ab")]);
        let at = bytes.len() - 2;
        bytes[at] = 0xff;
        let decoded = decode_header_map(&bytes).unwrap();
        assert_eq!(decoded[0].1, "a\u{fffd}");
    }
}
