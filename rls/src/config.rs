//! The command line of the service, and its limits, read from the filter's own plugin
//! configuration: the numbers, plans and domain the filter asks about are the ones the service
//! enforces, with no second file to keep in step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use voxgate_filter::config::FilterConfig;
use voxgate_filter::error::ConfigError;

use crate::limits::Limits;

pub const USAGE: &str = "\
usage: voxgate-rls --config PATH --listen IP:PORT --admin IP:PORT [--redis URL]
                   [--storage-timeout-ms MS] [--max-counters N]

  --config PATH            the filter's plugin configuration (JSON); its `rate_limits.cluster`
                           section names the domain and the limits
  --listen IP:PORT         gRPC address of envoy.service.ratelimit.v3.RateLimitService
  --admin IP:PORT          HTTP address of /metrics, /readyz and /healthz
  --redis URL              counters in Redis (redis://[:PASSWORD@]HOST:PORT/DB), shared by every
                           process; without it, counters are in this process's memory
  --storage-timeout-ms MS  the longest a storage call may take (1-10000, default 50)
  --max-counters N         in memory only: live counters kept at most (default 1000000)";

/// Accepted `--storage-timeout-ms`: as the filter's own `timeout_ms`, long enough for an
/// in-zone Redis, short enough that a hung one never holds a request for long.
const STORAGE_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000;
const DEFAULT_STORAGE_TIMEOUT_MS: u64 = 50;
const DEFAULT_MAX_COUNTERS: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub redis: Option<String>,
    pub storage_timeout: Duration,
    pub max_counters: usize,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Flags),
    Help,
}

/// Parses the arguments after the program name. An error is one line naming the flag.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut config = None;
    let mut listen = None;
    let mut admin = None;
    let mut redis = None;
    let mut storage_timeout_ms = None;
    let mut max_counters = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(Command::Help);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg, None),
        };
        let slot = match flag.as_str() {
            "--config" => &mut config,
            "--listen" => &mut listen,
            "--admin" => &mut admin,
            "--redis" => &mut redis,
            "--storage-timeout-ms" => &mut storage_timeout_ms,
            "--max-counters" => &mut max_counters,
            _ => return Err(format!("{flag}: unknown argument (see --help)")),
        };
        if slot.is_some() {
            return Err(format!("{flag}: given twice"));
        }
        let value = match inline.or_else(|| args.next()) {
            Some(value) => value,
            None => return Err(format!("{flag}: needs a value")),
        };
        *slot = Some(value);
    }
    let address = |flag: &str, value: Option<String>| -> Result<SocketAddr, String> {
        let value = value.ok_or_else(|| format!("{flag}: required"))?;
        value
            .parse()
            .map_err(|_| format!("{flag}: `{value}` is not an IP:PORT address"))
    };
    let storage_timeout_ms = match storage_timeout_ms {
        None => DEFAULT_STORAGE_TIMEOUT_MS,
        Some(value) => value
            .parse()
            .ok()
            .filter(|ms| STORAGE_TIMEOUT_MS_RANGE.contains(ms))
            .ok_or_else(|| {
                format!(
                "--storage-timeout-ms: `{value}` is not a number of milliseconds between {} and {}",
                STORAGE_TIMEOUT_MS_RANGE.start(),
                STORAGE_TIMEOUT_MS_RANGE.end()
            )
            })?,
    };
    if redis.is_some() && max_counters.is_some() {
        return Err(
            "--max-counters: applies only to in-memory counters (without --redis)".to_string(),
        );
    }
    let max_counters = match max_counters {
        None => DEFAULT_MAX_COUNTERS,
        Some(value) => value
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("--max-counters: `{value}` is not a positive number"))?,
    };
    Ok(Command::Run(Flags {
        config: PathBuf::from(config.ok_or("--config: required")?),
        listen: address("--listen", listen)?,
        admin: address("--admin", admin)?,
        redis,
        storage_timeout: Duration::from_millis(storage_timeout_ms),
        max_counters,
    }))
}

/// The limits of the filter configuration `bytes`, checked as the filter checks them.
pub fn limits(bytes: &[u8]) -> Result<Limits, ConfigError> {
    let rate_limits = FilterConfig::parse(bytes)?.rate_limits;
    let Some(cluster) = rate_limits.cluster.clone() else {
        return Err(ConfigError::new(
            "rate_limits.cluster",
            "is required: the rate-limit service takes its domain and limits from it",
        ));
    };
    // The filter's own checks of the whole section: the buckets the limits take their
    // numbers from are the ones the filter accepts.
    rate_limits.clone().compile()?;
    cluster.check(&rate_limits)?;
    Ok(Limits::new(
        cluster.domain.clone(),
        cluster.service_limits(&rate_limits),
    ))
}

