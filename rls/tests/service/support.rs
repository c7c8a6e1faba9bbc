//! What the service tests share: a real `redis-server` owned by the test (killed on
//! drop), the service served in-process on free loopback ports (stopped on drop), and a
//! minimal HTTP GET for the admin pages. Nothing started here outlives its test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::UInt64Value;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use voxgate_filter::ratelimit::cluster::{GlobalLimit, ServiceLimit};
use voxgate_rls::limits::Limits;
use voxgate_rls::service::RateLimiter;
use voxgate_rls::store::{RedisStore, Store};

/// The longest a test waits for something that should happen at once (a server starting,
/// a reconnection). Not a timing assertion: it only keeps a broken test from hanging.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` on a loopback port, with no persistence, in a directory of its own.
pub struct Redis {
    port: u16,
    password: Option<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(None)
    }

    /// A server that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> Redis {
        Redis::start_with(Some(password.to_string()))
    }

    fn start_with(password: Option<String>) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            password,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Starts the server (again) on the same port, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let program = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("redis-server is not installed (apt-get install redis-server)");
        let mut command = Command::new(program);
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the connections drop as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let (ask, expected) = match &self.password {
            Some(password) => (format!("AUTH {password}\r\nPING\r\n"), "+OK\r\n+PONG\r\n"),
            None => ("PING\r\n".to_string(), "+PONG\r\n"),
        };
        let mut answer = vec![0u8; expected.len()];
        stream.write_all(ask.as_bytes()).is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && answer == expected.as_bytes()
    }

    /// A plain connection, to read counters as Redis holds them.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn limit(
    limit: GlobalLimit,
    plan: Option<&str>,
    capacity: u64,
    window_seconds: u64,
) -> ServiceLimit {
    ServiceLimit {
        limit,
        plan: plan.map(str::to_string),
        capacity,
        window_seconds,
    }
}

pub fn redis_limiter(redis: &Redis, limits: Vec<ServiceLimit>, timeout: Duration) -> RateLimiter {
    let store = RedisStore::open(&redis.url(), timeout).unwrap();
    RateLimiter::new(
        Limits::new("voxgate".to_string(), limits),
        Store::redis(store),
    )
}

pub fn descriptor(entries: &[(&str, &str)], hits: u64) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: key.to_string(),
                value: value.to_string(),
            })
            .collect(),
        hits_addend: Some(UInt64Value { value: hits }),
        ..Default::default()
    }
}

pub fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "voxgate".to_string(),
        descriptors,
        hits_addend: 1,
    }
}

/// The process's metrics recorder: one per test binary.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| voxgate_rls::metrics::install().unwrap())
        .clone()
}

/// The service, gRPC and admin, on free loopback ports until dropped.
pub struct Serving {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Serving {
    pub async fn start(limiter: RateLimiter) -> Serving {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_address, admin_address) =
            (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(voxgate_rls::serve(
            Arc::new(limiter),
            metrics(),
            grpc,
            admin,
            async move {
                let _ = stopped.await;
            },
        ));
        Serving {
            grpc: grpc_address,
            admin: admin_address,
            stop: Some(stop),
            task,
        }
    }

    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    /// Stops serving and waits until both servers ended.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `GET path` on `address`: the status code and the body.
pub async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || http_get(address, &path))
        .await
        .unwrap()
}

/// Waits until `GET path` answers `status` (the server is up, the storage is back).
pub async fn wait_for(address: SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let owned = path.to_string();
        let answer = tokio::task::spawn_blocking(move || try_http_get(address, &owned))
            .await
            .unwrap();
        match answer {
            Some((answered, body)) if answered == status => return body,
            _ => assert!(
                Instant::now() < deadline,
                "GET {path} never answered {status}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(address, path).unwrap_or_else(|| panic!("GET {path} on {address} failed"))
}

fn try_http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(PATIENCE)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The value of the sample `series` (name and labels, exactly as rendered) on a scrape page.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
