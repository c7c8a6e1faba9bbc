//! Plugin configuration: the JSON given to the filter in Envoy's plugin `configuration`,
//! parsed and checked once in `on_configure`, then compiled into the objects the request
//! flow uses. Each section is parsed by the serde type of the module that owns it; every
//! error names the offending field by its JSON path.

use proxy_wasm::types::LogLevel;
use serde::Deserialize;

use crate::auth::{token_headers, AuthConfig, Authenticator};
use crate::error::ConfigError;
use crate::ratelimit::{BucketTable, RateLimitConfig, RateLimiter};
use crate::routes::{RouteConfig, RouteTable};
use crate::validate::{TextRules, TextValidator};


/// The whole plugin configuration, as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub routes: Vec<RouteConfig>,
    /// Required as soon as one route has `auth: true`.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub text: TextRules,
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
    /// Forward the client's token to the upstream (off: the token header is removed).
    #[serde(default)]
    pub forward_token: bool,
    /// Hold a request's headers until its body is checked (the default). Off where Envoy turns
    /// a pause at the headers into one that also withholds the body (an Istio `WasmPlugin`):
    /// then only the body is held, and a buffer filter after this one holds the headers.
    #[serde(default = "hold_headers_by_default")]
    pub hold_headers_for_body: bool,
    #[serde(default)]
    pub log_level: LogLevelName,
}

fn hold_headers_by_default() -> bool {
    true
}

/// The least severe level the filter logs at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevelName {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevelName {
    pub fn level(self) -> LogLevel {
        match self {
            LogLevelName::Trace => LogLevel::Trace,
            LogLevelName::Debug => LogLevel::Debug,
            LogLevelName::Info => LogLevel::Info,
            LogLevelName::Warn => LogLevel::Warn,
            LogLevelName::Error => LogLevel::Error,
        }
    }
}

/// The configuration turned into the objects one VM runs with.
pub struct CompiledConfig {
    pub routes: RouteTable,
    /// Present whenever a route needs a token.
    pub auth: Option<Authenticator>,
    /// Headers that may carry the token, removed before forwarding unless `forward_token`.
    pub token_headers: Vec<String>,
    /// Failed authentications per client address, checked before any token work.
    pub failed_auth: Option<BucketTable>,
    pub text: TextValidator,
    pub rate_limits: RateLimiter,
    pub forward_token: bool,
    pub hold_headers_for_body: bool,
    pub log_level: LogLevel,
}

impl CompiledConfig {
    /// Whether a message at `level` is logged under the configured `log_level`.
    pub fn logs(&self, level: LogLevel) -> bool {
        level as u32 >= self.log_level as u32
    }
}

/// A larger configuration is a mistake (or an attack on the config pipeline), not a deployment.
const MAX_CONFIG_BYTES: usize = 1 << 20;

impl FilterConfig {
    /// Parses the plugin configuration bytes.
    pub fn parse(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new("configuration", "the plugin configuration is empty"));
        }
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::new(
                "configuration",
                format!("larger than {MAX_CONFIG_BYTES} bytes"),
            ));
        }
        let mut json = serde_json::Deserializer::from_slice(bytes);
        let config: FilterConfig = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            parse_error(&path, &inner)
        })?;
        json.end()
            .map_err(|e| ConfigError::new("configuration", format!("trailing characters: {e}")))?;
        Ok(config)
    }

    /// Checks every section and builds the runtime objects.
    pub fn compile(self) -> Result<CompiledConfig, ConfigError> {
        let routes = RouteTable::compile(self.routes)?;
        let slots = self.rate_limits.slots;
        let rate_limits = self.rate_limits.compile()?;
        let text = self.text.compile()?;
        let (auth, token_headers, failed_auth) = match self.auth {
            Some(auth) => {
                let section = auth.compile_section(slots)?;
                (Some(section.authenticator), section.token_headers, section.failed_auth)
            }
            None if routes.any_auth() => {
                return Err(ConfigError::new("auth", "required because a route has `auth: true`"));
            }
            None => (None, token_headers(None), None),
        };
        Ok(CompiledConfig {
            routes,
            auth,
            token_headers,
            failed_auth,
            text,
            rate_limits,
            forward_token: self.forward_token,
            hold_headers_for_body: self.hold_headers_for_body,
            log_level: self.log_level.level(),
        })
    }
}