/// The limits of the filter configuration file at `path`; the error is one line.
pub fn load(path: &std::path::Path) -> Result<Limits, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("--config: cannot read {}: {e}", path.display()))?;
    limits(&bytes).map_err(|e| format!("--config {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    fn run(line: &str) -> Flags {
        match parse(args(line)).unwrap() {
            Command::Run(flags) => flags,
            Command::Help => panic!("help"),
        }
    }

    #[test]
    fn flags_with_defaults() {
        let flags =
            run("--config envoy/filter-config.json --listen 127.0.0.1:8081 --admin=127.0.0.1:9091");
        assert_eq!(
            flags,
            Flags {
                config: PathBuf::from("envoy/filter-config.json"),
                listen: "127.0.0.1:8081".parse().unwrap(),
                admin: "127.0.0.1:9091".parse().unwrap(),
                redis: None,
                storage_timeout: Duration::from_millis(50),
                max_counters: 1_000_000,
            }
        );
        let flags = run("--config c --listen [::1]:1 --admin 127.0.0.1:2 --redis redis://r:6379/1 --storage-timeout-ms 75");
        assert_eq!(flags.redis.as_deref(), Some("redis://r:6379/1"));
        assert_eq!(flags.storage_timeout, Duration::from_millis(75));
        assert_eq!(parse(args("--listen 1.2.3.4:5 --help")), Ok(Command::Help));
    }

    #[test]
    fn errors_name_the_flag() {
        let error = |line: &str| parse(args(line)).unwrap_err();
        let base = "--config c --listen 127.0.0.1:1 --admin 127.0.0.1:2";
        assert_eq!(
            error("--listen 127.0.0.1:1 --admin 127.0.0.1:2"),
            "--config: required"
        );
        assert!(error("--config c --admin 127.0.0.1:2").starts_with("--listen: required"));
        assert!(error("--config c --listen localhost:1 --admin 127.0.0.1:2")
            .starts_with("--listen: `localhost:1`"));
        assert!(
            error(&format!("{base} --storage-timeout-ms 0")).starts_with("--storage-timeout-ms:")
        );
        assert!(error(&format!("{base} --storage-timeout-ms 10001"))
            .starts_with("--storage-timeout-ms:"));
        assert!(error(&format!("{base} --max-counters 0")).starts_with("--max-counters:"));
        assert!(error(&format!("{base} --redis redis://r --max-counters 5"))
            .starts_with("--max-counters:"));
        assert!(error(&format!("{base} --port 5")).starts_with("--port: unknown"));
        assert_eq!(
            error(&format!("{base} --config d")),
            "--config: given twice"
        );
        assert_eq!(error(&format!("{base} --redis")), "--redis: needs a value");
        for message in [
            error("--config c"),
            error(&format!("{base} --storage-timeout-ms x")),
        ] {
            assert!(!message.contains('\n'), "{message}");
        }
    }

    const CLUSTER: &str = r#", "cluster": {"service": "voxgate_rls", "domain": "tts",
        "limits": ["subject_requests", "global_characters"]}"#;

    fn filter_config(cluster: &str) -> String {
        format!(
            r#"{{
            "routes": [{{"prefix": "/", "api": "metadata", "auth": false}}],
            "rate_limits": {{
                "default_plan": "free",
                "plans": {{"free": {{"requests": {{"capacity": 10, "refill_per_second": 0.5}}}}}},
                "global": {{"characters": {{"capacity": 50000, "refill_per_second": 5000}}}}
                {cluster}
            }}
        }}"#
        )
    }

    #[test]
    fn limits_come_from_the_filter_configuration() {
        let limits = limits(filter_config(CLUSTER).as_bytes()).unwrap();
        assert_eq!(limits.domain(), "tts");
        assert_eq!(limits.count(), 2);
    }

    #[test]
    fn a_configuration_without_a_cluster_section_is_refused_by_name() {
        let error = limits(filter_config("").as_bytes()).unwrap_err();
        assert_eq!(error.field, "rate_limits.cluster");
    }

    #[test]
    fn the_filters_own_checks_apply() {
        let error = |config: String| limits(config.as_bytes()).unwrap_err().field;
        let unbacked = filter_config(&CLUSTER.replace("global_characters", "anonymous_requests"));
        assert_eq!(error(unbacked), "rate_limits.cluster.limits[1]");
        let zero = filter_config(CLUSTER).replace(r#""capacity": 10,"#, r#""capacity": 0,"#);
        assert_eq!(error(zero), "rate_limits.plans.free.requests.capacity");
        let unknown = filter_config(&CLUSTER.replace("subject_requests", "subject_audio_seconds"));
        assert!(error(unknown).starts_with("rate_limits.cluster.limits"));
    }
}
