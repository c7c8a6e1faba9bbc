//! The sidecar's HTTP request handling in-process, through its real router
//! (`api::router`): the input is a raw request (`METHOD /target` line, header lines, an
//! empty line, the body) for the OpenAI and Coqui routes and everything around them. No
//! voice is loaded, so a request that passes every check ends at the 503 `not_ready`, and
//! everything before synthesis runs: body limit, content type, JSON and form parsing, field
//! types and ranges, Coqui's header/query/body precedence.
//!
//! Judged: no 500 and no other 5xx than 503 with `Retry-After`; every error has the OpenAI
//! error body and repeats no token-like word of the request; the speech routes answer only
//! 400, 405, 413, 415 or 503.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use voxgate_fuzz::oracle::token_like;
use voxgate_sidecar::api::{self, AppState, Limits};
use voxgate_sidecar::scheduler::{PlanWeights, Scheduler};

/// Small, so that `input_too_long` and the 413 are reachable within the fuzzer's input sizes.
const MAX_INPUT_CHARS: usize = 64;
const MAX_BODY_BYTES: usize = 2048;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let metrics =
            voxgate_sidecar::metrics::install().expect("the metrics recorder installs once");
        let limits = Limits {
            text: voxgate_rules::TextLimits {
                max_chars: MAX_INPUT_CHARS,
                allow_control_chars: false,
            },
            max_body_bytes: MAX_BODY_BYTES,
            request_timeout: Duration::from_secs(5),
            sentence_gap: Duration::ZERO,
            retry_after_secs: 1,
            max_request_audio_seconds: 300.0,
            min_request_audio_seconds: 1.0,
            max_utterance_seconds: 12.0,
        };
        api::router(AppState::new(
            limits,
            Scheduler::new(1, 4),
            PlanWeights::default(),
            metrics,
        ))
    })
}

/// The request the input describes, or `None` when no HTTP server would have parsed it.
fn request(data: &[u8]) -> Option<Request<Body>> {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n');
    let (method, target) = lines.next()?.split_once(' ')?;
    let target = if target.starts_with('/') {
        target.to_string()
    } else {
        format!("/{target}")
    };
    let mut builder = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).ok()?)
        .uri(target);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(value.trim().as_bytes()).ok()?;
        builder = builder.header(name, value);
    }
    builder.body(Body::from(body.to_vec())).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(request) = request(data) else { return };
    let speech_route = matches!(request.uri().path(), "/v1/audio/speech" | "/api/tts");
    let hidden: Vec<String> = String::from_utf8_lossy(data)
        .split_whitespace()
        .filter(|w| token_like(w))
        .map(str::to_string)
        .collect();

    let (status, retry_after, body) = runtime().block_on(async {
        let response = router()
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a buffered answer")
            .to_bytes();
        (status, retry_after, body)
    });

    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "answered {status} to a client's request"
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let seconds = retry_after
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(
            seconds.is_some(),
            "a 503 without a whole-second Retry-After"
        );
    }
    if speech_route {
        assert!(
            [400, 405, 413, 415, 503].contains(&status.as_u16()),
            "a speech route answered {status}"
        );
    }
    if status.is_client_error() || status.is_server_error() {
        let error: serde_json::Value =
            serde_json::from_slice(&body).expect("an error answer is JSON");
        let message = error["error"]["message"]
            .as_str()
            .expect("the error has a message");
        assert!(error["error"]["code"].is_string() && error["error"]["type"].is_string());
        for word in &hidden {
            assert!(
                !message.contains(word.as_str()),
                "the error message repeats the request: {message:?}"
            );
        }
    }
});
