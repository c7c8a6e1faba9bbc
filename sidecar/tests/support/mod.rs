//! Test harness for the HTTP tests: a scratch voices folder holding the real Joe voice and a
//! Coqui multi-speaker fixture, the built sidecar binary started on a free loopback port and
//! killed when its guard drops, an HTTP client, and readers for WAV and Prometheus text.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const JOE: &str = "en_US-joe-medium";
pub const MULTI: &str = "coqui-multi";
pub const JOE_SAMPLE_RATE: u32 = 22050;

/// Every test starts a sidecar that runs inference; one at a time keeps a 2-core machine
/// responsive and the metrics of each server its own.
static ONE_SERVER_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    ONE_SERVER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn required_env(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => panic!(
            "{name} is not set. Run the tests through `make test`, which exports \
             VOXGATE_VOICES_DIR (the folder with {JOE}.onnx) and ORT_DYLIB_PATH \
             (libonnxruntime.so), or export both yourself."
        ),
    }
}

/// Voices folder: links to the Joe voice from `VOXGATE_VOICES_DIR` and to the Coqui
/// multi-speaker fixture (speakers spk_a, spk_b, spk_c) laid out as a Coqui export.
pub fn voices_dir() -> TempDir {
    let scratch = TempDir::with_prefix("voxgate-voices-").expect("scratch dir");
    for file in joe_files() {
        let name = file.file_name().expect("file name");
        std::os::unix::fs::symlink(&file, scratch.path().join(name)).expect("link Joe voice");
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/coqui");
    let multi = scratch.path().join(MULTI);
    fs::create_dir(&multi).expect("create Coqui voice dir");
    for (from, to) in [
        ("coqui_vits_multispeaker.onnx", "model.onnx"),
        ("coqui_vits_multispeaker.config.json", "config.json"),
    ] {
        let file = fixtures
            .join(from)
            .canonicalize()
            .expect("Coqui fixture present");
        std::os::unix::fs::symlink(file, multi.join(to)).expect("link Coqui fixture");
    }
    scratch
}

/// The Joe voice's model and its `.onnx.json`, from `VOXGATE_VOICES_DIR`.
pub fn joe_files() -> [PathBuf; 2] {
    let source = required_env("VOXGATE_VOICES_DIR");
    let files = [".onnx", ".onnx.json"].map(|suffix| source.join(format!("{JOE}{suffix}")));
    for file in &files {
        assert!(
            file.is_file(),
            "{} is missing; run `make setup`",
            file.display()
        );
    }
    files
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}

/// The sidecar binary under test; killed and reaped when dropped.
pub struct Sidecar {
    child: Child,
    port: u16,
    log: PathBuf,
    _scratch: TempDir,
}

impl Sidecar {
    /// Starts the binary with `args` after `--voices-dir`, `--port` and `--default-voice`,
    /// without waiting for it.
    pub fn spawn(voices: &Path, args: &[&str]) -> Sidecar {
        let ort = required_env("ORT_DYLIB_PATH");
        let scratch = TempDir::with_prefix("voxgate-sidecar-").expect("scratch dir");
        let log = scratch.path().join("sidecar.log");
        let log_file = fs::File::create(&log).expect("create log file");
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_voxgate-sidecar"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("VOXGATE_") {
                command.env_remove(name);
            }
        }
        command
            .env("ORT_DYLIB_PATH", ort)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--voices-dir")
            .arg(voices)
            .args(["--default-voice", JOE, "--log", "info"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .process_group(0);
        let child = command.spawn().expect("start voxgate-sidecar");
        Sidecar {
            child,
            port,
            log,
            _scratch: scratch,
        }
    }

    /// Starts the binary and waits until `/readyz` answers 200.
    pub fn start(voices: &Path, args: &[&str]) -> Sidecar {
        let mut sidecar = Sidecar::spawn(voices, args);
        sidecar.wait_ready();
        sidecar
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let agent = agent(Duration::from_secs(5));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sidecar exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok(response) = agent.get(self.url("/readyz")).call() {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sidecar not ready after 120 s:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        get_text(&agent(Duration::from_secs(10)), &self.url("/metrics"))
    }

    /// Sends SIGTERM to the sidecar's process group (its phonemizer processes included), as a
    /// terminal's Ctrl-C or a process manager does, and waits for the sidecar to end; returns
    /// whether it exited cleanly.
    pub fn terminate_and_wait(&mut self, limit: Duration) -> bool {
        let status = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.pid())])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for sidecar") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "sidecar still running {limit:?} after SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether every process of the sidecar's group (the sidecar and its phonemizers) has
    /// ended within `limit`.
    pub fn group_ends_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let group = -(self.pid() as i32);
        // SAFETY: signal 0 only asks whether the group still has a process.
        while unsafe { libc::kill(group, 0) } == 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A client that returns 4xx/5xx as responses, with `timeout` over each whole call.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

pub fn get_text(agent: &ureq::Agent, url: &str) -> String {
    let mut response = agent.get(url).call().expect("GET");
    assert_eq!(response.status(), 200, "GET {url}");
    response.body_mut().read_to_string().expect("text body")
}

/// An answer read to the end.
pub struct Answer {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn from(response: ureq::http::Response<ureq::Body>) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .read_to_end(&mut body)
            .expect("read body");
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "expected JSON, got: {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts an OpenAI-shaped error with `status` and `code`.
    pub fn assert_error(&self, status: u16, code: &str) {
        let body = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "expected {status} {code}, got: {body}");
        let json = self.json();
        assert_eq!(json["error"]["code"], code, "{body}");
        let expected_type = voxgate_rules::error::error_type(status);
        assert_eq!(json["error"]["type"], expected_type, "{body}");
        assert!(json["error"].get("param").is_some(), "{body}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}

pub fn post_json(agent: &ureq::Agent, url: &str, body: &serde_json::Value) -> Answer {
    Answer::from(
        agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes())
            .expect("POST"),
    )
}

/// Decoded 16-bit mono WAV.
pub struct Wav {
    pub sample_rate: u32,
    pub samples: Vec<i16>,
}

impl Wav {
    pub fn parse(bytes: &[u8]) -> Wav {
        let reader = hound::WavReader::new(bytes).expect("a valid WAV file");
        let spec = reader.spec();
        assert_eq!(spec.channels, 1, "mono");
        assert_eq!(spec.bits_per_sample, 16, "16-bit");
        assert_eq!(spec.sample_format, hound::SampleFormat::Int);
        let samples = reader
            .into_samples::<i16>()
            .collect::<Result<Vec<_>, _>>()
            .expect("samples");
        Wav {
            sample_rate: spec.sample_rate,
            samples,
        }
    }

    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }
}

/// Seconds of 16-bit mono PCM.
pub fn pcm_seconds(bytes: usize, sample_rate: u32) -> f64 {
    bytes as f64 / 2.0 / f64::from(sample_rate)
}

/// Root mean square of 16-bit samples, scaled to [0, 1].
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples
        .iter()
        .map(|&s| (f64::from(s) / 32768.0).powi(2))
        .sum();
    (sum / samples.len() as f64).sqrt()
}

/// Sum of the samples of `name` whose labels include all of `labels`, from Prometheus text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Polls `/metrics` until `check` holds, or panics after `limit`.
pub fn wait_for_metrics(
    sidecar: &Sidecar,
    limit: Duration,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = sidecar.metrics();
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; metrics:\n{text}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