/// Parses and compiles in one step, without the VM's environment.
pub fn load(bytes: &[u8]) -> Result<CompiledConfig, ConfigError> {
    FilterConfig::parse(bytes)?.compile()
}

/// Parses and compiles as `on_configure` does: the secrets the configuration names (HMAC keys
/// given as `k_env`, the API keys' pepper) are read from the VM's environment through `env`.
pub fn load_with_env(bytes: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<CompiledConfig, ConfigError> {
    let mut config = FilterConfig::parse(bytes)?;
    if let Some(auth) = config.auth.as_mut() {
        auth.read_secret_keys(env)?;
    }
    let mut compiled = config.compile()?;
    if let Some(auth) = compiled.auth.as_mut() {
        auth.load_secrets(env)?;
    }
    Ok(compiled)
}

/// Names the field of a serde error: its path, extended by the field name for missing fields
/// (serde reports those at the enclosing object; an unknown field's path already ends in it).
fn parse_error(path: &str, error: &serde_json::Error) -> ConfigError {
    let message = error.to_string();
    let message = message.split(" at line ").next().unwrap_or(&message).to_string();
    let named = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    if named == Some("") {
        // A member named "": its path segment is empty, so name it `""`.
        let parent = path.strip_suffix('.').unwrap_or(path);
        let field = match parent {
            "" | "." => "\"\"".to_string(),
            parent => format!("{parent}.\"\""),
        };
        return ConfigError::new(field, message);
    }
    let already_named = |name: &str| path == name || path.ends_with(&format!(".{name}"));
    let field = match (path, named) {
        (".", Some(name)) => name.to_string(),
        (".", None) => "configuration".to_string(),
        (path, Some(name)) if !already_named(name) => format!("{path}.{name}"),
        (path, _) => path.to_string(),
    };
    ConfigError::new(field, message)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn minimal() -> Value {
        json!({
            "routes": [{"prefix": "/v1/", "api": "metadata", "auth": true}],
            "auth": {"providers": [{"name": "dev", "issuer": "https://issuer.test", "audiences": ["voxgate"],
                                    "jwks": {"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}}]}
        })
    }

    fn field_of(config: &Value) -> String {
        match load(config.to_string().as_bytes()) {
            Ok(_) => panic!("configuration accepted: {config}"),
            Err(e) => e.field,
        }
    }

    #[test]
    fn a_minimal_configuration_compiles_with_defaults() {
        let compiled = load(minimal().to_string().as_bytes()).unwrap();
        assert!(!compiled.forward_token);
        assert_eq!(compiled.token_headers, vec!["authorization".to_string()]);
        assert!(
            compiled.failed_auth.is_some(),
            "the failed-auth bucket is on by default"
        );
        assert!(compiled.logs(LogLevel::Info) && !compiled.logs(LogLevel::Debug));
    }

    #[test]
    fn errors_name_the_json_path_of_the_field() {
        let with = |path: &[&str], value: Value| {
            let mut config = minimal();
            let mut node = &mut config;
            for part in &path[..path.len() - 1] {
                node = match part.parse::<usize>() {
                    Ok(i) => &mut node[i],
                    Err(_) => &mut node[*part],
                };
            }
            node[path[path.len() - 1]] = value;
            config
        };
        let cases = [
            (with(&["frobnicate"], json!(1)), "frobnicate"),
            (with(&[""], json!(1)), "\"\""),
            (with(&["routes", "0", ""], json!(1)), "routes[0].\"\""),
            (with(&["forward_token"], json!("yes")), "forward_token"),
            (with(&["log_level"], json!("loud")), "log_level"),
            (with(&["routes", "0", "prefix"], json!(7)), "routes[0].prefix"),
            (with(&["routes", "0", "prefix"], json!("v1")), "routes[0].prefix"),
            (with(&["routes", "0", "api"], json!("elevenlabs")), "routes[0].api"),
            (with(&["routes", "0", "extra"], json!(true)), "routes[0].extra"),
            (with(&["text"], json!({"max_chars": 0})), "text.max_chars"),
            (
                with(
                    &["rate_limits"],
                    json!({"plans": {"free": {"requests": {"capacity": "ten", "refill_per_second": 1}}}}),
                ),
                "rate_limits.plans.free.requests.capacity",
            ),
            (
                with(&["rate_limits"], json!({"plans": {"free": {"requestz": {}}}})),
                "rate_limits.plans.free.requestz",
            ),
            (
                with(&["auth", "providers", "0", "issuer"], json!(42)),
                "auth.providers[0].issuer",
            ),
            (
                with(&["auth", "failed_auth"], json!({"capacity": 0, "refill_per_second": 1})),
                "auth.failed_auth.capacity",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(field_of(&config), field, "{config}");
        }
    }

    #[test]
    fn missing_and_empty_configurations_are_refused() {
        let field = |bytes: &[u8]| load(bytes).err().map(|e| e.field);
        assert_eq!(field(b"").as_deref(), Some("configuration"));
        assert_eq!(field(b"  \n").as_deref(), Some("configuration"));
        assert_eq!(field(b"[]").as_deref(), Some("configuration"));
        assert_eq!(field(b"{}").as_deref(), Some("routes"));
        assert_eq!(field(b"{\"routes\": []} x").as_deref(), Some("configuration"));
        let mut no_auth = minimal();
        no_auth.as_object_mut().unwrap().remove("auth");
        assert_eq!(field_of(&no_auth), "auth");
    }

    #[test]
    fn a_custom_token_header_is_also_removed_before_forwarding() {
        let mut config = minimal();
        config["auth"]["token_header"] = json!("X-Api-Token");
        let compiled = load(config.to_string().as_bytes()).unwrap();
        assert_eq!(
            compiled.token_headers,
            vec!["authorization".to_string(), "x-api-token".to_string()]
        );
    }

    #[test]
    fn an_hmac_key_can_come_from_the_vm_environment() {
        let mut config = minimal();
        let secret = config["auth"]["providers"][0]["jwks"]["keys"][0]["k"].take();
        let jwk = config["auth"]["providers"][0]["jwks"]["keys"][0].as_object_mut().unwrap();
        jwk.remove("k");
        jwk.insert("k_env".to_string(), json!("VOXGATE_HS256_SECRET"));
        let bytes = config.to_string();
        let env_with = |value: Value| move |name: &str| (name == "VOXGATE_HS256_SECRET").then(|| value.as_str().unwrap().to_string());
        assert!(load_with_env(bytes.as_bytes(), &env_with(secret.clone())).is_ok());
        let field = |result: Result<CompiledConfig, ConfigError>| result.err().map(|e| e.field);
        assert_eq!(field(load_with_env(bytes.as_bytes(), &|_| None)).as_deref(), Some("auth.providers[0].jwks.keys[0].k_env"));
        assert_eq!(field(load_with_env(bytes.as_bytes(), &env_with(json!(" ")))).as_deref(), Some("auth.providers[0].jwks.keys[0].k_env"));
        assert_eq!(field(load(bytes.as_bytes())).as_deref(), Some("auth.providers[0].jwks.keys[0].k"), "without the environment");
        let mut both = config.clone();
        both["auth"]["providers"][0]["jwks"]["keys"][0]["k"] = secret;
        assert_eq!(field(load_with_env(both.to_string().as_bytes(), &env_with(json!("x")))).as_deref(), Some("auth.providers[0].jwks.keys[0].k_env"));
    }

    #[test]
    fn error_display_names_the_field() {
        let e = ConfigError::new("text.max_chars", "must be between 1 and 1000000");
        assert_eq!(
            e.to_string(),
            "invalid configuration at `text.max_chars`: must be between 1 and 1000000"
        );
    }
}
