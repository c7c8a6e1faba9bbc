//! The `voxgate-rls` command: reads the flags and the filter configuration (errors: one
//! line, exit code 2), opens the storage, binds both addresses, logs one line, and serves
//! until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use voxgate_rls::config::{self, Command, Flags, USAGE};
use voxgate_rls::limits::Limits;
use voxgate_rls::metrics;
use voxgate_rls::service::RateLimiter;
use voxgate_rls::store::{MemoryStore, RedisStore, Store};

/// How often histogram samples are folded into the exporter's buckets.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let flags = match config::parse(std::env::args().skip(1)) {
        Ok(Command::Run(flags)) => flags,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => return usage_error(&message),
    };
    let limits = match config::load(&flags.config) {
        Ok(limits) => limits,
        Err(message) => return usage_error(&message),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("voxgate-rls: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(flags, limits))
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("voxgate-rls: {message}");
    ExitCode::from(2)
}

async fn run(flags: Flags, limits: Limits) -> ExitCode {
    // First, because opening the store sets the storage gauge.
    let handle = match metrics::install() {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("voxgate-rls: cannot install the metrics recorder: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (store, storage) = match &flags.redis {
        Some(url) => match RedisStore::open(url, flags.storage_timeout) {
            Ok(redis) => {
                let storage = redis.address().to_string();
                (Store::redis(redis), storage)
            }
            Err(error) => return usage_error(&format!("--redis: {error}")),
        },
        None => (
            Store::memory(MemoryStore::new(flags.max_counters, Instant::now())),
            format!("memory (at most {} counters)", flags.max_counters),
        ),
    };
    metrics::limits(limits.count());
    let grpc = match bind("--listen", flags.listen).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    let admin = match bind("--admin", flags.admin).await {
        Ok(listener) => listener,
        Err(code) => return code,
    };
    eprintln!(
        "voxgate-rls: gRPC on {}, admin on {}, storage {storage}, domain {:?}, {} limits",
        flags.listen,
        flags.admin,
        limits.domain(),
        limits.count()
    );
    let limiter = Arc::new(RateLimiter::new(limits, store));
    // Sets the storage gauge, and logs at once when Redis does not answer.
    let _ = limiter.store().ping().await;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    match voxgate_rls::serve(limiter, handle, grpc, admin, termination()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("voxgate-rls: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn bind(flag: &str, address: std::net::SocketAddr) -> Result<TcpListener, ExitCode> {
    TcpListener::bind(address).await.map_err(|error| {
        eprintln!("voxgate-rls: {flag} {address}: cannot listen: {error}");
        ExitCode::FAILURE
    })
}

/// SIGTERM (what orchestrators send) or SIGINT.
async fn termination() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
