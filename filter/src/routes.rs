//! Route table: which API a request path belongs to, whether it needs a token, and which
//! methods it accepts. The first matching prefix wins, matched on whole path segments; a path
//! matching no route is refused, and so is a path beneath a speech route (`/api/tts/`,
//! `/v1/audio/speech/x`): a speech API is one resource, which the sidecar serves only at its
//! own path, so the filter must not admit, and charge, what would then be a 404.

use serde::Deserialize;
use voxgate_rules::SpeechApi;

use crate::decision::{Code, Rejection};
use crate::error::ConfigError;

/// The API a route speaks (`api` in the route configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Api {
    /// `POST /v1/audio/speech`, OpenAI's speech API.
    #[serde(rename = "openai_speech")]
    OpenAiSpeech,
    /// `GET|POST /api/tts`, Coqui's TTS server API.
    #[serde(rename = "coqui_tts")]
    CoquiTts,
    /// Everything else (voices, models, health): no body or text to validate.
    #[serde(rename = "metadata")]
    Metadata,
}

impl Api {
    /// The body rules of a speech API; `None` for metadata routes.
    pub fn speech(self) -> Option<SpeechApi> {
        match self {
            Api::OpenAiSpeech => Some(SpeechApi::OpenAi),
            Api::CoquiTts => Some(SpeechApi::Coqui),
            Api::Metadata => None,
        }
    }
}

/// One entry of the `routes` configuration list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, starting with `/`.
    pub prefix: String,
    /// `openai_speech`, `coqui_tts` or `metadata`.
    pub api: Api,
    /// Whether a verified token is required.
    pub auth: bool,
    /// What admitting a request spends; speech routes always spend the plan's budget,
    /// metadata routes spend nothing unless configured otherwise.
    #[serde(default)]
    pub budget: Option<Budget>,
}

/// `budget` of a route: which rate limits a request on it is admitted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// The caller's plan (or the anonymous limits) and the global limits: one request.
    Plan,
    /// No rate limit: health checks and listings must never be refused for the caller's
    /// speech budget, nor spend it.
    None,
}

