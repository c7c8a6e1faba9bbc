//! The root context of one VM: loads the configuration, hands it to every HTTP context, and
//! keeps remote JWKS fresh on a tick through `dispatch_http_call`.
//!
//! `RootState` holds the logic over `Host`; `Root` and `HttpFilter` are the thin proxy-wasm
//! glue that Envoy calls.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::auth::{Authenticator, MAX_JWKS_BYTES};
use crate::config;
use crate::host::{Host, ProxyHost};
use crate::http::{Guard, RequestFlow};
use crate::metrics::Metrics;

/// How often the root context asks the authenticator whether a JWKS fetch is due.
const TICK: Duration = Duration::from_secs(1);

/// The configuration and JWKS fetch state of one VM. When a fetch is due, and how failures
/// back off, is the authenticator's business; this only carries the calls.
#[derive(Default)]
pub struct RootState {
    guard: Option<Rc<Guard>>,
    /// Pending HTTP call token → provider name.
    pending: HashMap<u32, String>,
}

impl RootState {
    pub fn new() -> Self {
        RootState::default()
    }

    /// Loads the plugin configuration. On any problem, logs one line naming the field and
    /// returns false, so Envoy refuses the plugin (and `envoy --mode validate` fails); the
    /// VM is then left without configuration, which refuses every request.
    pub fn configure(&mut self, host: &dyn Host) -> bool {
        self.guard = None;
        self.pending.clear();
        let bytes = match host.plugin_configuration() {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(e) => {
                host.log(LogLevel::Critical, &format!("voxgate: configuration not readable: {e}"));
                return false;
            }
        };
        let compiled = match config::load_with_env(&bytes, &|name| host.env_var(name)) {
            Ok(compiled) => compiled,
            Err(e) => {
                host.log(LogLevel::Critical, &format!("voxgate: {e}"));
                return false;
            }
        };
        let providers: Vec<String> = compiled
            .auth
            .as_ref()
            .map(|a| a.remote_jwks().into_iter().map(|s| s.provider).collect())
            .unwrap_or_default();
        let metrics = Metrics::new();
        metrics.define_common(host, &providers);
        if !providers.is_empty() {
            if let Err(e) = host.set_tick_period(TICK) {
                host.log(
                    LogLevel::Critical,
                    &format!("voxgate: remote JWKS cannot be refreshed: {e}"),
                );
                return false;
            }
        }
        self.guard = Some(Rc::new(Guard {
            config: compiled,
            metrics,
        }));
        true
    }

    pub fn guard(&self) -> Option<Rc<Guard>> {
        self.guard.clone()
    }

    /// Starts a fetch for every remote JWKS that is due.
    pub fn tick(&mut self, host: &dyn Host) {
        let Some(guard) = self.guard.clone() else { return };
        let Some(auth) = guard.config.auth.as_ref() else { return };
        let now_s = match host.now_ms() {
            Ok(ms) => ms / 1000,
            Err(e) => {
                host.log(LogLevel::Warn, &format!("voxgate: no clock for the jwks refresh: {e}"));
                return;
            }
        };
        for source in auth.due_jwks_fetches(now_s) {
            let headers = [
                (":method", "GET"),
                (":path", source.path.as_str()),
                (":authority", source.authority.as_str()),
                ("accept", "application/json"),
            ];
            match host.dispatch_http_call(&source.cluster, &headers, Duration::from_millis(source.timeout_ms)) {
                Ok(token) => {
                    self.pending.insert(token, source.provider);
                }
                Err(e) => {
                    auth.note_fetch_failed(&source.provider, now_s);
                    guard.metrics.jwks_fetch(host, &source.provider, false);
                    host.log(
                        LogLevel::Warn,
                        &format!("voxgate: jwks fetch for provider {} not started: {e}", source.provider),
                    );
                }
            }
        }
    }

