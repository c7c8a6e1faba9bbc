//! Answering a refused request: the local response, its log line and its decision counter.
//!
//! The log line names the reason, status, route, subject and client address; the token and
//! the submitted text never reach it (a `Rejection` carries neither).
//!
//! Every answer the filter sends carries Envoy response code details `voxgate.<code>`, so the
//! access log shows which refusal it was, and Envoy's `local_reply_config` can leave the
//! filter's JSON answers alone while it rewrites Envoy's own plain-text ones.

use proxy_wasm::types::LogLevel;

use crate::decision::Rejection;
use crate::host::{Host, HostError};
use crate::metrics::Metrics;

/// What is known about the request when it is refused, for the log line.
pub struct RequestLabels<'a> {
    pub route: &'a str,
    /// The rate limit that refused the request, if one did.
    pub limit: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub client_address: &'a str,
}

/// Sends `rejection` as the answer to the request, counts it and (when `log`) logs it.
pub fn reject(
    host: &dyn Host,
    metrics: &Metrics,
    rejection: &Rejection,
    labels: &RequestLabels,
    log: bool,
) -> Result<(), HostError> {
    metrics.decision(host, rejection.code.as_str());
    if log {
        host.log(
            LogLevel::Info,
            &format!(
                "voxgate: refused reason={} status={} route={} limit={} subject={} client={}",
                rejection.code,
                rejection.status(),
                labels.route,
                labels.limit.unwrap_or("-"),
                labels.subject.unwrap_or("-"),
                labels.client_address,
            ),
        );
    }
    send(host, rejection)
}

/// Prefix of the response code details of every answer the filter sends.
const DETAILS_PREFIX: &str = "voxgate.";

/// The local response for `rejection`: status, OpenAI error JSON, its extra headers.
pub fn send(host: &dyn Host, rejection: &Rejection) -> Result<(), HostError> {
    let body = rejection.body();
    let details = format!("{DETAILS_PREFIX}{}", rejection.code);
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json"), ("cache-control", "no-store")];
    headers.extend(rejection.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    host.send_response(rejection.status(), &details, &headers, body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Code;
    use crate::testing::FakeHost;

    #[test]
    fn rejection_becomes_json_response_log_line_and_counter() {
        let host = FakeHost::new();
        let metrics = Metrics::new();
        let rejection = Rejection::new(Code::RateLimited, "too many requests").with_header("retry-after", "3");
        let labels = RequestLabels {
            route: "/v1/audio/speech",
            limit: Some("subject_requests"),
            subject: Some("alice"),
            client_address: "203.0.113.7",
        };
        reject(&host, &metrics, &rejection, &labels, true).unwrap();

        let sent = host.sent().unwrap();
        assert_eq!(sent.status, 429);
        assert_eq!(sent.details, "voxgate.rate_limited");
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.header("retry-after"), Some("3"));
        assert_eq!(sent.code(), "rate_limited");
        assert_eq!(host.counter("voxgate.decision.rate_limited"), 1);
        let logs = host.logs.borrow();
        assert_eq!(logs.len(), 1);
        assert_eq!(
            logs[0].1,
            "voxgate: refused reason=rate_limited status=429 route=/v1/audio/speech limit=subject_requests subject=alice client=203.0.113.7"
        );
    }
}