/// Methods a route accepts; anything else is a 405 from the filter.
fn methods(api: Api) -> &'static [&'static str] {
    match api {
        Api::OpenAiSpeech => &["POST"],
        Api::CoquiTts => &["GET", "POST"],
        Api::Metadata => &["GET", "HEAD"],
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub api: Api,
    pub auth: bool,
    pub budget: Budget,
}

impl Route {
    /// Whether `path` is under this route's prefix, at a segment boundary: `/healthz` claims
    /// `/healthz` and `/healthz/…` but not `/healthzz`, which would otherwise reach the
    /// upstream under the prefix's (perhaps anonymous) rules as a different resource.
    fn claims(&self, path: &str) -> Claim {
        match path.strip_prefix(self.prefix.as_str()) {
            Some("") => Claim::Serves,
            Some(rest) if self.prefix.ends_with('/') || rest.starts_with('/') => {
                if self.is_speech() {
                    Claim::Refuses
                } else {
                    Claim::Serves
                }
            }
            _ => Claim::Elsewhere,
        }
    }

    /// Speech routes carry text and cost characters; metadata routes do not.
    pub fn is_speech(&self) -> bool {
        self.api != Api::Metadata
    }

    pub fn check_method(&self, method: &str) -> Result<(), Rejection> {
        let allowed = methods(self.api);
        if allowed.contains(&method) {
            Ok(())
        } else {
            Err(Rejection::new(
                Code::MethodNotAllowed,
                format!("method {method} is not allowed on this route"),
            )
            .with_header("allow", allowed.join(", ")))
        }
    }
}

/// What a route makes of a path.
enum Claim {
    Serves,
    /// Beneath a speech route: no route serves it.
    Refuses,
    /// Not under this route's prefix.
    Elsewhere,
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

/// More routes than this is a configuration mistake, not a deployment.
const MAX_ROUTES: usize = 64;

impl RouteTable {
    pub fn compile(configs: Vec<RouteConfig>) -> Result<RouteTable, ConfigError> {
        if configs.is_empty() {
            return Err(ConfigError::new("routes", "at least one route is required"));
        }
        if configs.len() > MAX_ROUTES {
            return Err(ConfigError::new(
                "routes",
                format!("at most {MAX_ROUTES} routes are allowed"),
            ));
        }
        let mut routes = Vec::with_capacity(configs.len());
        for (i, config) in configs.into_iter().enumerate() {
            let field = format!("routes[{i}].prefix");
            if !config.prefix.starts_with('/') {
                return Err(ConfigError::new(field, "must start with `/`"));
            }
            if let Some(bad) = unsafe_path_reason(&config.prefix) {
                return Err(ConfigError::new(field, format!("must be a plain path ({bad})")));
            }
            if routes.iter().any(|r: &Route| r.prefix == config.prefix) {
                return Err(ConfigError::new(field, "duplicate prefix"));
            }
            let budget = match (config.api, config.budget) {
                (Api::Metadata, budget) => budget.unwrap_or(Budget::None),
                (_, None | Some(Budget::Plan)) => Budget::Plan,
                (_, Some(Budget::None)) => {
                    return Err(ConfigError::new(
                        format!("routes[{i}].budget"),
                        "a speech route always spends the plan's budget",
                    ))
                }
            };
            routes.push(Route {
                prefix: config.prefix,
                api: config.api,
                auth: config.auth,
                budget,
            });
        }
        Ok(RouteTable { routes })
    }

    pub fn any_auth(&self) -> bool {
        self.routes.iter().any(|r| r.auth)
    }

    /// The route for a `:path` header (query string ignored).
    pub fn find(&self, path: &str) -> Result<&Route, Rejection> {
        let path = path_only(path);
        if let Some(reason) = unsafe_path_reason(path) {
            return Err(Rejection::new(
                Code::InvalidPath,
                format!("the request path is not a plain path ({reason})"),
            ));
        }
        for route in &self.routes {
            match route.claims(path) {
                Claim::Serves => return Ok(route),
                Claim::Refuses => break,
                Claim::Elsewhere => {}
            }
        }
        Err(voxgate_rules::error::unknown_route().into())
    }
}

/// The path without its query string.
pub fn path_only(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// The query string of a `:path`, empty when there is none.
pub fn query(path: &str) -> &str {
    path.split_once('?').map_or("", |(_, q)| q)
}

/// Why a path could be read differently by the filter and by the upstream, if it could.
/// Percent-escapes, dot segments and empty segments are how a request would match one route
/// here and be served as another behind the filter, so the filter refuses them.
fn unsafe_path_reason(path: &str) -> Option<&'static str> {
    if path.contains('%') {
        return Some("percent-encoded characters");
    }
    if path.contains('\\') {
        return Some("backslash");
    }
    if path.contains("//") {
        return Some("empty segment");
    }
    if path.split('/').any(|segment| segment == "." || segment == "..") {
        return Some("dot segment");
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'#') {
        return Some("control character, space or fragment");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let configs: Vec<RouteConfig> = serde_json::from_str(
            r#"[
                {"prefix": "/v1/audio/speech", "api": "openai_speech", "auth": true},
                {"prefix": "/api/tts", "api": "coqui_tts", "auth": true},
                {"prefix": "/v1/", "api": "metadata", "auth": true},
                {"prefix": "/healthz", "api": "metadata", "auth": false}
            ]"#,
        )
        .unwrap();
        RouteTable::compile(configs).unwrap()
    }

    #[test]
    fn first_matching_prefix_wins() {
        let t = table();
        assert_eq!(t.find("/v1/audio/speech").unwrap().api, Api::OpenAiSpeech);
        assert_eq!(t.find("/v1/audio/voices").unwrap().api, Api::Metadata);
        assert_eq!(t.find("/api/tts?text=hi%20there").unwrap().api, Api::CoquiTts);
        assert!(!t.find("/healthz").unwrap().auth);
    }

    #[test]
    fn prefixes_match_whole_segments_only() {
        let t = table();
        assert!(!t.find("/healthz").unwrap().auth);
        assert!(!t.find("/healthz/live").unwrap().auth);
        // A prefix ending in `/` already ends a segment.
        assert_eq!(t.find("/v1/models").unwrap().api, Api::Metadata);
        // `/v1/audio/speechx` is not the speech route; it still falls under `/v1/`.
        assert_eq!(t.find("/v1/audio/speechx").unwrap().api, Api::Metadata);
        for path in ["/healthzz", "/healthz.json", "/healthz-admin", "/api/ttsx", "/api/tts2?text=hi"] {
            let e = t.find(path).unwrap_err();
            assert_eq!((e.status(), e.code.as_str()), (404, "unknown_route"), "{path}");
        }
    }

    #[test]
    fn nothing_beneath_a_speech_route_is_served() {
        let t = table();
        // Not even by the `/v1/` route that would otherwise take `/v1/audio/speech/`.
        for path in ["/api/tts/", "/api/tts/x?text=hi", "/v1/audio/speech/", "/v1/audio/speech/more/deeper"] {
            let e = t.find(path).unwrap_err();
            assert_eq!((e.status(), e.code.as_str()), (404, "unknown_route"), "{path}");
        }
    }

    #[test]
    fn unknown_path_is_404() {
        let e = table().find("/admin").unwrap_err();
        assert_eq!((e.status(), e.code.as_str()), (404, "unknown_route"));
    }

    #[test]
    fn ambiguous_paths_are_400() {
        let t = table();
        for path in [
            "/v1/audio/%73peech",
            "/v1/x/../audio/speech",
            "/v1//audio/speech",
            "/v1/./models",
            "/v1/a\\b",
        ] {
            let e = t.find(path).unwrap_err();
            assert_eq!((e.status(), e.code.as_str()), (400, "invalid_path"), "{path}");
        }
    }

    #[test]
    fn method_check_names_the_allowed_methods() {
        let t = table();
        let speech = t.find("/v1/audio/speech").unwrap();
        assert!(speech.check_method("POST").is_ok());
        let e = speech.check_method("GET").unwrap_err();
        assert_eq!((e.status(), e.code.as_str()), (405, "method_not_allowed"));
        assert_eq!(e.headers, vec![("allow".to_string(), "POST".to_string())]);
        let coqui = t.find("/api/tts").unwrap();
        assert!(coqui.check_method("GET").is_ok() && coqui.check_method("POST").is_ok());
        assert_eq!(coqui.check_method("PUT").unwrap_err().headers[0].1, "GET, POST");
        assert!(t.find("/v1/models").unwrap().check_method("POST").is_err());
    }

    #[test]
    fn bad_route_configs_name_the_field() {
        let bad = |json: &str| {
            RouteTable::compile(serde_json::from_str(json).unwrap())
                .unwrap_err()
                .field
        };
        assert_eq!(bad("[]"), "routes");
        assert_eq!(
            bad(r#"[{"prefix": "v1", "api": "metadata", "auth": true}]"#),
            "routes[0].prefix"
        );
        assert_eq!(
            bad(
                r#"[{"prefix": "/a", "api": "metadata", "auth": true}, {"prefix": "/a", "api": "metadata", "auth": false}]"#
            ),
            "routes[1].prefix"
        );
        assert_eq!(
            bad(r#"[{"prefix": "/a", "api": "openai_speech", "auth": true, "budget": "none"}]"#),
            "routes[0].budget"
        );
    }

    #[test]
    fn metadata_routes_spend_nothing_unless_told_to() {
        let t = table();
        assert_eq!(t.find("/healthz").unwrap().budget, Budget::None);
        assert_eq!(t.find("/v1/models").unwrap().budget, Budget::None);
        assert_eq!(t.find("/api/tts").unwrap().budget, Budget::Plan);
        let configs = serde_json::from_str(r#"[{"prefix": "/v1/", "api": "metadata", "auth": true, "budget": "plan"}]"#);
        assert_eq!(RouteTable::compile(configs.unwrap()).unwrap().find("/v1/models").unwrap().budget, Budget::Plan);
    }
}