    /// Applies a JWKS answer (or its failure: no headers) to its provider.
    pub fn http_call_response(&mut self, host: &dyn Host, token: u32, num_headers: usize, body_size: usize) {
        let Some(provider) = self.pending.remove(&token) else {
            return;
        };
        let Some(guard) = self.guard.clone() else { return };
        let Some(auth) = guard.config.auth.as_ref() else { return };
        match fetch_jwks(host, auth, &provider, num_headers, body_size) {
            Ok(keys) => {
                guard.metrics.jwks_fetch(host, &provider, true);
                if guard.config.logs(LogLevel::Debug) {
                    host.log(
                        LogLevel::Debug,
                        &format!("voxgate: jwks for provider {provider} refreshed ({keys} keys)"),
                    );
                }
            }
            Err(reason) => {
                guard.metrics.jwks_fetch(host, &provider, false);
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "voxgate: jwks fetch for provider {provider} failed, keeping the last good keys: {reason}"
                    ),
                );
            }
        }
    }
}

/// Reads a JWKS answer and installs it; on any failure the provider keeps its keys and the
/// authenticator schedules a retry.
fn fetch_jwks(
    host: &dyn Host,
    auth: &Authenticator,
    provider: &str,
    num_headers: usize,
    body_size: usize,
) -> Result<usize, String> {
    let now_s = host.now_ms().map(|ms| ms / 1000).unwrap_or(0);
    let failed = |reason: String| {
        auth.note_fetch_failed(provider, now_s);
        Err(reason)
    };
    if num_headers == 0 {
        return failed("no answer (connection failure or timeout)".to_string());
    }
    if body_size > MAX_JWKS_BYTES {
        return failed(format!("answer larger than {MAX_JWKS_BYTES} bytes"));
    }
    let (headers, body) = match host.http_call_response(body_size) {
        Ok(answer) => answer,
        Err(e) => return failed(e.to_string()),
    };
    let status = headers
        .iter()
        .find(|(n, _)| n == ":status")
        .map_or("none", |(_, v)| v.as_str());
    if status != "200" {
        return failed(format!("status {status}"));
    }
    auth.update_jwks(provider, &body)
}

/// The proxy-wasm root context Envoy creates per VM.
pub struct Root {
    host: ProxyHost,
    state: RootState,
}

impl Root {
    pub fn new() -> Self {
        Root {
            host: ProxyHost,
            state: RootState::new(),
        }
    }
}

impl Default for Root {
    fn default() -> Self {
        Root::new()
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        self.state
            .http_call_response(&self.host, token_id, num_headers, body_size);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.state.configure(&self.host)
    }

