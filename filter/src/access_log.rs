//! What the filter tells Envoy's access log about a request it decided: the decision, the
//! limit that refused it, the matched route and a path that cannot carry the user's text.
//!
//! Each value goes into the request's filter state (`wasm.voxgate_*`), which the bootstrap's
//! access-log format reads with `%FILTER_STATE(wasm.voxgate_decision:PLAIN)%` and so on. The
//! access log is never a reason to refuse a request, so a failing host call is logged at
//! debug and dropped.

use proxy_wasm::types::LogLevel;

use crate::host::Host;

/// The names under which the values are stored (Envoy prefixes them with `wasm.`).
pub const DECISION: &str = "voxgate_decision";
pub const LIMIT: &str = "voxgate_limit";
pub const ROUTE: &str = "voxgate_route";
pub const PATH: &str = "voxgate_path";

/// What is logged for a value that does not apply (no limit, no matched route).
const NONE: &str = "-";

/// The access-log view of one request's outcome.
pub struct Entry<'a> {
    /// `allowed`, or the refusal's reason code (`rate_limited`, `token_expired`, …).
    pub decision: &'a str,
    /// The rate limit that refused the request (`subject_characters`, `auth_failures`, …).
    pub limit: Option<&'a str>,
    /// The prefix of the route the path matched.
    pub route: Option<&'a str>,
    /// The request's `:path`, as the client sent it (see [`loggable_path`]).
    pub path: &'a str,
}

pub fn record(host: &dyn Host, entry: &Entry) {
    let values = [
        (DECISION, entry.decision),
        (LIMIT, entry.limit.unwrap_or(NONE)),
        (ROUTE, entry.route.unwrap_or(NONE)),
        (PATH, loggable_path(entry.path)),
    ];
    for (name, value) in values {
        if let Err(e) = host.set_filter_state(name, value) {
            host.log(
                LogLevel::Debug,
                &format!("voxgate: access-log field {name} not set: {e}"),
            );
        }
    }
}

/// `path` without its query and without anything after an encoded `?` (`%3F`): a Coqui
/// client's `/api/tts?text=…` carries the text in the query, and `/api/tts%3Ftext=…` (refused
/// as an unknown route) would carry it in what Envoy calls the path.
pub fn loggable_path(path: &str) -> &str {
    let bytes = path.as_bytes();
    let end = bytes
        .iter()
        .enumerate()
        .find(|&(i, &b)| {
            b == b'?'
                || (b == b'%'
                    && bytes.get(i + 1) == Some(&b'3')
                    && matches!(bytes.get(i + 2), Some(b'f' | b'F')))
        })
        .map_or(bytes.len(), |(i, _)| i);
    // `end` is at an ASCII byte or the end, so it is a char boundary.
    path.get(..end).unwrap_or(NONE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;

    #[test]
    fn the_path_loses_its_query_and_anything_after_an_encoded_question_mark() {
        let cases = [
            ("/api/tts?text=secret", "/api/tts"),
            ("/api/tts%3Ftext=secret", "/api/tts"),
            ("/api/tts%3ftext=secret?x=1", "/api/tts"),
            ("/v1/audio/speech/probe-1", "/v1/audio/speech/probe-1"),
            ("/a%3", "/a%3"),
            ("/a%3E%3F", "/a%3E"),
            ("/é?x", "/é"),
            ("", ""),
        ];
        for (path, logged) in cases {
            assert_eq!(loggable_path(path), logged, "{path}");
        }
    }

    #[test]
    fn every_field_is_stored_with_a_dash_for_what_does_not_apply() {
        let host = FakeHost::new();
        record(
            &host,
            &Entry {
                decision: "rate_limited",
                limit: Some("subject_characters"),
                route: None,
                path: "/x?y",
            },
        );
        let state = host.filter_state.borrow();
        assert_eq!(state[DECISION], "rate_limited");
        assert_eq!(state[LIMIT], "subject_characters");
        assert_eq!(state[ROUTE], "-");
        assert_eq!(state[PATH], "/x");
    }
}
