//! The request flow: what the filter decides for one HTTP request, step by step, over `Host`.
//!
//! Headers: strip client `x-voxgate-*` → route → method → (auth routes) token, the cache of
//! verified tokens, else failed-auth bucket and verification → forwarded identity → (speech
//! routes) content type, declared length.
//! Body (speech POST): buffered up to the byte limit, then validated. Then the rate limits,
//! and only then does the request continue: the upstream never sees a refused request. With
//! an audio budget, the caller's balance goes along (`x-voxgate-audio-*`), and the audio
//! seconds the sidecar's answer reports are charged when the answer's headers arrive.
//! The headers wait with the body unless `hold_headers_for_body` is off; then they go on at
//! once and the next filter (Envoy's buffer filter, in a mesh) holds them.
//! Any unexpected host or store error refuses the request (500), never lets it through.

use std::rc::Rc;

use proxy_wasm::types::{Action, LogLevel};

use crate::access_log;
use crate::auth::{self, Cached};
use crate::config::CompiledConfig;
use crate::decision::{Code, Rejection};
use crate::host::{GrpcRequest, Host, HostError};
use crate::metrics::Metrics;
use crate::ratelimit::cluster::{self, Answer, FailureMode, Prepared, Query};
use crate::ratelimit::{client_key, AudioBudget, Identity, Outcome, StoreError, Verdict};
use crate::response::{self, RequestLabels};
use crate::routes::{self, Api, Budget, Route};

/// Everything a request needs that lives as long as one VM's configuration.
pub struct Guard {
    pub config: CompiledConfig,
    pub metrics: Metrics,
}

/// The client address when Envoy has none to give.
const UNKNOWN_CLIENT: &str = "unknown";

/// Prefix of the headers the filter owns towards the upstream.
const OWN_HEADER_PREFIX: &str = "x-voxgate-";

/// Headers that tell the sidecar the caller's audio budget (see `tenants` in the sidecar).
const TENANT_HEADER: &str = "x-voxgate-tenant";
const AUDIO_BUDGET_HEADER: &str = "x-voxgate-audio-budget";
const AUDIO_CAPACITY_HEADER: &str = "x-voxgate-audio-capacity";
const MAX_IN_FLIGHT_HEADER: &str = "x-voxgate-max-in-flight";
/// Response headers of the sidecar: the audio seconds to charge, and on a 429 for the audio
/// budget, the seconds the request needs.
const AUDIO_SECONDS_HEADER: &str = "x-voxgate-audio-seconds";
const AUDIO_REQUIRED_HEADER: &str = "x-voxgate-audio-required";

/// Why the flow stopped a request.
enum Stop {
    Refused(Rejection),
    /// The host or the store failed: the request is refused, never let through.
    Internal(String),
}

impl From<Rejection> for Stop {
    fn from(r: Rejection) -> Self {
        Stop::Refused(r)
    }
}

