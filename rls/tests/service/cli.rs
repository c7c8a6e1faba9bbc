//! The `voxgate-rls` binary: one-line errors with exit code 2, the start line (without the
//! Redis password), storage health on the admin pages through a Redis crash, and a clean exit
//! on SIGTERM and SIGINT.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{rate_limit::Unit, Code};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

use super::support::{descriptor, free_port, get, request, sample, wait_for, Redis, PATIENCE};

const BINARY: &str = env!("CARGO_BIN_EXE_voxgate-rls");

const CLUSTER: &str =
    r#", "cluster": {"service": "voxgate_rls", "limits": ["subject_requests", "global_requests"]}"#;

fn filter_config(cluster: &str) -> String {
    format!(
        r#"{{
        "routes": [{{"prefix": "/v1/audio/speech", "api": "openai_speech", "auth": false}}],
        "rate_limits": {{
            "default_plan": "free",
            "plans": {{"free": {{"requests": {{"capacity": 3, "refill_per_second": 0.05}}}}}},
            "global": {{"requests": {{"capacity": 100, "refill_per_second": 10}}}}
            {cluster}
        }}
    }}"#
    )
}

fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A started binary, killed if the test ends before it exits.
struct Running {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BINARY)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (lines, received) = mpsc::channel();
        // Drained all along, so the pipe never fills.
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        Running {
            child,
            stderr: received,
        }
    }

    fn line(&self) -> String {
        self.stderr
            .recv_timeout(PATIENCE)
            .expect("a line on stderr")
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "voxgate-rls did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn errors_are_one_line_naming_the_flag_or_field_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.json", &filter_config(CLUSTER));
    let without_cluster = write(&dir, "local.json", &filter_config(""));
    let (good, without_cluster) = (good.to_str().unwrap(), without_cluster.to_str().unwrap());
    let addresses = ["--listen", "127.0.0.1:1", "--admin", "127.0.0.1:2"];
    let with = |extra: &[&str]| -> Vec<String> {
        extra
            .iter()
            .chain(&addresses)
            .map(|s| s.to_string())
            .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![], "--config"),
        (
            vec![
                "--config".into(),
                good.into(),
                "--listen".into(),
                "nowhere".into(),
            ],
            "--listen",
        ),
        (with(&["--config", "/nonexistent/filter.json"]), "--config"),
        (with(&["--config", without_cluster]), "rate_limits.cluster"),
        (
            with(&["--config", good, "--storage-timeout-ms", "0"]),
            "--storage-timeout-ms",
        ),
        (
            with(&["--config", good, "--redis", "rediss://127.0.0.1:6379/0"]),
            "--redis",
        ),
        (
            with(&[
                "--config",
                good,
                "--redis",
                "redis://127.0.0.1:6379/0",
                "--max-counters",
                "9",
            ]),
            "--max-counters",
        ),
    ];
    for (args, named) in cases {
        let output = Command::new(BINARY).args(&args).output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("voxgate-rls: ") && stderr.contains(named),
            "{args:?}: {stderr}"
        );
    }
    let help = Command::new(BINARY).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8(help.stdout)
        .unwrap()
        .starts_with("usage: voxgate-rls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reports_redis_health_and_exits_on_sigterm() {
    let mut redis = Redis::start_with_password("s3cret-pass");
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir, "filter.json", &filter_config(CLUSTER));
    let (grpc, admin) = (free_port(), free_port());
    let (grpc_address, admin_address) = (format!("127.0.0.1:{grpc}"), format!("127.0.0.1:{admin}"));
    let mut running = Running::start(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        &grpc_address,
        "--admin",
        &admin_address,
        "--redis",
        &redis.url(),
        "--storage-timeout-ms",
        "1000",
    ]);
    let started = running.line();
    assert_eq!(
        started,
        format!(
            "voxgate-rls: gRPC on {grpc_address}, admin on {admin_address}, storage redis 127.0.0.1:{} db 0, \
             domain \"voxgate\", 2 limits",
            redis.port()
        )
    );
    let admin_address = admin_address.parse().unwrap();
    wait_for(admin_address, "/readyz", 200).await;
    let mut client = RateLimitServiceClient::connect(format!("http://{grpc_address}"))
        .await
        .unwrap();
    let ask = || {
        request(vec![descriptor(
            &[
                ("limit", "subject_requests"),
                ("plan", "free"),
                ("subject", "s"),
            ],
            1,
        )])
    };
    let answer = client.should_rate_limit(ask()).await.unwrap().into_inner();
    assert_eq!(answer.overall_code, Code::Ok as i32);
    assert_eq!(
        answer.statuses[0].current_limit.as_ref().unwrap().unit,
        Unit::Minute as i32
    );
    let page = get(admin_address, "/metrics").await.1;
    assert_eq!(sample(&page, "voxgate_rls_storage_up"), Some(1.0), "{page}");
    assert_eq!(sample(&page, "voxgate_rls_limits"), Some(2.0), "{page}");
    assert_eq!(
        sample(&page, r#"voxgate_rls_requests_total{result="ok"}"#),
        Some(1.0),
        "{page}"
    );

    redis.kill();
    let error = client.should_rate_limit(ask()).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(running
        .line()
        .starts_with("voxgate-rls: redis storage unavailable: "));
    let page = get(admin_address, "/metrics").await.1;
    assert_eq!(sample(&page, "voxgate_rls_storage_up"), Some(0.0), "{page}");
    let errors = ["timeout", "redis"].map(|kind| {
        sample(
            &page,
            &format!("voxgate_rls_storage_errors_total{{kind=\"{kind}\"}}"),
        )
        .unwrap()
    });
    assert!(errors.iter().sum::<f64>() >= 1.0, "{page}");
    assert_eq!(
        sample(&page, r#"voxgate_rls_requests_total{result="error"}"#),
        Some(1.0),
        "{page}"
    );
    assert_eq!(get(admin_address, "/readyz").await.0, 503);

    redis.restart();
    wait_for(admin_address, "/readyz", 200).await;
    assert_eq!(running.line(), "voxgate-rls: redis storage answers");
    client.should_rate_limit(ask()).await.unwrap();
    let page = get(admin_address, "/metrics").await.1;
    assert_eq!(sample(&page, "voxgate_rls_storage_up"), Some(1.0), "{page}");

    running.signal("-TERM");
    assert!(running.exit_status().success());
    assert!(!started.contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_counters_and_a_clean_exit_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir, "filter.json", &filter_config(CLUSTER));
    let (grpc, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut running = Running::start(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        &grpc,
        "--admin",
        &admin,
    ]);
    assert!(running
        .line()
        .contains("storage memory (at most 1000000 counters)"));
    let body = wait_for(admin.parse().unwrap(), "/readyz", 200).await;
    assert_eq!(body, r#"{"status":"ready","storage":"memory"}"#);
    let mut client = RateLimitServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let ask = || {
        request(vec![descriptor(
            &[
                ("limit", "subject_requests"),
                ("plan", "free"),
                ("subject", "m"),
            ],
            1,
        )])
    };
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            client
                .should_rate_limit(ask())
                .await
                .unwrap()
                .into_inner()
                .overall_code,
        );
    }
    let (ok, over) = (Code::Ok as i32, Code::OverLimit as i32);
    assert_eq!(codes, vec![ok, ok, ok, over]);
    running.signal("-INT");
    assert!(running.exit_status().success());
}
