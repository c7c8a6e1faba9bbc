//! Command-line flags and environment variables of the sidecar, and the defaults derived
//! from the machine (CPU cores) when a value is not given.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::phonemize::{self, PhonemizerSettings};
use crate::scheduler::PlanWeights;

/// Every setting can be given as a flag or as the environment variable named beside it.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "voxgate-sidecar",
    version,
    about = "Text-to-speech HTTP service for Piper and Coqui VITS voices (OpenAI and Coqui APIs)"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "VOXGATE_SIDECAR_BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// TCP port to listen on (5002 is the port of Coqui's TTS server).
    #[arg(long, env = "VOXGATE_SIDECAR_PORT", default_value_t = 5002)]
    pub port: u16,

    /// Folder of voices: Piper `NAME.onnx` + `NAME.onnx.json`, Coqui `NAME/model.onnx` + `NAME/config.json`.
    #[arg(long, env = "VOXGATE_VOICES_DIR")]
    pub voices_dir: PathBuf,

    /// Voice used when a request names none or names an OpenAI voice such as `alloy`
    /// [default: the first voice by name].
    #[arg(long, env = "VOXGATE_DEFAULT_VOICE")]
    pub default_voice: Option<String>,

    /// JSON file of voice aliases, `{"alloy": "VOICE", "narrator": "VOICE", …}`; the OpenAI
    /// voice names it leaves out mean the default voice.
    #[arg(long, env = "VOXGATE_VOICE_ALIASES")]
    pub voice_aliases: Option<PathBuf>,

    /// Syntheses that run at the same time [default: CPU cores / intra-op threads].
    #[arg(long, env = "VOXGATE_SIDECAR_WORKERS")]
    pub workers: Option<NonZeroUsize>,

    /// ONNX Runtime sessions loaded per voice [default: the number of workers].
    #[arg(long, env = "VOXGATE_SIDECAR_SESSIONS_PER_VOICE")]
    pub sessions_per_voice: Option<NonZeroUsize>,

    /// Threads ONNX Runtime uses inside one inference.
    #[arg(long, env = "VOXGATE_SIDECAR_INTRA_OP_THREADS", default_value = "1")]
    pub intra_op_threads: NonZeroUsize,

    /// Relative shares of the plans the filter forwards in `x-voxgate-plan`, as
    /// `plan=weight,…`: while tenants wait, each gets sentences scheduled in proportion to its
    /// plan's weight. A plan not listed, or no plan, has weight 1.
    #[arg(
        long,
        env = "VOXGATE_SIDECAR_PLAN_WEIGHTS",
        default_value = "free=1,pro=4"
    )]
    pub plan_weights: PlanWeights,

    /// Requests allowed to wait for a busy worker; beyond that the answer is 503 at once.
    #[arg(long, env = "VOXGATE_SIDECAR_MAX_QUEUE", default_value_t = 16)]
    pub max_queue: usize,

    /// Deadline of one speech request, queueing included, in milliseconds.
    #[arg(
        long,
        env = "VOXGATE_SIDECAR_REQUEST_TIMEOUT_MS",
        default_value = "60000"
    )]
    pub request_timeout_ms: NonZeroU64,

    /// Longest accepted input, in Unicode characters. Keep it equal to the filter's
    /// `text.max_chars` (both default to 4096): the two apply the same text rules.
    #[arg(long, env = "VOXGATE_SIDECAR_MAX_INPUT_CHARS", default_value = "4096")]
    pub max_input_chars: NonZeroUsize,

    /// Accept control, bidi and invisible characters in the text (NUL is refused regardless);
    /// set it where the filter's `text.allow_control_chars` is set.
    #[arg(long, env = "VOXGATE_SIDECAR_ALLOW_CONTROL_CHARS")]
    pub allow_control_chars: bool,

    /// Largest request body, in bytes; a larger one gets 413. Keep it at least the filter's
    /// `text.max_body_bytes` (both default to 65536), so that no body the filter admitted, and
    /// charged to its buckets, is refused here.
    #[arg(long, env = "VOXGATE_SIDECAR_MAX_BODY_BYTES", default_value = "65536")]
    pub max_body_bytes: NonZeroUsize,

    /// Most audio one request may make, in seconds, predicted from its phonemes before any
    /// synthesis; a text predicted to make more gets 400 `audio_limit_exceeded`.
    #[arg(
        long,
        env = "VOXGATE_SIDECAR_MAX_REQUEST_AUDIO_SECONDS",
        default_value_t = 300.0,
        value_parser = positive_seconds
    )]
    pub max_request_audio_seconds: f64,

    /// Least audio seconds one synthesis is charged, however little it makes: every request
    /// costs a fixed phonemizer round trip and model run, which a very short text would
    /// otherwise get for almost nothing of the caller's `audio_seconds` budget.
    #[arg(
        long,
        env = "VOXGATE_SIDECAR_MIN_REQUEST_AUDIO_SECONDS",
        default_value_t = 1.0,
        value_parser = non_negative_seconds
    )]
    pub min_request_audio_seconds: f64,

    /// Most audio one model run may make, in seconds: longer sentences are cut. A run's memory
    /// grows with its audio (about 20 MB per second for a medium Piper voice).
    #[arg(
        long,
        env = "VOXGATE_SIDECAR_MAX_UTTERANCE_SECONDS",
        default_value_t = 12.0,
        value_parser = positive_seconds
    )]
    pub max_utterance_seconds: f64,

    /// Silence inserted between sentences, in milliseconds.
    #[arg(long, env = "VOXGATE_SIDECAR_SENTENCE_GAP_MS", default_value_t = 120)]
    pub sentence_gap_ms: u32,

    /// Seconds sent in `Retry-After` when the queue is full or the voices are not loaded yet.
    #[arg(long, env = "VOXGATE_SIDECAR_RETRY_AFTER_SECS", default_value_t = 1)]
    pub retry_after_secs: u64,

    /// The `voxgate-phonemizer` executable that runs espeak-ng outside the service
    /// [default: the one beside this executable].
    #[arg(long, env = "VOXGATE_PHONEMIZER")]
    pub phonemizer: Option<PathBuf>,

    /// Phonemizer processes, i.e. texts phonemized at the same time [default: the number of
    /// workers].
    #[arg(long, env = "VOXGATE_SIDECAR_PHONEMIZERS")]
    pub phonemizers: Option<NonZeroUsize>,

    /// Longest wait for a phonemizer's answer, in milliseconds; a phonemizer that takes longer
    /// is killed and replaced, and its request fails.
    #[arg(
        long,
        env = "VOXGATE_SIDECAR_PHONEMIZER_TIMEOUT_MS",
        default_value = "10000"
    )]
    pub phonemizer_timeout_ms: NonZeroU64,

    /// Log filter in `tracing` syntax, e.g. `info` or `voxgate_sidecar=debug,info`.
    #[arg(long, env = "VOXGATE_SIDECAR_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// The alias table from `--voice-aliases`, empty when none is given.
    pub fn read_voice_aliases(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let Some(path) = &self.voice_aliases else {
            return Ok(BTreeMap::new());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the voice aliases {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "the voice aliases {} must be a JSON object of alias to voice name",
                path.display()
            )
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    pub fn workers(&self) -> usize {
        self.workers.map_or_else(
            || default_workers(available_cores(), self.intra_op_threads.get()),
            NonZeroUsize::get,
        )
    }

    pub fn sessions_per_voice(&self) -> usize {
        self.sessions_per_voice
            .map_or_else(|| self.workers(), NonZeroUsize::get)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.get())
    }

    pub fn phonemizer_settings(&self) -> PhonemizerSettings {
        PhonemizerSettings {
            program: self
                .phonemizer
                .clone()
                .unwrap_or_else(phonemize::default_program),
            processes: self
                .phonemizers
                .unwrap_or_else(|| NonZeroUsize::new(self.workers()).unwrap_or(NonZeroUsize::MIN)),
            timeout: Duration::from_millis(self.phonemizer_timeout_ms.get()),
        }
    }

    pub fn sentence_gap(&self) -> Duration {
        Duration::from_millis(u64::from(self.sentence_gap_ms))
    }
}

