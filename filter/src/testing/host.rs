//! An in-memory `Host` that records what the filter did; its shared data is `MemoryStore`,
//! which follows Envoy's CAS rules exactly, with a fixed slot-hash secret so that runs are
//! alike.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use proxy_wasm::types::LogLevel;

use super::MemoryStore;
use crate::host::{CallResponse, GrpcRequest, Headers, Host, HostError};
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

    fn dispatch_grpc_call(&self, call: &GrpcRequest) -> Result<u32, HostError> {
        if let Some(status) = self.fail_grpc_dispatch.get() {
            return Err(HostError::new("proxy_grpc_call", status));
        }
        let mut calls = self.grpc_calls.borrow_mut();
        calls.push(GrpcCall {
            cluster: call.cluster.to_string(),
            service: call.service.to_string(),
            method: call.method.to_string(),
            message: call.message.to_vec(),
            timeout: call.timeout,
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
