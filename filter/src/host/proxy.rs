//! `Host` over the proxy-wasm ABI of the Envoy the module runs in. It calls the ABI directly
//! instead of the SDK's `hostcalls` wrappers, because those panic on any status they do not
//! expect (and on header values that are not UTF-8), and a panic inside the VM would take the
//! whole filter down.

use std::time::Duration;

use proxy_wasm::types::LogLevel;

use super::abi;
use super::header_map::{decode_header_map, encode_header_map};
use super::{CallResponse, GrpcRequest, Headers, Host, HostError};
use crate::ratelimit::{SharedStore, StoreError};

/// `Host` over the proxy-wasm ABI of the Envoy the module runs in.
pub struct ProxyHost;

fn check(call: &'static str, status: u32) -> Result<(), HostError> {
    if status == abi::OK {
        Ok(())
    } else {
        Err(HostError::new(call, status))
    }
}

impl ProxyHost {
    fn header_map(&self, call: &'static str, map_type: u32) -> Result<Headers, HostError> {
        let mut data = std::ptr::null_mut();
        let mut size = 0;
        let status = unsafe { abi::proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
        let bytes = unsafe { abi::take(data, size) };
        check(call, status)?;
        decode_header_map(&bytes).ok_or(HostError::MalformedHeaderMap { call })
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

    fn dispatch_grpc_call(&self, call: &GrpcRequest) -> Result<u32, HostError> {
        // The SDK's wrapper, for the same reason as `dispatch_http_call`: the answer is only
        // delivered to a call its dispatcher registered. Envoy's `grpc_call` returns OK, or
        // ParseFailure for a cluster it does not know, which the wrapper passes on.
        let GrpcRequest { cluster, service, method, message, timeout } = *call;
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