impl From<HostError> for Stop {
    fn from(e: HostError) -> Self {
        Stop::Internal(e.to_string())
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Internal(match e {
            StoreError::CasMismatch => "shared data kept changing (CAS retries exhausted)".to_string(),
            StoreError::Other(message) => message,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Headers,
    /// Headers checked; the body is being buffered for validation.
    AwaitingBody,
    /// The local buckets admitted the request; the cluster's rate-limit service is deciding.
    AwaitingCluster,
    /// The request was let through; only response headers and the end remain.
    Forwarded,
    /// A local response was sent (or could not be).
    Answered,
}

/// Per-request state of the flow.
pub struct RequestFlow {
    guard: Option<Rc<Guard>>,
    stage: Stage,
    route: Option<Route>,
    /// The request path as the access log may show it (`access_log::loggable_path`).
    log_path: String,
    /// The rate limit that refused the request, for the logs.
    limit: Option<String>,
    /// Read from Envoy when first needed (`client_ip`).
    client_ip: Option<String>,
    subject: Option<String>,
    plan: Option<String>,
    content_type: Option<String>,
    query: String,
    body_seen: usize,
    rate_limit_headers: Vec<(String, String)>,
    holds_in_flight: bool,
    /// The headers went on before the body was checked (`hold_headers_for_body` off).
    headers_released: bool,
    /// The question the cluster's rate-limit service is answering.
    pending: Option<Pending>,
    /// Envoy's clock as read during the current callback (see `now_ms`).
    now_ms: Option<u64>,
}

/// A request the local buckets admitted, waiting for the cluster tier.
struct Pending {
    call: u32,
    verdict: Verdict,
    chars: u64,
    query: Query,
    /// When the call went out (ms): a block the service counts expires no later than this
    /// plus its counter's reset time.
    started_ms: u64,
}

impl RequestFlow {
    /// `guard` is `None` when the VM has no valid configuration: every request is refused.
    pub fn new(guard: Option<Rc<Guard>>) -> Self {
        RequestFlow {
            guard,
            stage: Stage::Headers,
            route: None,
            log_path: String::new(),
            limit: None,
            client_ip: None,
            subject: None,
            plan: None,
            content_type: None,
            query: String::new(),
            body_seen: 0,
            rate_limit_headers: Vec::new(),
            holds_in_flight: false,
            headers_released: false,
            pending: None,
            now_ms: None,
        }
    }

    pub fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Action {
        let Some(guard) = self.guard.clone() else {
            let rejection = Rejection::new(
                Code::FilterNotConfigured,
                "the gateway filter has no valid configuration",
            );
            host.log(
                LogLevel::Error,
                "voxgate: refused reason=filter_not_configured status=503",
            );
            self.record(host, rejection.code.as_str());
            if let Err(e) = response::send(host, &rejection) {
                host.log(LogLevel::Error, &format!("voxgate: could not answer: {e}"));
            }
            self.stage = Stage::Answered;
            return Action::Pause;
        };
        let result = self.check_headers(host, &guard, end_of_stream);
        self.settle(host, &guard, result)
    }

    /// Called as body chunks arrive; `body_size` is everything buffered so far.
    pub fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Action {
        match self.stage {
            Stage::AwaitingBody => {}
            Stage::Forwarded => return Action::Continue,
            Stage::Headers | Stage::AwaitingCluster | Stage::Answered => return Action::Pause,
        }
        let Some(guard) = self.guard.clone() else {
            return Action::Pause;
        };
        self.body_seen = body_size;
        if let Err(rejection) = guard.config.text.check_body_size(body_size) {
            return self.settle(host, &guard, Err(rejection.into()));
        }
        if !end_of_stream {
            // Proxy-wasm's Pause in a body callback is StopIterationAndBuffer.
            return Action::Pause;
        }
        let result = self.check_body(host, &guard);
        self.settle(host, &guard, result)
    }

    /// Trailers end a body whose last chunk did not say so.
    pub fn on_request_trailers(&mut self, host: &dyn Host) -> Action {
        match self.stage {
            Stage::AwaitingBody => {}
            Stage::Forwarded => return Action::Continue,
            Stage::Headers | Stage::AwaitingCluster | Stage::Answered => return Action::Pause,
        }
        let Some(guard) = self.guard.clone() else {
            return Action::Pause;
        };
        let result = self.check_body(host, &guard);
        self.settle(host, &guard, result)
    }

    /// Charges the audio the upstream's answer reports, and adds the rate-limit headers.
    pub fn on_response_headers(&mut self, host: &dyn Host) -> Action {
        if self.stage != Stage::Forwarded {
            return Action::Continue;
        }
        if let Some(guard) = self.guard.clone() {
            if self.route.as_ref().is_some_and(Route::is_speech) {
                if let Err(e) = self.settle_audio(host, &guard) {
                    host.log(LogLevel::Error, &format!("voxgate: audio not charged: {e}"));
                }
            }
        }
        for (name, value) in &self.rate_limit_headers {
            if let Err(e) = host.add_response_header(name, value) {
                host.log(LogLevel::Warn, &format!("voxgate: rate-limit header not added: {e}"));
            }
        }
        Action::Continue
    }

    /// Charges the answer's `x-voxgate-audio-seconds` to the caller; when the sidecar refused
    /// the request for the audio budget, replaces the rate-limit headers with that budget's,
    /// and a `Retry-After` from its refill rate.
    fn settle_audio(&mut self, host: &dyn Host, guard: &Guard) -> Result<(), String> {
        let headers = host.response_headers().map_err(|e| e.to_string())?;
        let seconds = |name: &str| {
            header(&headers, name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        let charged = seconds(AUDIO_SECONDS_HEADER);
        let required = (header(&headers, ":status") == Some("429")).then(|| seconds(AUDIO_REQUIRED_HEADER)).flatten();
        if charged.is_none() && required.is_none() {
            return Ok(());
        }
        let limiter = &guard.config.rate_limits;
        let now_ms = self.now_ms(host).map_err(|e| e.to_string())?;
        self.now_ms = None;
        let who = self.identity();
        if let Some(charged) = charged {
            let retries = limiter.charge_audio(host, now_ms, &who, charged).map_err(store_message)?;
            guard.metrics.cas_retries(host, retries);
            guard.metrics.audio_charged(host, limiter.plan_name(&who), charged);
        }
        if let Some(required) = required {
            if let Some(refusal) = limiter.audio_refusal(host, now_ms, &who, required).map_err(store_message)? {
                guard.metrics.rate_limited(host, refusal.limit);
                self.rate_limit_headers = refusal.headers;
            }
        }
        Ok(())
    }

    /// The stream is over: give back the in-flight slot it held.
    pub fn on_log(&mut self, host: &dyn Host) {
        if let Some(pending) = self.pending.take() {
            self.abandon(host, &pending);
        }
        if !self.holds_in_flight {
            return;
        }
        self.holds_in_flight = false;
        let Some(guard) = self.guard.clone() else { return };
        // `admit` read the address if the request was charged to it.
        let who = self.identity();
        if let Err(e) = guard.config.rate_limits.release_in_flight(host, &who) {
            let message = store_message(e);
            host.log(
                LogLevel::Error,
                &format!("voxgate: in-flight slot not released: {message}"),
            );
        }
    }

    /// The client went away while the cluster tier was deciding: the request never reaches the
    /// upstream, so what the local buckets took is given back.
    fn abandon(&mut self, host: &dyn Host, pending: &Pending) {
        let Some(guard) = self.guard.clone() else { return };
        if let Err(Stop::Internal(message)) = self.give_back(host, &guard, pending) {
            host.log(LogLevel::Error, &format!("voxgate: tokens of an abandoned request not given back: {message}"));
        }
    }

    /// Gives back everything the local buckets and this Envoy's reservations took for
    /// `pending`, which a later tier refused or its client left.
    fn give_back(&mut self, host: &dyn Host, guard: &Guard, pending: &Pending) -> Result<(), Stop> {
        let now_ms = self.now_ms(host)?;
        let limiter = &guard.config.rate_limits;
        if let Some(tier) = limiter.cluster() {
            tier.give_back(host, now_ms, &pending.query)?;
        }
        let retries = limiter.give_back(host, now_ms, &pending.verdict.receipt)?;
        guard.metrics.cas_retries(host, retries);
        Ok(())
    }

    /// Who the request is charged to, as far as the flow knows it (the client address only
    /// once read: see `client_ip`).
    fn identity(&self) -> Identity<'_> {
        Identity {
            subject: self.subject.as_deref(),
            plan: self.plan.as_deref(),
            client_addr: self.client_ip.as_deref().unwrap_or_default(),
        }
    }

    /// Turns the outcome of a step into the action Envoy gets.
    fn settle(&mut self, host: &dyn Host, guard: &Guard, result: Result<Action, Stop>) -> Action {
        self.now_ms = None;
        let rejection = match result {
            Ok(action) => return action,
            Err(Stop::Refused(rejection)) => rejection,
            Err(Stop::Internal(message)) => {
                host.log(
                    LogLevel::Error,
                    &format!("voxgate: internal error, request refused: {message}"),
                );
                Rejection::new(Code::InternalError, "the gateway could not check this request")
            }
        };
        self.stage = Stage::Answered;
        let client_address = match self.client_ip(host) {
            Ok(ip) => ip.to_string(),
            Err(_) => UNKNOWN_CLIENT.to_string(),
        };
        self.record(host, rejection.code.as_str());
        let route = self.route.as_ref().map_or("-", |r| r.prefix.as_str());
        let labels = RequestLabels {
            route,
            limit: self.limit.as_deref(),
            subject: self.subject.as_deref(),
            client_address: &client_address,
        };
        let log = guard.config.logs(LogLevel::Info);
        if let Err(e) = response::reject(host, &guard.metrics, &rejection, &labels, log) {
            host.log(LogLevel::Error, &format!("voxgate: could not answer: {e}"));
        }
        Action::Pause
    }

    fn check_headers(&mut self, host: &dyn Host, guard: &Guard, end_of_stream: bool) -> Result<Action, Stop> {
        let config = &guard.config;
        let headers = strip_own_headers(host, host.request_headers()?)?;

        let method = header(&headers, ":method").unwrap_or_default();
        let path = header(&headers, ":path").unwrap_or_default();
        self.log_path = access_log::loggable_path(path).to_string();
        let route = config.routes.find(path)?.clone();
        self.route = Some(route.clone());
        route.check_method(method)?;

        if route.auth {
            self.authenticate(host, guard, &headers)?;
        }

        if !route.is_speech() {
            if !end_of_stream {
                // Metadata routes read no body: it would reach the sidecar unchecked.
                return Err(unexpected_body(method).into());
            }
            return match route.budget {
                Budget::Plan => self.admit(host, guard, 0),
                Budget::None => Ok(self.forward_unmetered(host, guard)),
            };
        }
        if route.api == Api::CoquiTts {
            check_coqui_headers(&headers)?;
        }
        if method == "GET" {
            if !end_of_stream {
                // The sidecar would fill parameters missing from the query from a body.
                return Err(unexpected_body(method).into());
            }
            let request = config.text.validate_query(route.api, routes::query(path))?;
            return self.admit(host, guard, request.map_or(0, |r| r.chars));
        }
        self.content_type = header(&headers, "content-type").map(str::to_string);
        config
            .text
            .check_content_type(route.api, self.content_type.as_deref())?;
        if let Some(length) = header(&headers, "content-length") {
            let length = length
                .parse::<usize>()
                .map_err(|_| Rejection::new(Code::InvalidContentLength, "Content-Length is not a number"))?;
            config.text.check_body_size(length)?;
        }
        self.query = routes::query(path).to_string();
        self.stage = Stage::AwaitingBody;
        if end_of_stream {
            return self.check_body(host, guard);
        }
        if config.hold_headers_for_body {
            return Ok(Action::Pause);
        }
        // The body callbacks still hold every chunk until the whole body is checked.
        self.headers_released = true;
        Ok(Action::Continue)
    }

    fn check_body(&mut self, host: &dyn Host, guard: &Guard) -> Result<Action, Stop> {
        let text = &guard.config.text;
        let api = self
            .route
            .as_ref()
            .map(|r| r.api)
            .ok_or_else(|| Stop::Internal("body without a route".into()))?;
        let body = if self.body_seen == 0 {
            Vec::new()
        } else {
            host.request_body(self.body_seen)?
        };
        text.check_body_size(body.len())?;
        let request = if api == Api::CoquiTts && body.is_empty() {
            // Coqui clients may POST with the text in the query string and no body.
            text.validate_query(api, &self.query)?
        } else if api == Api::CoquiTts && !self.query.is_empty() {
            // The sidecar, like Coqui, would prefer the query's parameters over the body's.
            return Err(Rejection::new(
                Code::AmbiguousParameters,
                "send the parameters in the body or in the query string, not both",
            )
            .into());
        } else {
            Some(text.validate_body(api, self.content_type.as_deref(), &body)?)
        };
        self.admit(host, guard, request.map_or(0, |r| r.chars))
    }

    /// Establishes the identity, from the payload `jwt_authn` verified where a provider trusts
    /// it, else from the token, and forwards it. A refused credential (401) costs the address
    /// a failed-auth token.
    fn authenticate(&mut self, host: &dyn Host, guard: &Guard, headers: &[(String, String)]) -> Result<(), Stop> {
        let config = &guard.config;
        let auth = config
            .auth
            .as_ref()
            .ok_or_else(|| Stop::Internal("auth route without authenticator".into()))?;
        let now_ms = self.now_ms(host)?;
        let trusted = match auth.trusts_jwt_authn() {
            true => match host.dynamic_metadata()? {
                Some(metadata) => auth.verify_jwt_authn_payload(&metadata, now_ms / 1000).map_err(Stop::Internal)?,
                None => None,
            },
            false => None,
        };
        let verified = match trusted {
            Some(verified) => verified,
            None => self.verify_token(host, guard, headers, now_ms)?,
        };
        let verified = match verified {
            Ok(verified) => verified,
            Err(rejection) => {
                // A 403 concerns an authentic token (wrong audience or scope): not a forgery.
                if rejection.status() == 401 {
                    self.charge_failed_auth(host, guard, now_ms)?;
                }
                return Err(rejection.into());
            }
        };
        for (name, value) in &verified.forwarded {
            host.set_request_header(name, value)?;
        }
        if !config.forward_token {
            for name in &config.token_headers {
                host.remove_request_header(name)?;
            }
        }
        let plan_claim = config.rate_limits.plan_claim();
        self.plan = verified
            .plan
            .clone()
            .or_else(|| verified.claims.get(plan_claim).and_then(|v| v.as_str()).map(str::to_string));
        self.subject = Some(verified.subject.clone());
        Ok(())
    }

    /// The request's token, verified (a cached one at once; otherwise after the failed-auth
    /// bucket). A missing token is refused without counting as a failure.
    fn verify_token(
        &mut self,
        host: &dyn Host,
        guard: &Guard,
        headers: &[(String, String)],
        now_ms: u64,
    ) -> Result<Result<Rc<auth::Verified>, Rejection>, Stop> {
        let config = &guard.config;
        let auth = config
            .auth
            .as_ref()
            .ok_or_else(|| Stop::Internal("auth route without authenticator".into()))?;
        let token = match auth.token_from_headers(headers) {
            Ok(Some(token)) => token,
            // A request without a token costs no verification, so it is not a failure to count.
            Ok(None) => return Err(auth::token_missing().into()),
            Err(rejection) => return Ok(Err(rejection)),
        };
        let cached = auth.verify_cached(&token, now_ms / 1000);
        // Exported before any early return, so every lookup is counted once.
        guard.metrics.token_cache(host, auth.cache_stats());
        let verified = match cached {
            Cached::Hit(verified) => verified,
            Cached::Miss(unverified) => {
                // Only a token not verified before can cost a signature check.
                let mut exhausted = None;
                if let Some(table) = &config.failed_auth {
                    let peek = table.peek(host, now_ms, &self.client_key(host)?)?;
                    guard.metrics.cas_retries(host, peek.cas_retries);
                    if !peek.allowed {
                        exhausted = Some(peek.retry_after_s);
                    }
                }
                match exhausted {
                    // Every client has an address of its own: its failures say all its
                    // tokens are worth refusing unchecked.
                    Some(retry_after_s) if auth.failed_auth_refuses_before_verification() => {
                        self.limit = Some(AUTH_FAILURES.to_string());
                        return Err(too_many_failures(retry_after_s).into());
                    }
                    // An address many clients may share: a token that verifies passes whoever
                    // else failed from there; one that does not is told to back off.
                    Some(retry_after_s) => match auth.verify_uncached(unverified) {
                        Err(rejection) if rejection.status() == 401 => {
                            self.limit = Some(AUTH_FAILURES.to_string());
                            Err(too_many_failures(retry_after_s))
                        }
                        other => other,
                    },
                    None => auth.verify_uncached(unverified),
                }
            }
        };
        Ok(verified)
    }

    fn charge_failed_auth(&mut self, host: &dyn Host, guard: &Guard, now_ms: u64) -> Result<(), Stop> {
        if let Some(table) = &guard.config.failed_auth {
            let take = table.take(host, now_ms, &self.client_key(host)?, 1)?;
            guard.metrics.cas_retries(host, take.cas_retries);
        }
        Ok(())
    }

    /// Takes the request's cost from the local rate limits, then asks the cluster tier where
    /// one is configured, and lets the request through, or refuses it.
    fn admit(&mut self, host: &dyn Host, guard: &Guard, chars: u64) -> Result<Action, Stop> {
        let now_ms = self.now_ms(host)?;
        if self.subject.is_none() {
            // Requests without a subject are charged to their address.
            self.client_ip(host)?;
        }
        let limiter = &guard.config.rate_limits;
        let who = self.identity();
        let verdict = limiter.admit(host, now_ms, &who, chars)?;
        guard.metrics.cas_retries(host, verdict.cas_retries);
        if verdict.state_reset {
            host.log(
                LogLevel::Warn,
                "voxgate: an unreadable rate-limit record was reset to full",
            );
        }
        let shadow_refused_by = match verdict.outcome {
            Outcome::Refused { limit, rejection } => {
                self.limit = Some(limit.to_string());
                // A text larger than a bucket could ever hold is a 400, not a rate limit.
                if rejection.status() == 429 {
                    guard.metrics.rate_limited(host, limit);
                    self.count_plan_decision(host, guard, true);
                }
                return Err(rejection.into());
            }
            Outcome::WouldRefuse { limit } => Some(limit),
            Outcome::Admitted => None,
        };
        let tier = limiter.cluster().filter(|tier| !tier.in_local_only(now_ms));
        let prepared = match tier {
            Some(tier) => tier.prepare(host, now_ms, &who, limiter.plan_name(&who), chars)?,
            None => Prepared::Nothing,
        };
        if let Some(limit) = shadow_refused_by {
            self.report_shadow_refusal(host, guard, limit)?;
        }
        match prepared {
            Prepared::Nothing => self.forward_admitted(host, guard, verdict, chars),
            Prepared::Reserved => {
                guard.metrics.cluster_reserved(host);
                self.forward_admitted(host, guard, verdict, chars)
            }
            Prepared::Ask(query) => self.ask_cluster(host, guard, Pending { call: 0, verdict, chars, query, started_ms: now_ms }),
            Prepared::Refused(answer) => {
                guard.metrics.cluster_known_spent(host);
                let pending = Pending { call: 0, verdict, chars, query: Query::default(), started_ms: now_ms };
                self.decide_by_cluster(host, guard, pending, answer)
            }
        }
    }

    /// Puts `pending`'s query to the cluster's rate-limit service and waits for the answer.
    fn ask_cluster(&mut self, host: &dyn Host, guard: &Guard, mut pending: Pending) -> Result<Action, Stop> {
        let Some(tier) = guard.config.rate_limits.cluster() else {
            return Err(Stop::Internal("a cluster query without a cluster tier".into()));
        };
        let call = GrpcRequest {
            cluster: &tier.config().service,
            service: cluster::SERVICE,
            method: cluster::METHOD,
            message: &pending.query.message,
            timeout: tier.timeout(),
        };
        match host.dispatch_grpc_call(&call) {
            Ok(call) => {
                pending.call = call;
                self.pending = Some(pending);
                self.stage = Stage::AwaitingCluster;
                Ok(Action::Pause)
            }
            Err(e) => {
                let answer = Answer::Failed(format!("the call could not start: {e}"));
                guard.metrics.cluster_answer(host, &answer);
                self.decide_by_cluster(host, guard, pending, answer)
            }
        }
    }

    /// The cluster's rate-limit service answered (`grpc_status` 0) or the call failed.
    pub fn on_grpc_call_response(&mut self, host: &dyn Host, call: u32, grpc_status: u32, size: usize) {
        let Some(guard) = self.guard.clone() else { return };
        let Some(pending) = self.pending.take_if(|p| p.call == call) else { return };
        let Some(tier) = guard.config.rate_limits.cluster() else { return };
        // One byte past the limit is enough to refuse an oversized answer unread.
        let message = match grpc_status {
            0 => host.grpc_call_response(size.min(cluster::MAX_ANSWER_BYTES + 1)).ok().map(Option::unwrap_or_default),
            _ => None,
        };
        let answer = tier.answer(&pending.query.limits, grpc_status, message.as_deref());
        guard.metrics.cluster_answer(host, &answer);
        let result = match answer {
            // The blocks did not fit what is left: the request alone may.
            Answer::OverLimit { ref spent, .. } if pending.query.reserves() && tier.exact_may_pass(&pending.query, spent) => {
                let query = pending.query.exact();
                match self.now_ms(host) {
                    Ok(started_ms) => self.ask_cluster(host, &guard, Pending { query, started_ms, ..pending }),
                    Err(e) => Err(e.into()),
                }
            }
            answer => self.decide_by_cluster(host, &guard, pending, answer),
        };
        if self.settle(host, &guard, result) == Action::Continue {
            if let Err(e) = host.resume_request() {
                host.log(LogLevel::Error, &format!("voxgate: admitted request not resumed: {e}"));
            }
        }
    }

    /// Lets the request through, or refuses it, as the cluster tier's answer says; a refused
    /// request gets back everything the local buckets took.
    fn decide_by_cluster(&mut self, host: &dyn Host, guard: &Guard, pending: Pending, answer: Answer) -> Result<Action, Stop> {
        let limiter = &guard.config.rate_limits;
        let Some(tier) = limiter.cluster() else {
            return Err(Stop::Internal("a cluster answer without a cluster tier".into()));
        };
        let now_ms = self.now_ms(host)?;
        match answer {
            Answer::Allowed { resets_ms } => {
                tier.keep_reserved(host, now_ms, &pending.query, &resets_ms, pending.started_ms)?;
                self.forward_admitted(host, guard, pending.verdict, pending.chars)
            }
            Answer::OverLimit { limit, ref spent, .. } if limiter.shadow() => {
                tier.remember_refusal(host, now_ms, &pending.query, spent, pending.started_ms)?;
                self.report_shadow_refusal(host, guard, limit.refusal_name())?;
                self.forward_admitted(host, guard, pending.verdict, pending.chars)
            }
            Answer::OverLimit { limit, retry_after_s, headers, spent } => {
                tier.remember_refusal(host, now_ms, &pending.query, &spent, pending.started_ms)?;
                self.give_back(host, guard, &pending)?;
                let name = limit.refusal_name();
                self.limit = Some(name.to_string());
                guard.metrics.rate_limited(host, name);
                self.count_plan_decision(host, guard, true);
                let rejection = Rejection::new(
                    Code::RateLimited,
                    format!("rate limit reached ({name}); retry after {retry_after_s} s"),
                );
                Err(Rejection { headers, ..rejection }.into())
            }
            Answer::Failed(why) => {
                let mode = tier.config().failure_mode;
                if tier.should_log_failure(now_ms) {
                    host.log(
                        LogLevel::Warn,
                        &format!("voxgate: cluster rate limits undecided ({why}); failure_mode {}", mode.name()),
                    );
                }
                match mode {
                    FailureMode::Deny => {
                        self.give_back(host, guard, &pending)?;
                        let rejection = Rejection::new(
                            Code::RateLimitUnavailable,
                            "the cluster's rate limits could not be checked; retry after 1 s",
                        );
                        let headers = vec![("Retry-After".to_string(), "1".to_string())];
                        Err(Rejection { headers, ..rejection }.into())
                    }
                    FailureMode::Allow => self.forward_admitted(host, guard, pending.verdict, pending.chars),
                    FailureMode::LocalOnly => {
                        tier.start_local_only(now_ms);
                        self.forward_admitted(host, guard, pending.verdict, pending.chars)
                    }
                }
            }
        }
    }

    /// Lets through a request every rate-limit tier admitted.
    fn forward_admitted(&mut self, host: &dyn Host, guard: &Guard, verdict: Verdict, chars: u64) -> Result<Action, Stop> {
        self.count_plan_decision(host, guard, false);
        // Headers that already went on (`hold_headers_for_body` off, as in a mesh) can take no
        // more: the sidecar then prices the text without a budget, and the filter still charges
        // the audio its answer reports.
        if let (false, Some(audio)) = (self.headers_released, &verdict.audio) {
            forward_audio_budget(host, audio)?;
        }
        self.holds_in_flight = verdict.in_flight_lease;
        self.rate_limit_headers = verdict.headers;
        guard.metrics.characters_admitted(host, chars);
        guard.metrics.allowed(host);
        self.record(host, "allowed");
        self.stage = Stage::Forwarded;
        Ok(Action::Continue)
    }

    /// A subject's request decided by the rate limits, counted under its plan.
    fn count_plan_decision(&self, host: &dyn Host, guard: &Guard, limited: bool) {
        let who = self.identity();
        if let Some(plan) = guard.config.rate_limits.plan_name(&who) {
            guard.metrics.plan_decision(host, plan, limited);
        }
    }

    fn report_shadow_refusal(&mut self, host: &dyn Host, guard: &Guard, bucket: &str) -> Result<(), Stop> {
        guard.metrics.shadow_refused(host, bucket);
        if guard.config.logs(LogLevel::Info) {
            let client = self.client_ip(host)?.to_string();
            host.log(
                LogLevel::Info,
                &format!(
                    "voxgate: shadow refusal bucket={bucket} subject={} client={client}",
                    self.subject.as_deref().unwrap_or("-"),
                ),
            );
        }
        Ok(())
    }

    /// Lets a request through that no rate limit applies to (`budget: none`).
    fn forward_unmetered(&mut self, host: &dyn Host, guard: &Guard) -> Action {
        guard.metrics.allowed(host);
        self.record(host, "allowed");
        self.stage = Stage::Forwarded;
        Action::Continue
    }

    /// Tells Envoy's access log how the request was decided.
    fn record(&self, host: &dyn Host, decision: &str) {
        let entry = access_log::Entry {
            decision,
            limit: self.limit.as_deref(),
            route: self.route.as_ref().map(|r| r.prefix.as_str()),
            path: &self.log_path,
        };
        access_log::record(host, &entry);
    }

    /// The time in milliseconds, asked of Envoy once per callback: authentication and the rate
    /// limits of a request checked in one callback share one instant, and one host call. A
    /// body that arrives later is charged at its own time.
    fn now_ms(&mut self, host: &dyn Host) -> Result<u64, HostError> {
        if let Some(now_ms) = self.now_ms {
            return Ok(now_ms);
        }
        let now_ms = host.now_ms()?;
        self.now_ms = Some(now_ms);
        Ok(now_ms)
    }

    /// The client IP, asked of Envoy once and only when needed: a request with a cached token,
    /// charged to its subject and allowed, never needs it.
    fn client_ip(&mut self, host: &dyn Host) -> Result<&str, HostError> {
        if self.client_ip.is_none() {
            self.client_ip = Some(ip_without_port(host.client_address()?.as_deref()));
        }
        Ok(self.client_ip.as_deref().unwrap_or(UNKNOWN_CLIENT))
    }

    /// The identity of the client's address in the failed-auth bucket: the same `client_key`
    /// as the anonymous bucket's, so an IPv6 client cannot leave one by moving within its /64.
    fn client_key(&mut self, host: &dyn Host) -> Result<String, HostError> {
        Ok(client_key(self.client_ip(host)?))
    }
}

/// Tells the sidecar what the caller may still spend, so that it refuses a text priced above
/// that before synthesizing it.
fn forward_audio_budget(host: &dyn Host, audio: &AudioBudget) -> Result<(), HostError> {
    host.set_request_header(TENANT_HEADER, &audio.tenant)?;
    let balance = format!("{}.{:03}", audio.balance_ms / 1000, audio.balance_ms % 1000);
    host.set_request_header(AUDIO_BUDGET_HEADER, &balance)?;
    host.set_request_header(AUDIO_CAPACITY_HEADER, &audio.capacity_seconds.to_string())?;
    if let Some(max) = audio.max_in_flight {
        host.set_request_header(MAX_IN_FLIGHT_HEADER, &max.to_string())?;
    }
    Ok(())
}

fn store_message(error: StoreError) -> String {
    match error {
        StoreError::CasMismatch => "CAS retries exhausted".to_string(),
        StoreError::Other(message) => message,
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Removes every client-sent `x-voxgate-*` header, so only the filter can set them, and
/// returns the remaining headers.
fn strip_own_headers(host: &dyn Host, headers: Vec<(String, String)>) -> Result<Vec<(String, String)>, HostError> {
    let (own, rest): (Vec<_>, Vec<_>) = headers
        .into_iter()
        .partition(|(n, _)| n.to_ascii_lowercase().starts_with(OWN_HEADER_PREFIX));
    let mut removed: Vec<String> = Vec::new();
    for (name, _) in own {
        if !removed.contains(&name) {
            host.remove_request_header(&name)?;
            removed.push(name);
        }
    }
    Ok(rest)
}

/// The client IP without its port (`source.address` is `ip:port` or `[ipv6]:port`); the
/// bucket key for anonymous and failed-auth limits.
fn ip_without_port(address: Option<&str>) -> String {
    let Some(address) = address else {
        return UNKNOWN_CLIENT.to_string();
    };
    if let Some(rest) = address.strip_prefix('[') {
        if let Some((ip, _)) = rest.split_once(']') {
            return ip.to_string();
        }
    }
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip.to_string(),
        _ => address.to_string(),
    }
}

/// 400 for a body on a request that takes none.
fn unexpected_body(method: &str) -> Rejection {
    Rejection::new(Code::UnexpectedBody, format!("a {method} request on this route carries no body"))
}

/// The limit on failed authentications per address, by the name logs and metrics use.
const AUTH_FAILURES: &str = "auth_failures";

/// 429 for an address whose failed authentications emptied its bucket.
fn too_many_failures(retry_after_s: u64) -> Rejection {
    Rejection::new(Code::AuthFailures, "too many failed authentications from this address")
    .with_header("retry-after", retry_after_s.max(1).to_string())
}

/// Coqui's server (and so the sidecar) also reads `text`, `speaker-id` and `language-id`
/// from request headers, before the query string and the body. The filter validates the query
/// string or the body, so a request with those headers is refused rather than forwarded with
/// text nobody checked.
fn check_coqui_headers(headers: &[(String, String)]) -> Result<(), Rejection> {
    let found = headers
        .iter()
        .find(|(n, _)| COQUI_HEADER_PARAMETERS.iter().any(|p| n.eq_ignore_ascii_case(p)));
    match found {
        Some((name, _)) => Err(Rejection::new(
            Code::UnsupportedParameterSource,
            format!("the `{name}` header is not accepted: send the parameters in the query string or the body"),
        )),
        None => Ok(()),
    }
}

const COQUI_HEADER_PARAMETERS: [&str; 3] = ["text", "speaker-id", "language-id"];

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use jwt_simple::prelude::*;
    use proxy_wasm::types::Action;
    use serde_json::{json, Value};

    use prost::Message;

    use super::{Guard, RequestFlow};
    use crate::access_log;
    use crate::ratelimit::cluster::{
        self,
        proto::{Code, DescriptorStatus, Duration, RateLimit, RateLimitRequest, RateLimitResponse, Unit},
    };
    use crate::config::FilterConfig;
    use crate::testing::{FakeHost, SentResponse};
    use crate::metrics::Metrics;

    const SECRET: &[u8] = b"a test secret of thirty-two bytes or more";
    const ISSUER: &str = "https://issuer.test";
    /// The fake host's clock, in seconds.
    const NOW: u64 = 1_800_000_000;

    /// The metadata routes spend the plan's budget here: most tests exercise the limits
    /// through them, the cheapest requests; `/livez` spends nothing, as shipped routes do.
    fn config() -> Value {
        json!({
            "routes": [
                {"prefix": "/v1/audio/speech", "api": "openai_speech", "auth": true},
                {"prefix": "/api/tts", "api": "coqui_tts", "auth": true},
                {"prefix": "/v1/", "api": "metadata", "auth": true, "budget": "plan"},
                {"prefix": "/healthz", "api": "metadata", "auth": false, "budget": "plan"},
                {"prefix": "/livez", "api": "metadata", "auth": false}
            ],
            "auth": {
                "providers": [{"name": "test", "issuer": ISSUER, "audiences": ["voxgate"],
                               "jwks": {"keys": [{"kty": "oct", "kid": "k1", "k": Base64UrlSafeNoPadding::encode_to_string(SECRET).unwrap()}]}}],
                "required_scopes": ["tts"],
                "forward_claims": {"plan": "x-voxgate-plan"},
                "failed_auth": {"capacity": 3, "refill_per_second": 1.0}
            },
            "text": {"max_body_bytes": 256, "max_chars": 40, "voices": ["joe"], "response_formats": ["mp3", "wav"],
                     "deny_patterns": ["(?i)forbidden"]},
            "rate_limits": {
                "default_plan": "free",
                "plans": {
                    "free": {"requests": {"capacity": 3, "refill_per_second": 0.5},
                             "characters": {"capacity": 30, "refill_per_second": 0},
                             "max_in_flight": 2},
                    "pro": {"requests": {"capacity": 100, "refill_per_second": 0}}
                },
                "anonymous": {"requests": {"capacity": 2, "refill_per_second": 0}}
            }
        })
    }

    fn guard_from(config: Value) -> Rc<Guard> {
        let compiled = FilterConfig::parse(config.to_string().as_bytes())
            .unwrap()
            .compile()
            .unwrap();
        Rc::new(Guard {
            config: compiled,
            metrics: Metrics::new(),
        })
    }

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.now_ms.set(NOW * 1000);
        host
    }

    fn token_with(claims: Value) -> String {
        let mut all = json!({"iss": ISSUER, "sub": "alice", "aud": "voxgate", "scope": "tts", "plan": "free",
                             "iat": NOW - 10, "exp": NOW + 3600});
        for (name, value) in claims.as_object().unwrap() {
            all[name] = value.clone();
        }
        let claims = crate::auth::test_keys::raw_claims(&all);
        HS256Key::from_bytes(SECRET)
            .with_key_id("k1")
            .authenticate(claims)
            .unwrap()
    }

    fn token(subject: &str) -> String {
        token_with(json!({"sub": subject}))
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    /// One request through the flow: headers, then (if any) the body in `chunk`-byte pieces.
    struct Exchange {
        flow: RequestFlow,
        actions: Vec<Action>,
    }

    fn send(guard: &Rc<Guard>, host: &FakeHost, headers: &[(&str, &str)], body: Option<&[u8]>) -> Exchange {
        send_chunked(guard, host, headers, body, usize::MAX)
    }

    fn send_chunked(
        guard: &Rc<Guard>,
        host: &FakeHost,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        chunk: usize,
    ) -> Exchange {
        *host.sent.borrow_mut() = None;
        host.response_headers.borrow_mut().clear();
        host.request(headers);
        let mut flow = RequestFlow::new(Some(guard.clone()));
        let mut actions = vec![flow.on_request_headers(host, body.is_none())];
        if let Some(body) = body {
            let mut buffered = 0;
            loop {
                buffered = (buffered + chunk.min(body.len())).min(body.len());
                *host.request_body.borrow_mut() = body[..buffered].to_vec();
                let end = buffered == body.len();
                actions.push(flow.on_request_body(host, buffered, end));
                if end || host.sent().is_some() {
                    break;
                }
            }
        }
        Exchange { flow, actions }
    }

    fn get(path: &str, authorization: Option<&str>) -> Vec<(&'static str, String)> {
        let mut headers = vec![(":method", "GET".to_string()), (":path", path.to_string())];
        if let Some(value) = authorization {
            headers.push(("authorization", value.to_string()));
        }
        headers
    }

    fn refs<'a>(headers: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        headers.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }

    fn speech_headers(token: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "POST".to_string()),
            (":path", "/v1/audio/speech".to_string()),
            ("content-type", "application/json".to_string()),
            ("authorization", bearer(token)),
        ]
    }

    fn speech_body(text: &str) -> Vec<u8> {
        json!({"model": "tts-1", "input": text, "voice": "joe", "response_format": "wav"})
            .to_string()
            .into_bytes()
    }

    fn refused(host: &FakeHost) -> SentResponse {
        host.sent().expect("a local response")
    }

    fn assert_refused(host: &FakeHost, exchange: &Exchange, status: u16, code: &str) -> SentResponse {
        let sent = refused(host);
        assert_eq!((sent.status, sent.code().as_str()), (status, code), "{}", sent.body);
        assert_eq!(
            exchange.actions.last(),
            Some(&Action::Pause),
            "a refused request never continues"
        );
        assert_eq!(sent.header("content-type"), Some("application/json"));
        sent
    }

    /// Decision, limit and route as the filter left them for Envoy's access log.
    fn access_logged(host: &FakeHost) -> (String, String, String) {
        let state = host.filter_state.borrow();
        let field = |name: &str| state.get(name).cloned().unwrap_or_default();
        (field(access_log::DECISION), field(access_log::LIMIT), field(access_log::ROUTE))
    }

    fn assert_forwarded(host: &FakeHost, exchange: &Exchange) {
        assert!(host.sent().is_none(), "unexpected refusal: {:?}", host.sent());
        assert_eq!(exchange.actions.last(), Some(&Action::Continue));
        assert_eq!(access_logged(host).0, "allowed");
    }

    #[test]
    fn without_configuration_every_request_is_503() {
        let host = host();
        host.request(&[(":method", "GET"), (":path", "/healthz")]);
        let mut flow = RequestFlow::new(None);
        assert_eq!(flow.on_request_headers(&host, true), Action::Pause);
        let sent = refused(&host);
        assert_eq!((sent.status, sent.code().as_str()), (503, "filter_not_configured"));
    }

    #[test]
    fn unknown_route_is_404_and_wrong_method_405() {
        let guard = guard_from(config());
        let host = host();
        let exchange = send(&guard, &host, &[(":method", "GET"), (":path", "/admin")], None);
        assert_refused(&host, &exchange, 404, "unknown_route");
        let exchange = send(
            &guard,
            &host,
            &refs(&get("/v1/audio/speech", Some(&bearer(&token("a"))))),
            None,
        );
        let sent = assert_refused(&host, &exchange, 405, "method_not_allowed");
        assert_eq!(sent.header("allow"), Some("POST"));
        assert_eq!(host.counter("voxgate.decision.unknown_route"), 1);
        let logs = host.logs.borrow();
        assert!(logs[0].1.starts_with("voxgate: refused reason=unknown_route status=404 route=- "), "{}", logs[0].1);
        assert!(
            logs[1].1.starts_with("voxgate: refused reason=method_not_allowed status=405 route=/v1/audio/speech "),
            "the 405 names the route it matched: {}",
            logs[1].1
        );
    }

    #[test]
    fn verified_identity_replaces_client_sent_voxgate_headers() {
        let guard = guard_from(config());
        let host = host();
        let token = token_with(json!({"sub": "alice", "plan": "pro"}));
        let auth = bearer(&token);
        let headers = [
            (":method", "GET"),
            (":path", "/v1/models"),
            ("authorization", auth.as_str()),
            ("x-voxgate-subject", "admin"),
            ("x-voxgate-role", "root"),
            ("X-Voxgate-Plan", "enterprise"),
        ];
        let exchange = send(&guard, &host, &headers, None);
        assert_forwarded(&host, &exchange);
        assert_eq!(host.request_header("x-voxgate-subject").as_deref(), Some("alice"));
        assert_eq!(host.request_header("x-voxgate-issuer").as_deref(), Some(ISSUER));
        assert_eq!(host.request_header("x-voxgate-plan").as_deref(), Some("pro"));
        assert_eq!(host.request_header("x-voxgate-role"), None);
        assert_eq!(host.request_header("X-Voxgate-Plan"), None);
        assert_eq!(
            host.request_header("authorization"),
            None,
            "the token is not forwarded by default"
        );
    }

    #[test]
    fn anonymous_route_strips_voxgate_headers_and_uses_the_address_bucket() {
        let guard = guard_from(config());
        let host = host();
        for _ in 0..2 {
            let exchange = send(
                &guard,
                &host,
                &[
                    (":method", "GET"),
                    (":path", "/healthz"),
                    ("x-voxgate-subject", "admin"),
                ],
                None,
            );
            assert_forwarded(&host, &exchange);
            assert_eq!(host.request_header("x-voxgate-subject"), None);
        }
        let exchange = send(&guard, &host, &[(":method", "GET"), (":path", "/healthz")], None);
        assert_refused(&host, &exchange, 429, "rate_limited");
        *host.client_address.borrow_mut() = Some("198.51.100.9:5000".into());
        let exchange = send(&guard, &host, &[(":method", "GET"), (":path", "/healthz")], None);
        assert_forwarded(&host, &exchange);
    }

    #[test]
    fn an_unmetered_route_is_never_rate_limited_and_spends_nothing() {
        let guard = guard_from(config());
        let host = host();
        for _ in 0..100 {
            let exchange = send(&guard, &host, &[(":method", "GET"), (":path", "/livez")], None);
            assert_forwarded(&host, &exchange);
        }
        // The address's anonymous budget is untouched: its first metered calls still pass.
        for _ in 0..2 {
            let exchange = send(&guard, &host, &[(":method", "GET"), (":path", "/healthz")], None);
            assert_forwarded(&host, &exchange);
        }
    }

    #[test]
    fn token_is_forwarded_when_configured() {
        let mut config = config();
        config["forward_token"] = json!(true);
        let guard = guard_from(config);
        let host = host();
        let auth = bearer(&token("alice"));
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&auth))), None);
        assert_forwarded(&host, &exchange);
        assert_eq!(host.request_header("authorization"), Some(auth));
    }

    #[test]
    fn missing_token_is_401_and_costs_the_address_nothing() {
        let guard = guard_from(config());
        let host = host();
        for _ in 0..5 {
            let exchange = send(&guard, &host, &refs(&get("/v1/models", None)), None);
            let sent = assert_refused(&host, &exchange, 401, "token_missing");
            assert_eq!(sent.header("www-authenticate"), Some("Bearer realm=\"voxgate\""));
        }
    }

    /// The test configuration for addresses that each identify one client.
    fn refusing_before_verification() -> Value {
        let mut config = config();
        config["auth"]["failed_auth"]["refuse_before_verification"] = json!(true);
        config
    }

    #[test]
    fn behind_a_shared_address_fresh_valid_tokens_pass_while_forgeries_from_it_get_429() {
        let guard = guard_from(config());
        let host = host();
        let forged = bearer(&format!("{}x", token("mallory")));
        for _ in 0..3 {
            let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&forged))), None);
            assert_refused(&host, &exchange, 401, "bad_signature");
        }
        for n in 0..20 {
            let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&forged))), None);
            let sent = assert_refused(&host, &exchange, 429, "auth_failures");
            assert_eq!(sent.header("retry-after"), Some("1"));
            let fresh = bearer(&token(&format!("user-{n}")));
            let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&fresh))), None);
            assert_forwarded(&host, &exchange);
        }
        let stats = guard.config.auth.as_ref().unwrap().stats();
        assert_eq!(stats.signature_checks, 43, "every new token is checked: none is refused unchecked");
    }

    #[test]
    fn failed_authentications_block_the_address_before_any_verification() {
        let guard = guard_from(refusing_before_verification());
        let host = host();
        let forged = format!("{}x", token("mallory"));
        for _ in 0..3 {
            let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&forged)))), None);
            assert_refused(&host, &exchange, 401, "bad_signature");
        }
        let good = bearer(&token("alice"));
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&good))), None);
        let sent = assert_refused(&host, &exchange, 429, "auth_failures");
        assert_eq!(sent.header("retry-after"), Some("1"));
        assert_eq!(access_logged(&host), ("auth_failures".into(), "auth_failures".into(), "/v1/".into()));
        let stats = guard.config.auth.as_ref().unwrap().stats();
        assert_eq!(stats.signature_checks, 3, "the blocked request never reached a signature check");
        assert_eq!(
            host.counter("voxgate.token_cache.miss"),
            stats.cache_misses,
            "the blocked request's cache lookup is counted too"
        );

        *host.client_address.borrow_mut() = Some("[2001:db8::1]:443".into());
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&good))), None);
        assert_forwarded(&host, &exchange);

        *host.client_address.borrow_mut() = Some("203.0.113.7:40000".into());
        host.advance(1_000);
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&good))), None);
        assert_forwarded(&host, &exchange);
    }

    #[test]
    fn failed_authentications_are_counted_per_ipv6_64_and_for_ipv4_mapped_addresses_as_ipv4() {
        let guard = guard_from(config());
        let host = host();
        let forged = bearer(&format!("{}x", token("mallory")));
        let good = bearer(&token("alice"));
        for n in 1..=3 {
            *host.client_address.borrow_mut() = Some(format!("[2001:db8::{n}]:443"));
            let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&forged))), None);
            assert_refused(&host, &exchange, 401, "bad_signature");
        }
        *host.client_address.borrow_mut() = Some("[2001:db8::ffff:4]:443".into());
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&forged))), None);
        assert_refused(&host, &exchange, 429, "auth_failures");
        *host.client_address.borrow_mut() = Some("[2001:db8:0:1::1]:443".into());
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&good))), None);
        assert_forwarded(&host, &exchange);

        for _ in 0..3 {
            *host.client_address.borrow_mut() = Some("198.51.100.20:1000".into());
            let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&forged))), None);
            assert_refused(&host, &exchange, 401, "bad_signature");
        }
        *host.client_address.borrow_mut() = Some("[::ffff:198.51.100.20]:2000".into());
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&forged))), None);
        assert_refused(&host, &exchange, 429, "auth_failures");
    }

    const MESH_ISSUER: &str = "https://mesh.test";

    /// The test configuration with a second provider whose tokens `jwt_authn` verifies.
    fn mesh_config() -> Value {
        let mut config = config();
        config["auth"]["providers"].as_array_mut().unwrap().push(json!({
            "name": "mesh", "issuer": MESH_ISSUER, "audiences": ["voxgate"], "max_lifetime_seconds": 7200,
            "jwt_authn": {"payload_in_metadata": "mesh_payload"}}));
        config
    }

    fn mesh_payload(changes: Value) -> Value {
        let mut payload = json!({"iss": MESH_ISSUER, "sub": "meshuser", "aud": ["voxgate"], "scope": "tts",
                                 "plan": "pro", "iat": NOW - 10, "exp": NOW + 600});
        for (name, value) in changes.as_object().unwrap() {
            payload[name] = value.clone();
        }
        payload
    }

    fn set_metadata(host: &FakeHost, payload: Option<Value>) {
        *host.dynamic_metadata.borrow_mut() = payload.map(|payload| {
            crate::auth::metadata_encode::metadata(&[
                ("istio_authn", json!({"request.auth.principal": "x"})),
                (crate::auth::JWT_AUTHN_NAMESPACE, json!({"mesh_payload": payload})),
            ])
        });
    }

    #[test]
    fn a_payload_jwt_authn_verified_is_the_identity_without_any_signature_check() {
        let guard = guard_from(mesh_config());
        let host = host();
        set_metadata(&host, Some(mesh_payload(json!({}))));
        let mut exchange = send(&guard, &host, &refs(&get("/v1/models", None)), None);
        assert_forwarded(&host, &exchange);
        assert_eq!(host.request_header("x-voxgate-subject").as_deref(), Some("meshuser"));
        assert_eq!(host.request_header("x-voxgate-issuer").as_deref(), Some(MESH_ISSUER));
        assert_eq!(host.request_header("x-voxgate-plan").as_deref(), Some("pro"));
        exchange.flow.on_response_headers(&host);
        assert_eq!(host.response_header("X-RateLimit-Limit").as_deref().map(|l| l.starts_with("100")), Some(true),
                   "charged to the payload's plan");
        assert_eq!(guard.config.auth.as_ref().unwrap().stats().signature_checks, 0);
    }

    #[test]
    fn a_payload_meets_the_providers_claim_rules() {
        let guard = guard_from(mesh_config());
        let host = host();
        let cases = [
            (json!({"aud": "elsewhere"}), 403, "wrong_audience"),
            (json!({"scope": "read"}), 403, "insufficient_scope"),
            (json!({"exp": NOW - 3600}), 401, "token_expired"),
            (json!({"exp": NOW + 86_400}), 401, "token_lifetime_too_long"),
            (json!({"iss": ISSUER}), 401, "wrong_issuer"),
            (json!({"sub": "mesh\u{202E}user"}), 401, "token_malformed"),
            (json!({"sub": ""}), 401, "subject_missing"),
        ];
        for (n, (changes, status, code)) in cases.into_iter().enumerate() {
            *host.client_address.borrow_mut() = Some(format!("198.51.100.{}:1000", n + 1));
            set_metadata(&host, Some(mesh_payload(changes)));
            let exchange = send(&guard, &host, &refs(&get("/v1/models", None)), None);
            assert_refused(&host, &exchange, status, code);
        }
    }

    #[test]
    fn without_a_payload_a_token_of_a_jwt_authn_issuer_is_refused_and_others_verified_here() {
        let guard = guard_from(mesh_config());
        let host = host();
        set_metadata(&host, None);
        let unverified = bearer(&token_with(json!({"iss": MESH_ISSUER})));
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&unverified))), None);
        assert_refused(&host, &exchange, 401, "token_unverified");
        let exchange = send(&guard, &host, &refs(&get("/v1/models", None)), None);
        assert_refused(&host, &exchange, 401, "token_missing");
        // Metadata without this provider's payload, and a header named like it, change nothing.
        *host.dynamic_metadata.borrow_mut() =
            Some(crate::auth::metadata_encode::metadata(&[("istio_authn", json!({"sub": "meshuser"}))]));
        let payload = mesh_payload(json!({})).to_string();
        let headers = [(":method", "GET"), (":path", "/v1/models"), ("envoy.filters.http.jwt_authn", &payload),
                       ("mesh_payload", &payload)];
        let exchange = send(&guard, &host, &headers, None);
        assert_refused(&host, &exchange, 401, "token_missing");
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("alice"))))), None);
        assert_forwarded(&host, &exchange);
        assert_eq!(host.request_header("x-voxgate-subject").as_deref(), Some("alice"));
    }

    #[test]
    fn metadata_that_does_not_decode_refuses_the_request() {
        let guard = guard_from(mesh_config());
        let host = host();
        *host.dynamic_metadata.borrow_mut() = Some(vec![0x0A, 0xFF]);
        let exchange = send(&guard, &host, &refs(&get("/v1/models", None)), None);
        assert_refused(&host, &exchange, 500, "internal_error");
    }

    const PEPPER: &str = "a pepper from the environment";

    fn api_key_config() -> Value {
        use crate::auth::api_key_entries::entry;
        let pepper = PEPPER.as_bytes();
        let mut config = config();
        config["auth"]["api_keys"] = json!({"pepper_env": "VOXGATE_API_KEY_PEPPER", "keys": [
            entry("ci", "sk-ci-0123456789", pepper, "ci-bot", json!({"plan": "pro"})),
            entry("old", "sk-old-0123456789", pepper, "old-bot", json!({"revoked": true})),
            entry("reader", "sk-read-0123456789", pepper, "reader", json!({"scopes": ["read"]})),
        ]});
        config
    }

    fn api_key_guard() -> Rc<Guard> {
        let host = FakeHost::new();
        host.env.borrow_mut().push(("VOXGATE_API_KEY_PEPPER".into(), PEPPER.into()));
        *host.configuration.borrow_mut() = Some(api_key_config().to_string().into_bytes());
        let mut root = crate::root::RootState::new();
        assert!(root.configure(&host), "{:?}", host.logs.borrow());
        root.guard().unwrap()
    }

    #[test]
    fn api_keys_authenticate_with_their_subject_plan_and_scopes() {
        let guard = api_key_guard();
        let host = host();
        let mut exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer("sk-ci-0123456789")))), None);
        assert_forwarded(&host, &exchange);
        assert_eq!(host.request_header("x-voxgate-subject").as_deref(), Some("ci-bot"));
        assert_eq!(host.request_header("x-voxgate-issuer").as_deref(), Some(crate::auth::API_KEY_ISSUER));
        assert_eq!(host.request_header("x-voxgate-plan").as_deref(), Some("pro"));
        assert_eq!(host.request_header("authorization"), None, "the key is not forwarded");
        exchange.flow.on_response_headers(&host);
        let limit = host.response_header("X-RateLimit-Limit").unwrap();
        assert_eq!(limit, "100", "the pro plan");
        let cases = [
            ("sk-old-0123456789", 401, "api_key_revoked"),
            ("sk-nobody-0123456789", 401, "api_key_unknown"),
            ("sk-read-0123456789", 403, "insufficient_scope"),
        ];
        for (key, status, code) in cases {
            let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(key)))), None);
            let sent = assert_refused(&host, &exchange, status, code);
            assert!(!sent.body.contains(key));
        }
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("alice"))))), None);
        assert_forwarded(&host, &exchange);
    }

    #[test]
    fn a_missing_pepper_refuses_the_configuration() {
        let host = FakeHost::new();
        *host.configuration.borrow_mut() = Some(api_key_config().to_string().into_bytes());
        let mut root = crate::root::RootState::new();
        assert!(!root.configure(&host));
        assert!(host.logs.borrow().iter().any(|(_, line)| line.contains("auth.api_keys.pepper_env")));
    }

    #[test]
    fn a_cached_token_passes_an_address_blocked_for_failures_without_asking_for_the_address() {
        let guard = guard_from(refusing_before_verification());
        let host = host();
        let good = bearer(&token("alice"));
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&good))), None);
        assert_forwarded(&host, &exchange);
        let forged = format!("{}x", token("mallory"));
        for _ in 0..3 {
            let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&forged)))), None);
            assert_refused(&host, &exchange, 401, "bad_signature");
        }
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("bob"))))), None);
        assert_refused(&host, &exchange, 429, "auth_failures");

        // Verified before, so it costs no signature check: the failure count does not apply,
        // and nothing needs the client address.
        let reads = host.client_address_reads.get();
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&good))), None);
        assert_forwarded(&host, &exchange);
        assert_eq!(host.client_address_reads.get(), reads);
    }

    #[test]
    fn forbidden_but_authentic_tokens_do_not_count_as_failures() {
        let guard = guard_from(config());
        let host = host();
        let other_audience = bearer(&token_with(json!({"aud": "elsewhere"})));
        for _ in 0..5 {
            let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&other_audience))), None);
            let sent = assert_refused(&host, &exchange, 403, "wrong_audience");
            assert!(sent
                .header("www-authenticate")
                .unwrap()
                .contains("error=\"insufficient_scope\""));
        }
        let no_scope = bearer(&token_with(json!({"scope": "read"})));
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&no_scope))), None);
        assert_refused(&host, &exchange, 403, "insufficient_scope");
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_401() {
        let guard = guard_from(config());
        let host = host();
        let expired = bearer(&token_with(json!({"exp": NOW - 3600})));
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&expired))), None);
        let sent = assert_refused(&host, &exchange, 401, "token_expired");
        assert!(sent
            .header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""));
        let early = bearer(&token_with(json!({"nbf": NOW + 3600})));
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&early))), None);
        assert_refused(&host, &exchange, 401, "token_not_yet_valid");
    }

    #[test]
    fn speech_body_is_buffered_validated_then_forwarded_with_rate_limit_headers() {
        let guard = guard_from(config());
        let host = host();
        let body = speech_body("Hello there, friend.");
        let mut exchange = send_chunked(&guard, &host, &refs(&speech_headers(&token("alice"))), Some(&body), 16);
        assert_eq!(exchange.actions[0], Action::Pause, "headers wait for the body");
        assert!(exchange.actions[1..exchange.actions.len() - 1]
            .iter()
            .all(|a| *a == Action::Pause));
        assert_forwarded(&host, &exchange);
        assert_eq!(exchange.flow.on_response_headers(&host), Action::Continue);
        // The draft-03 fields describe the tightest bucket: 10 of 30 characters left.
        assert_eq!(host.response_header("X-RateLimit-Remaining").as_deref(), Some("10"));
        assert!(host.response_header("X-RateLimit-Limit").is_some());
        assert_eq!(host.counter("voxgate.characters_admitted"), 20);
        assert_eq!(host.counter("voxgate.decision.allowed"), 1);
    }

    #[test]
    fn the_clock_is_read_once_per_callback() {
        let guard = guard_from(config());
        let host = host();
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("mia"))))), None);
        assert_forwarded(&host, &exchange);
        assert_eq!(host.clock_reads.get(), 1, "authentication and the rate limits share one reading");

        host.clock_reads.set(0);
        let body = speech_body("Hello there.");
        let exchange = send(&guard, &host, &refs(&speech_headers(&token("mia"))), Some(&body));
        assert_forwarded(&host, &exchange);
        assert_eq!(host.clock_reads.get(), 2, "the body is charged at its own time");
    }

    #[test]
    fn without_holding_headers_only_the_body_waits_and_a_bad_body_is_still_refused() {
        let mut relaxed = config();
        relaxed["hold_headers_for_body"] = json!(false);
        let guard = guard_from(relaxed);
        let host = host();
        let headers = speech_headers(&token("alice"));
        let body = speech_body("Hello there, friend.");
        let exchange = send_chunked(&guard, &host, &refs(&headers), Some(&body), 16);
        assert_eq!(exchange.actions[0], Action::Continue, "headers go on to the next filter");
        assert!(exchange.actions[1..exchange.actions.len() - 1]
            .iter()
            .all(|a| *a == Action::Pause));
        assert_forwarded(&host, &exchange);

        let denied = speech_body("a forbidden word");
        let exchange = send_chunked(&guard, &host, &refs(&headers), Some(&denied), 16);
        assert_eq!(exchange.actions[0], Action::Continue);
        assert_refused(&host, &exchange, 400, "denied_text");
    }

    #[test]
    fn oversize_bodies_are_413_early() {
        let guard = guard_from(config());
        let host = host();
        let mut headers = speech_headers(&token("alice"));
        headers.push(("content-length", "257".to_string()));
        let exchange = send(&guard, &host, &refs(&headers), None);
        assert_refused(&host, &exchange, 413, "body_too_large");

        let body = vec![b' '; 1000];
        let exchange = send_chunked(&guard, &host, &refs(&speech_headers(&token("alice"))), Some(&body), 100);
        assert_refused(&host, &exchange, 413, "body_too_large");
        assert_eq!(
            exchange.actions.len(),
            4,
            "refused at the first chunk past the limit, not at the end"
        );
    }

    #[test]
    fn content_type_and_text_rules_give_415_and_400() {
        let guard = guard_from(config());
        let host = host();
        let mut headers = speech_headers(&token("alice"));
        headers[2].1 = "text/plain".to_string();
        let exchange = send(&guard, &host, &refs(&headers), Some(b"hello"));
        assert_refused(&host, &exchange, 415, "unsupported_media_type");

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{\"input\": ".to_vec(), "malformed_json"),
            (b"{\"input\": \"caf\xc3\"}".to_vec(), "invalid_utf8"),
            (speech_body("right\u{202e}to left"), "forbidden_character"),
            (speech_body("this is Forbidden speech"), "denied_text"),
            (speech_body(&"x".repeat(41)), "input_too_long"),
            (
                json!({"input": "hi", "voice": "nobody"}).to_string().into_bytes(),
                "unknown_voice",
            ),
            (
                json!({"input": "hi", "speed": 9.0}).to_string().into_bytes(),
                "invalid_speed",
            ),
        ];
        for (body, code) in cases {
            let exchange = send(&guard, &host, &refs(&speech_headers(&token("alice"))), Some(&body));
            let sent = assert_refused(&host, &exchange, 400, code);
            assert!(
                !sent.body.contains("Forbidden speech") && !sent.body.contains("to left"),
                "no text echoed"
            );
        }
    }

    #[test]
    fn requests_and_characters_are_limited_per_subject() {
        let guard = guard_from(config());
        let host = host();
        for _ in 0..3 {
            let mut exchange = send(
                &guard,
                &host,
                &refs(&get("/v1/models", Some(&bearer(&token("bob"))))),
                None,
            );
            assert_forwarded(&host, &exchange);
            exchange.flow.on_log(&host);
        }
        let exchange = send(
            &guard,
            &host,
            &refs(&get("/v1/models", Some(&bearer(&token("bob"))))),
            None,
        );
        let sent = assert_refused(&host, &exchange, 429, "rate_limited");
        assert_eq!(sent.header("retry-after"), Some("2"), "one request at 0.5/s");
        assert_eq!(host.counter("voxgate.rate_limited.subject_requests"), 1);
        assert_eq!(host.counter("voxgate.plan_decision.free.allowed"), 3);
        assert_eq!(host.counter("voxgate.plan_decision.free.rate_limited"), 1);
        assert_eq!(access_logged(&host), ("rate_limited".into(), "subject_requests".into(), "/v1/".into()));

        let body = speech_body(&"y".repeat(20));
        let mut exchange = send(&guard, &host, &refs(&speech_headers(&token("carol"))), Some(&body));
        assert_forwarded(&host, &exchange);
        exchange.flow.on_log(&host);
        let exchange = send(&guard, &host, &refs(&speech_headers(&token("carol"))), Some(&body));
        assert_refused(&host, &exchange, 429, "rate_limited");
        assert_eq!(host.counter("voxgate.rate_limited.subject_characters"), 1);
        let too_long = speech_body(&"z".repeat(31));
        let exchange = send(&guard, &host, &refs(&speech_headers(&token("oscar"))), Some(&too_long));
        assert_refused(&host, &exchange, 400, "text_exceeds_plan");
        assert_eq!(host.counter("voxgate.rate_limited.subject_characters"), 1, "a 400 is not a rate limit");
    }

    fn cluster_config(failure_mode: &str) -> Value {
        let mut config = config();
        config["rate_limits"]["cluster"] = json!({
            "service": "voxgate_rls", "domain": "tts", "timeout_ms": 75, "failure_mode": failure_mode,
            "local_only_seconds": 10, "limits": ["subject_requests", "subject_characters"]
        });
        config
    }

    fn encoded(response: &RateLimitResponse) -> Vec<u8> {
        response.encode_to_vec()
    }

    /// Delivers the rate-limit service's answer to the call the exchange is waiting on.
    fn cluster_answers(host: &FakeHost, exchange: &mut Exchange, grpc_status: u32, message: Option<Vec<u8>>) {
        let call = host.grpc_calls.borrow().len() as u32;
        let size = message.as_ref().map_or(0, Vec::len);
        *host.grpc_answer.borrow_mut() = message;
        exchange.flow.on_grpc_call_response(host, call, grpc_status, size);
    }

    fn ok_answer() -> Vec<u8> {
        encoded(&RateLimitResponse { overall_code: Code::Ok as i32, statuses: vec![] })
    }

    fn speech(guard: &Rc<Guard>, host: &FakeHost, subject: &str, text: &str) -> Exchange {
        send(guard, host, &refs(&speech_headers(&token(subject))), Some(&speech_body(text)))
    }

    #[test]
    fn a_locally_admitted_request_waits_for_the_cluster_and_goes_on_when_it_allows() {
        let guard = guard_from(cluster_config("deny"));
        let host = host();
        let mut exchange = speech(&guard, &host, "dora", "hello there");
        assert_eq!(exchange.actions.last(), Some(&Action::Pause), "waits for the service");
        let calls = host.grpc_calls.borrow().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            (calls[0].cluster.as_str(), calls[0].service.as_str(), calls[0].method.as_str()),
            ("voxgate_rls", "envoy.service.ratelimit.v3.RateLimitService", "ShouldRateLimit")
        );
        assert_eq!(calls[0].timeout, std::time::Duration::from_millis(75));
        let request = RateLimitRequest::decode(calls[0].message.as_slice()).unwrap();
        assert_eq!(request.domain, "tts");
        let costs: Vec<u64> = request.descriptors.iter().map(|d| d.hits_addend.as_ref().unwrap().value).collect();
        assert_eq!(costs, vec![1, 11]);
        assert!(access_logged(&host).0.is_empty(), "not decided yet");

        cluster_answers(&host, &mut exchange, 0, Some(ok_answer()));
        assert!(host.sent().is_none());
        assert_eq!(host.resumed.get(), 1);
        assert_eq!(access_logged(&host).0, "allowed");
        assert_eq!(host.counter("voxgate.cluster.allowed"), 1);
        assert_eq!(host.counter("voxgate.plan_decision.free.allowed"), 1);
        answer(&host, &mut exchange, &[(":status", "200")]);
        assert!(host.response_header("x-ratelimit-remaining").is_some(), "local headers still go out");
    }

    #[test]
    fn a_cluster_refusal_is_a_429_from_its_answer_and_takes_nothing_from_the_local_buckets() {
        let guard = guard_from(cluster_config("deny"));
        let host = host();
        let over = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![
                DescriptorStatus {
                    code: Code::Ok as i32,
                    current_limit: None,
                    limit_remaining: 2,
                    duration_until_reset: None,
                },
                DescriptorStatus {
                    code: Code::OverLimit as i32,
                    current_limit: Some(RateLimit { requests_per_unit: 30, unit: Unit::Hour as i32, name: String::new() }),
                    limit_remaining: 0,
                    duration_until_reset: Some(Duration { seconds: 1200, nanos: 0 }),
                },
            ],
        };
        // Three refusals, then three allowed: the free plan holds 3 requests locally, so the
        // refusals must have given back every token they took.
        for _ in 0..3 {
            let mut exchange = speech(&guard, &host, "erin", "twenty characters!!!");
            cluster_answers(&host, &mut exchange, 0, Some(encoded(&over)));
            let sent = assert_refused(&host, &exchange, 429, "rate_limited");
            assert_eq!(sent.header("retry-after"), Some("1200"));
            assert_eq!(sent.header("x-ratelimit-limit"), Some("30, 30;w=3600;name=\"cluster_subject_characters\""));
            assert_eq!(access_logged(&host).1, "cluster_subject_characters");
            exchange.flow.on_log(&host);
        }
        assert_eq!(host.counter("voxgate.rate_limited.cluster_subject_characters"), 3);
        assert_eq!(host.counter("voxgate.plan_decision.free.rate_limited"), 3);
        assert_eq!(host.resumed.get(), 0);
        for _ in 0..3 {
            let mut exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("erin"))))), None);
            assert_eq!(exchange.actions.last(), Some(&Action::Pause));
            cluster_answers(&host, &mut exchange, 0, Some(ok_answer()));
            assert!(host.sent().is_none(), "{:?}", host.sent());
            exchange.flow.on_log(&host);
        }
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("erin"))))), None);
        assert_refused(&host, &exchange, 429, "rate_limited");
        assert_eq!(access_logged(&host).1, "subject_requests", "the local bucket, now spent");
    }

    /// Blocks of 5 of the free plan's 100 requests.
    fn reserving_config() -> Value {
        let mut config = cluster_config("deny");
        config["rate_limits"]["plans"]["free"]["requests"] = json!({"capacity": 100, "refill_per_second": 0});
        config["rate_limits"]["cluster"]["limits"] = json!(["subject_requests"]);
        config["rate_limits"]["cluster"]["reserve"] = json!(0.05);
        config
    }

    /// The service admitted the one descriptor asked, its counter resetting in `reset_s`.
    fn counted(reset_s: i64) -> Vec<u8> {
        encoded(&RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![DescriptorStatus {
                code: Code::Ok as i32,
                current_limit: None,
                limit_remaining: 50,
                duration_until_reset: Some(Duration { seconds: reset_s, nanos: 0 }),
            }],
        })
    }

    fn hits_asked(host: &FakeHost) -> Vec<u64> {
        let calls = host.grpc_calls.borrow();
        let request = RateLimitRequest::decode(calls.last().unwrap().message.as_slice()).unwrap();
        request.descriptors.iter().map(|d| d.hits_addend.as_ref().unwrap().value).collect()
    }

    #[test]
    fn a_reserving_tier_asks_once_per_block_and_asks_again_for_the_exact_cost_when_the_block_does_not_fit() {
        let guard = guard_from(reserving_config());
        let host = host();
        let request = get("/v1/models", Some(&bearer(&token("kit"))));
        let models = || refs(&request);
        let over = encoded(&RateLimitResponse { overall_code: Code::OverLimit as i32, statuses: vec![] });

        let mut exchange = send(&guard, &host, &models(), None);
        assert_eq!(hits_asked(&host), vec![1 + 5], "its cost and a block of 5% of 100");
        cluster_answers(&host, &mut exchange, 0, Some(counted(60)));
        assert_eq!(host.resumed.get(), 1);
        exchange.flow.on_log(&host);
        for _ in 0..5 {
            let mut exchange = send(&guard, &host, &models(), None);
            assert_forwarded(&host, &exchange);
            exchange.flow.on_log(&host);
        }
        assert_eq!(host.grpc_calls.borrow().len(), 1, "the block covered five requests");
        assert_eq!(host.counter("voxgate.cluster.reserved"), 5);

        // The block no longer fits what the service has left: the request alone is asked.
        let mut exchange = send(&guard, &host, &models(), None);
        cluster_answers(&host, &mut exchange, 0, Some(over.clone()));
        assert!(host.sent().is_none(), "not refused for the block");
        assert_eq!(host.grpc_calls.borrow().len(), 3);
        assert_eq!(hits_asked(&host), vec![1]);
        cluster_answers(&host, &mut exchange, 0, Some(counted(30)));
        assert_eq!(host.resumed.get(), 2);
        exchange.flow.on_log(&host);

        // Spent: both questions refused, a 429, and the local token given back.
        let mut exchange = send(&guard, &host, &models(), None);
        assert_eq!(hits_asked(&host), vec![6], "an exact answer kept no block");
        cluster_answers(&host, &mut exchange, 0, Some(over.clone()));
        cluster_answers(&host, &mut exchange, 0, Some(over));
        assert_refused(&host, &exchange, 429, "rate_limited");
        assert_eq!(access_logged(&host).1, "cluster_subject_requests");
        assert_eq!(host.grpc_calls.borrow().len(), 5);
    }

    #[test]
    fn a_reservation_ends_with_the_services_window() {
        let guard = guard_from(reserving_config());
        let host = host();
        let request = get("/v1/models", Some(&bearer(&token("lou"))));
        let models = || refs(&request);
        let mut exchange = send(&guard, &host, &models(), None);
        cluster_answers(&host, &mut exchange, 0, Some(counted(2)));
        exchange.flow.on_log(&host);
        host.advance(2_000);
        let exchange = send(&guard, &host, &models(), None);
        assert_eq!(exchange.actions.last(), Some(&Action::Pause), "the block was counted in a window that is over");
        assert_eq!(host.grpc_calls.borrow().len(), 2);
    }

    #[test]
    fn deny_fails_closed_with_a_503_and_gives_the_local_tokens_back() {
        let guard = guard_from(cluster_config("deny"));
        let host = host();
        let hostile: [(u32, Option<Vec<u8>>); 5] = [
            (14, None),
            (4, None),
            (0, Some(vec![0xff; 9])),
            (0, Some(vec![0x0a; cluster::MAX_ANSWER_BYTES + 10])),
            (0, Some(encoded(&RateLimitResponse { overall_code: 9, statuses: vec![] }))),
        ];
        for (status, message) in hostile {
            let mut exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("finn"))))), None);
            cluster_answers(&host, &mut exchange, status, message);
            let sent = assert_refused(&host, &exchange, 503, "rate_limit_unavailable");
            assert_eq!(sent.header("retry-after"), Some("1"));
            exchange.flow.on_log(&host);
        }
        assert_eq!(host.counter("voxgate.cluster.failed"), 5);
        let warnings = host.logs.borrow().iter().filter(|(_, m)| m.contains("undecided")).count();
        assert_eq!(warnings, 1, "a failing service is logged once a second, not per request");
        host.fail_grpc_dispatch.set(Some(2));
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("finn"))))), None);
        assert_refused(&host, &exchange, 503, "rate_limit_unavailable");
        host.fail_grpc_dispatch.set(None);
        for _ in 0..3 {
            let mut exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("finn"))))), None);
            cluster_answers(&host, &mut exchange, 0, Some(ok_answer()));
            assert!(host.sent().is_none(), "the failures took nothing: {:?}", host.sent());
            exchange.flow.on_log(&host);
        }
    }

    #[test]
    fn allow_lets_requests_through_a_failed_service_and_asks_it_again_each_time() {
        let guard = guard_from(cluster_config("allow"));
        let host = host();
        for n in 1..=3 {
            let mut exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("gail"))))), None);
            assert_eq!(host.grpc_calls.borrow().len(), n);
            cluster_answers(&host, &mut exchange, 14, None);
            assert!(host.sent().is_none());
            assert_eq!(host.resumed.get(), n as u32);
            exchange.flow.on_log(&host);
        }
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("gail"))))), None);
        assert_refused(&host, &exchange, 429, "rate_limited");
        assert_eq!(access_logged(&host).1, "subject_requests", "the local buckets still count");
    }

    #[test]
    fn local_only_stops_asking_a_failed_service_for_its_pause() {
        let guard = guard_from(cluster_config("local_only"));
        let host = host();
        let mut exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("hal"))))), None);
        cluster_answers(&host, &mut exchange, 4, None);
        assert!(host.sent().is_none());
        exchange.flow.on_log(&host);
        let mut exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("hal"))))), None);
        assert_forwarded(&host, &exchange);
        assert_eq!(host.grpc_calls.borrow().len(), 1, "no call during the pause");
        exchange.flow.on_log(&host);
        host.advance(10_000);
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("hal"))))), None);
        assert_eq!(exchange.actions.last(), Some(&Action::Pause));
        assert_eq!(host.grpc_calls.borrow().len(), 2, "asked again after the pause");
    }

    #[test]
    fn a_request_abandoned_while_the_cluster_decides_gives_its_tokens_back() {
        let guard = guard_from(cluster_config("deny"));
        let host = host();
        for _ in 0..5 {
            let mut exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("ivy"))))), None);
            exchange.flow.on_log(&host);
        }
        let mut exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("ivy"))))), None);
        cluster_answers(&host, &mut exchange, 0, Some(ok_answer()));
        assert!(host.sent().is_none(), "five abandoned requests took nothing: {:?}", host.sent());
    }

    #[test]
    fn an_answer_to_another_call_is_ignored() {
        let guard = guard_from(cluster_config("deny"));
        let host = host();
        let mut exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("jo"))))), None);
        exchange.flow.on_grpc_call_response(&host, 99, 0, 0);
        assert!(host.sent().is_none());
        assert_eq!(host.resumed.get(), 0);
        cluster_answers(&host, &mut exchange, 0, Some(ok_answer()));
        assert_eq!(host.resumed.get(), 1);
    }

    /// The sidecar's answer to a forwarded request, as the flow sees its headers.
    fn answer(host: &FakeHost, exchange: &mut Exchange, headers: &[(&str, &str)]) {
        *host.response_headers.borrow_mut() = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        assert_eq!(exchange.flow.on_response_headers(host), Action::Continue);
        exchange.flow.on_log(host);
    }

    #[test]
    fn audio_seconds_are_forwarded_as_a_budget_and_charged_after_the_answer() {
        let mut config = config();
        config["rate_limits"]["plans"]["free"]["audio_seconds"] = json!({"capacity": 20, "refill_per_second": 1.0});
        config["rate_limits"]["plans"]["free"]["characters"] = json!({"capacity": 1000, "refill_per_second": 0});
        let guard = guard_from(config);
        let host = host();
        let body = speech_body("hi there");

        let mut exchange = send(&guard, &host, &refs(&speech_headers(&token("dave"))), Some(&body));
        assert_forwarded(&host, &exchange);
        let tenant = host.request_header("x-voxgate-tenant").expect("tenant");
        assert_eq!(tenant.len(), 16, "{tenant}");
        assert_eq!(host.request_header("x-voxgate-audio-budget").as_deref(), Some("20.000"));
        assert_eq!(host.request_header("x-voxgate-audio-capacity").as_deref(), Some("20"));
        assert_eq!(host.request_header("x-voxgate-max-in-flight").as_deref(), Some("2"));
        answer(&host, &mut exchange, &[(":status", "200"), ("x-voxgate-audio-seconds", "25.500")]);
        assert_eq!(host.counter("voxgate.audio_milliseconds_charged"), 25_500);
        assert_eq!(host.counter("voxgate.plan_audio_milliseconds.free"), 25_500, "counted for the plan too");

        // 5.5 s in debt at 1 s/s: refused until repaid, and told when.
        let exchange = send(&guard, &host, &refs(&speech_headers(&token("dave"))), Some(&body));
        let sent = assert_refused(&host, &exchange, 429, "rate_limited");
        assert_eq!(sent.header("retry-after"), Some("6"));
        assert_eq!(host.counter("voxgate.rate_limited.subject_audio_seconds"), 1);
        // Listing voices costs no audio, so a subject in debt still may.
        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&token("dave"))))), None);
        assert_forwarded(&host, &exchange);
        // Another subject has its own budget.
        let exchange = send(&guard, &host, &refs(&speech_headers(&token("erin"))), Some(&body));
        assert_forwarded(&host, &exchange);
        assert_ne!(host.request_header("x-voxgate-tenant"), Some(tenant.clone()));

        host.advance(6_000);
        let mut exchange = send(&guard, &host, &refs(&speech_headers(&token("dave"))), Some(&body));
        assert_forwarded(&host, &exchange);
        assert_eq!(host.request_header("x-voxgate-audio-budget").as_deref(), Some("0.500"));
        // The sidecar priced this one at 3 s: refused there, and the filter says when to retry.
        answer(&host, &mut exchange, &[(":status", "429"), ("x-voxgate-audio-required", "3.000")]);
        let retry = host.response_header("retry-after");
        assert_eq!(retry.as_deref(), Some("3"), "2.5 s missing at 1 s/s");
        assert!(host.response_header("x-ratelimit-limit").is_some_and(|v| v.contains("subject_audio_seconds")));
        assert_eq!(host.counter("voxgate.rate_limited.subject_audio_seconds"), 2);
        assert_eq!(host.counter("voxgate.audio_milliseconds_charged"), 25_500, "a refusal costs nothing");
    }

    #[test]
    fn in_flight_slots_are_released_when_the_stream_ends() {
        let guard = guard_from(config());
        let host = host();
        let body = speech_body("hi");
        let mut first = send(&guard, &host, &refs(&speech_headers(&token("dave"))), Some(&body));
        assert_forwarded(&host, &first);
        let second = send(&guard, &host, &refs(&speech_headers(&token("dave"))), Some(&body));
        assert_forwarded(&host, &second);
        let third = send(&guard, &host, &refs(&speech_headers(&token("dave"))), Some(&body));
        assert_refused(&host, &third, 429, "too_many_in_flight");
        assert_eq!(host.counter("voxgate.rate_limited.subject_in_flight"), 1);
        first.flow.on_log(&host);
        let mut refused = third;
        refused.flow.on_log(&host);
        let fourth = send(&guard, &host, &refs(&speech_headers(&token("dave"))), Some(&body));
        assert_forwarded(&host, &fourth);
    }

    #[test]
    fn shadow_mode_counts_and_forwards() {
        let mut config = config();
        config["rate_limits"]["shadow"] = json!(true);
        let guard = guard_from(config);
        let host = host();
        for _ in 0..5 {
            let mut exchange = send(
                &guard,
                &host,
                &refs(&get("/v1/models", Some(&bearer(&token("erin"))))),
                None,
            );
            assert_forwarded(&host, &exchange);
            exchange.flow.on_log(&host);
        }
        assert_eq!(host.counter("voxgate.shadow_refused.subject_requests"), 2);
        assert_eq!(host.counter("voxgate.decision.allowed"), 5);
    }

    #[test]
    fn coqui_get_validates_the_query() {
        let guard = guard_from(config());
        let host = host();
        let auth = bearer(&token("frank"));
        let exchange = send(
            &guard,
            &host,
            &refs(&get("/api/tts?text=Hello%20world&voice=joe", Some(&auth))),
            None,
        );
        assert_forwarded(&host, &exchange);
        assert_eq!(host.counter("voxgate.characters_admitted"), 11);
        let exchange = send(&guard, &host, &refs(&get("/api/tts?speaker_id=1", Some(&auth))), None);
        assert_refused(&host, &exchange, 400, "missing_field");
    }

    #[test]
    fn get_with_a_body_is_refused() {
        let guard = guard_from(config());
        let host = host();
        let auth = bearer(&token("kim"));
        let exchange = send(
            &guard,
            &host,
            &refs(&get("/api/tts?text=Hi", Some(&auth))),
            Some(b"voice=other"),
        );
        assert_refused(&host, &exchange, 400, "unexpected_body");

        let exchange = send(&guard, &host, &refs(&get("/v1/models", Some(&auth))), Some(b"{}"));
        assert_refused(&host, &exchange, 400, "unexpected_body");
        let exchange = send(&guard, &host, &refs(&get("/healthz", None)), Some(b"x"));
        assert_refused(&host, &exchange, 400, "unexpected_body");
    }

    #[test]
    fn trailers_end_a_body_that_did_not_say_so() {
        let guard = guard_from(config());
        let host = host();
        host.request(&refs(&speech_headers(&token("lee"))));
        let body = speech_body("Hello.");
        *host.request_body.borrow_mut() = body.clone();
        let mut flow = RequestFlow::new(Some(guard.clone()));
        assert_eq!(flow.on_request_headers(&host, false), Action::Pause);
        assert_eq!(flow.on_request_body(&host, body.len(), false), Action::Pause);
        assert_eq!(flow.on_request_trailers(&host), Action::Continue);
        assert!(host.sent().is_none());
        assert_eq!(host.counter("voxgate.characters_admitted"), 6);
    }

    #[test]
    fn coqui_post_reads_the_body_or_the_query_never_both_nor_headers() {
        let guard = guard_from(config());
        let host = host();
        let auth = bearer(&token("grace"));
        let post = |path: &'static str| {
            vec![
                (":method", "POST".to_string()),
                (":path", path.to_string()),
                ("content-type", "application/x-www-form-urlencoded".to_string()),
                ("authorization", auth.clone()),
            ]
        };
        let exchange = send(&guard, &host, &refs(&post("/api/tts")), Some(b"text=Hi+there"));
        assert_forwarded(&host, &exchange);
        let mut no_body = post("/api/tts?text=Hello");
        no_body.remove(2);
        let exchange = send(&guard, &host, &refs(&no_body), None);
        assert_forwarded(&host, &exchange);
        let exchange = send(
            &guard,
            &host,
            &refs(&post("/api/tts?text=Hello")),
            Some(b"text=Hi+there"),
        );
        assert_refused(&host, &exchange, 400, "ambiguous_parameters");
        let mut with_header = post("/api/tts");
        with_header.push(("text", "unchecked text".to_string()));
        let exchange = send(&guard, &host, &refs(&with_header), Some(b"text=Hi"));
        assert_refused(&host, &exchange, 400, "unsupported_parameter_source");
    }

    #[test]
    fn host_failures_refuse_the_request_with_500() {
        let guard = guard_from(config());
        let host = host();
        host.fail_shared_data.set(true);
        let exchange = send(
            &guard,
            &host,
            &refs(&get("/v1/models", Some(&bearer(&token("heidi"))))),
            None,
        );
        assert_refused(&host, &exchange, 500, "internal_error");
        host.fail_shared_data.set(false);
        host.fail_headers.set(true);
        let exchange = send(&guard, &host, &[], None);
        assert_refused(&host, &exchange, 500, "internal_error");
        assert!(host
            .logs
            .borrow()
            .iter()
            .any(|(_, line)| line.contains("internal error")));
    }

    #[test]
    fn rejection_log_lines_carry_no_token_and_no_text() {
        let guard = guard_from(config());
        let host = host();
        let token = token("ivan");
        let body = speech_body("a forbidden secret sentence");
        send(&guard, &host, &refs(&speech_headers(&token)), Some(&body));
        let bad = format!("{token}x");
        send(&guard, &host, &refs(&get("/v1/models", Some(&bearer(&bad)))), None);
        let logs = host.logs.borrow();
        assert_eq!(logs.len(), 2);
        assert!(logs[0]
            .1
            .starts_with("voxgate: refused reason=denied_text status=400 route=/v1/audio/speech limit=- subject=ivan"));
        for (_, line) in logs.iter() {
            assert!(
                !line.contains(&token[..20]) && !line.contains("secret sentence"),
                "{line}"
            );
        }
    }

    #[test]
    fn paths_that_could_be_read_two_ways_are_refused() {
        let guard = guard_from(config());
        let host = host();
        let exchange = send(
            &guard,
            &host,
            &refs(&get("/v1/audio/%73peech", Some(&bearer(&token("judy"))))),
            None,
        );
        assert_refused(&host, &exchange, 400, "invalid_path");
    }
}