    fn on_tick(&mut self) {
        self.state.tick(&self.host);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HttpFilter {
            host: ProxyHost,
            flow: RequestFlow::new(self.state.guard()),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The proxy-wasm HTTP context of one request.
struct HttpFilter {
    host: ProxyHost,
    flow: RequestFlow,
}

impl Context for HttpFilter {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.flow.on_grpc_call_response(&self.host, token_id, status_code, response_size);
    }
}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.flow.on_request_headers(&self.host, end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.flow.on_request_body(&self.host, body_size, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.flow.on_request_trailers(&self.host)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.flow.on_response_headers(&self.host)
    }

    fn on_log(&mut self) {
        self.flow.on_log(&self.host);
    }
}

#[cfg(test)]
mod tests {
    use jwt_simple::prelude::*;
    use proxy_wasm::types::Action;
    use serde_json::{json, Value};

    use super::*;
    use crate::testing::FakeHost;

    const NOW: u64 = 1_800_000_000;
    const ISSUER: &str = "https://idp.test";

    fn config() -> Value {
        json!({
            "routes": [{"prefix": "/v1/", "api": "metadata", "auth": true}],
            "auth": {"providers": [{"name": "corp", "issuer": ISSUER, "audiences": ["voxgate"],
                                    "remote_jwks": {"cluster": "jwks", "authority": "idp.test",
                                                    "path": "/keys.json", "refresh_seconds": 60, "timeout_ms": 500}}]}
        })
    }

    fn host_with(config: &Value) -> FakeHost {
        let host = FakeHost::new();
        host.now_ms.set(NOW * 1000);
        *host.configuration.borrow_mut() = Some(config.to_string().into_bytes());
        host
    }

    fn b64(bytes: &[u8]) -> String {
        Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
    }

    fn jwks_of(key: &ES256KeyPair, kid: &str) -> Vec<u8> {
        let point = key.public_key().public_key().to_bytes_uncompressed();
        let (x, y) = point[1..].split_at(32);
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(x), "y": b64(y)}]})
            .to_string()
            .into_bytes()
    }

    fn token(key: &ES256KeyPair, kid: &str) -> String {
        let custom = json!({"iss": ISSUER, "sub": "alice", "aud": "voxgate", "iat": NOW, "exp": NOW + 600});
        let claims = crate::auth::test_keys::raw_claims(&custom);
        ES256KeyPair::from_bytes(&key.to_bytes())
            .unwrap()
            .with_key_id(kid)
            .sign(claims)
            .unwrap()
    }

    fn request_status(state: &RootState, host: &FakeHost, token: &str) -> Option<u16> {
        *host.sent.borrow_mut() = None;
        let auth = format!("Bearer {token}");
        host.request(&[(":method", "GET"), (":path", "/v1/models"), ("authorization", &auth)]);
        let mut flow = RequestFlow::new(state.guard());
        let action = flow.on_request_headers(host, true);
        let sent = host.sent().map(|s| s.status);
        assert_eq!(action == Action::Continue, sent.is_none());
        sent
    }

    #[test]
    fn a_bad_configuration_is_refused_with_one_line_naming_the_field() {
        let mut bad = config();
        bad["rate_limits"] = json!({"slots": 1});
        let host = host_with(&bad);
        let mut state = RootState::new();
        assert!(!state.configure(&host));
        assert!(state.guard().is_none());
        let logs = host.logs.borrow();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].0, LogLevel::Critical);
        assert!(
            logs[0]
                .1
                .starts_with("voxgate: invalid configuration at `rate_limits.slots`"),
            "{}",
            logs[0].1
        );
    }

    #[test]
    fn a_good_configuration_defines_the_common_counters() {
        let host = host_with(&config());
        let mut state = RootState::new();
        assert!(state.configure(&host));
        assert!(host.counter_defined("voxgate.decision.allowed"));
        assert!(host.counter_defined("voxgate.jwks_fetch.corp.ok"));
        assert_eq!(host.tick_period.get(), Some(TICK));
    }

    #[test]
    fn remote_jwks_are_fetched_on_tick_installed_and_kept_when_a_fetch_fails() {
        let host = host_with(&config());
        let mut state = RootState::new();
        assert!(state.configure(&host));
        let key = ES256KeyPair::generate();
        let first = token(&key, "k1");
        assert_eq!(
            request_status(&state, &host, &first),
            Some(401),
            "no keys before the first fetch"
        );

        state.tick(&host);
        let calls = host.http_calls.borrow().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "jwks");
        for expected in [(":method", "GET"), (":path", "/keys.json"), (":authority", "idp.test")] {
            assert!(
                calls[0].1.contains(&(expected.0.to_string(), expected.1.to_string())),
                "{expected:?}"
            );
        }
        state.tick(&host);
        assert_eq!(
            host.http_calls.borrow().len(),
            1,
            "no second fetch while one is in flight"
        );

        let body = jwks_of(&key, "k1");
        *host.http_call_answer.borrow_mut() = (vec![(":status".into(), "200".into())], body.clone());
        state.http_call_response(&host, 1, 1, body.len());
        assert_eq!(host.counter("voxgate.jwks_fetch.corp.ok"), 1);
        assert_eq!(
            request_status(&state, &host, &first),
            None,
            "the fetched key verifies the token"
        );

        host.advance(61_000);
        state.tick(&host);
        assert_eq!(host.http_calls.borrow().len(), 2, "refreshed after refresh_seconds");
        *host.http_call_answer.borrow_mut() = (vec![(":status".into(), "503".into())], b"down".to_vec());
        state.http_call_response(&host, 2, 1, 4);
        assert_eq!(host.counter("voxgate.jwks_fetch.corp.failed"), 1);
        assert!(host
            .logs
            .borrow()
            .iter()
            .any(|(_, l)| l.contains("keeping the last good keys: status 503")));
        let fresh = token(&key, "k1");
        assert_eq!(
            request_status(&state, &host, &fresh),
            None,
            "the last good key set stays in use"
        );

        state.http_call_response(&host, 99, 1, 0);
        assert_eq!(
            host.counter("voxgate.jwks_fetch.corp.failed"),
            1,
            "unknown call tokens are ignored"
        );
    }
}