/// A number of seconds above zero, for the audio limits.
fn positive_seconds(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Ok(seconds),
        _ => Err(format!("{value:?} is not a number of seconds above 0")),
    }
}

fn non_negative_seconds(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => Ok(seconds),
        _ => Err(format!("{value:?} is not a number of seconds, 0 or more")),
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// One worker per group of `intra_op_threads` cores: two sessions of one thread each beat one
/// session of two threads for throughput, so the cores are split between whole syntheses.
fn default_workers(cores: usize, intra_op_threads: usize) -> usize {
    (cores / intra_op_threads.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Config {
        let mut args = vec!["voxgate-sidecar", "--voices-dir", "/voices"];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).expect("valid flags")
    }

    #[test]
    fn workers_split_cores_between_intra_op_threads() {
        assert_eq!(default_workers(2, 1), 2);
        assert_eq!(default_workers(8, 2), 4);
        assert_eq!(default_workers(2, 4), 1);
        assert_eq!(default_workers(1, 1), 1);
    }

    #[test]
    fn explicit_flags_win() {
        let config = parse(&[
            "--bind",
            "0.0.0.0",
            "--port",
            "6000",
            "--workers",
            "3",
            "--sessions-per-voice",
            "5",
            "--intra-op-threads",
            "2",
            "--max-queue",
            "0",
            "--request-timeout-ms",
            "1500",
            "--sentence-gap-ms",
            "0",
        ]);
        assert_eq!(config.listen_addr().to_string(), "0.0.0.0:6000");
        assert_eq!(config.workers(), 3);
        assert_eq!(config.sessions_per_voice(), 5);
        assert_eq!(config.max_queue, 0);
        assert_eq!(config.request_timeout(), Duration::from_millis(1500));
        assert_eq!(config.sentence_gap(), Duration::ZERO);
    }

    #[test]
    fn the_body_limit_defaults_to_the_filters_and_can_be_raised() {
        // The filter's `text.max_body_bytes` default (filter/src/validate/mod.rs): equal defaults
        // keep the filter the only place that refuses a body for its size.
        const FILTER_DEFAULT_MAX_BODY_BYTES: usize = 65_536;
        assert_eq!(
            parse(&[]).max_body_bytes.get(),
            FILTER_DEFAULT_MAX_BODY_BYTES
        );
        assert_eq!(
            parse(&["--max-body-bytes", "1048576"]).max_body_bytes.get(),
            1 << 20
        );
    }

    #[test]
    fn sessions_follow_workers_by_default() {
        let config = parse(&["--workers", "3", "--intra-op-threads", "1"]);
        assert_eq!(config.sessions_per_voice(), 3);
    }

    #[test]
    fn one_phonemizer_per_worker_by_default() {
        let settings = parse(&["--workers", "3"]).phonemizer_settings();
        assert_eq!(settings.processes.get(), 3);
        assert_eq!(settings.timeout, Duration::from_secs(10));
        let settings = parse(&[
            "--workers",
            "3",
            "--phonemizers",
            "1",
            "--phonemizer",
            "/opt/voxgate/voxgate-phonemizer",
            "--phonemizer-timeout-ms",
            "250",
        ])
        .phonemizer_settings();
        assert_eq!(settings.processes.get(), 1);
        assert_eq!(
            settings.program,
            PathBuf::from("/opt/voxgate/voxgate-phonemizer")
        );
        assert_eq!(settings.timeout, Duration::from_millis(250));
    }

    #[test]
    fn zero_workers_and_zero_threads_are_refused() {
        for flag in [
            "--workers",
            "--intra-op-threads",
            "--max-input-chars",
            "--max-body-bytes",
            "--request-timeout-ms",
            "--phonemizers",
            "--phonemizer-timeout-ms",
        ] {
            let result =
                Config::try_parse_from(["voxgate-sidecar", "--voices-dir", "/v", flag, "0"]);
            assert!(result.is_err(), "{flag} 0 must be refused");
        }
    }
}
