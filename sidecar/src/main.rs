//! voxgate sidecar: binds the port first, loads the voices in the background (so `/readyz`
//! answers 503 until they are usable), serves the HTTP API, and on SIGTERM or SIGINT stops
//! accepting connections while the requests in flight finish.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use voxgate_rules::TextLimits;
use voxgate_sidecar::api::{self, AppState, Limits, LoadedVoices};
use voxgate_sidecar::config::Config;
use voxgate_sidecar::memory;
use voxgate_sidecar::metrics;
use voxgate_sidecar::phonemize;
use voxgate_sidecar::scheduler::Scheduler;
use voxgate_sidecar::voice::{EngineOptions, VoiceCatalog};

/// How often histogram samples are folded into the exporter's buckets.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    memory::return_freed_memory();
    let config = Config::parse();
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("voxgate-sidecar: invalid --log filter: {error}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = metrics::install().context("installing the metrics recorder")?;
    let listener = TcpListener::bind(config.listen_addr())
        .await
        .with_context(|| format!("binding {}", config.listen_addr()))?;
    let address = listener.local_addr().context("reading the bound address")?;

    let limits = Limits {
        text: TextLimits {
            max_chars: config.max_input_chars.get(),
            allow_control_chars: config.allow_control_chars,
        },
        max_body_bytes: config.max_body_bytes.get(),
        request_timeout: config.request_timeout(),
        sentence_gap: config.sentence_gap(),
        retry_after_secs: config.retry_after_secs,
        max_request_audio_seconds: config.max_request_audio_seconds,
        min_request_audio_seconds: config.min_request_audio_seconds,
        max_utterance_seconds: config.max_utterance_seconds,
    };
    let phonemizer = config.phonemizer_settings();
    phonemize::configure(phonemizer.clone());
    let scheduler = Scheduler::new(config.workers(), config.max_queue);
    metrics::workers_configured(scheduler.workers());
    let state = AppState::new(
        limits,
        scheduler,
        config.plan_weights.clone(),
        metrics.clone(),
    );
    info!(
        %address,
        workers = config.workers(),
        sessions_per_voice = config.sessions_per_voice(),
        intra_op_threads = config.intra_op_threads.get(),
        max_queue = config.max_queue,
        plan_weights = %config.plan_weights,
        phonemizer = %phonemizer.program.display(),
        phonemizers = phonemizer.processes.get(),
        "listening; loading voices"
    );

    // A failed voice load stops the server through the same path as a signal.
    let (load_failed_tx, mut load_failed_rx) = watch::channel(None::<Arc<anyhow::Error>>);
    tokio::spawn(load_voices(
        config.clone(),
        state.clone(),
        address,
        load_failed_tx,
    ));
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            metrics.run_upkeep();
        }
    });

    let shutdown = {
        let state = state.clone();
        let mut load_failed_rx = load_failed_rx.clone();
        async move {
            tokio::select! {
                () = termination_signal() => info!("shutting down: finishing requests in flight"),
                // The sender is dropped once the voices are loaded; that error only
                // disables this branch.
                Ok(_) = load_failed_rx.wait_for(Option::is_some) => {}
            }
            state.begin_draining();
            metrics::mark_not_ready();
        }
    };
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    // Reaped here rather than left to exit on their closed pipes: the service's own exit
    // leaves no phonemizer behind, even where nothing reaps orphans.
    let stopped = phonemize::phonemizer().stop_idle_processes();
    info!(stopped, "phonemizer processes stopped");

    let load_failure = load_failed_rx.borrow_and_update().clone();
    match load_failure {
        Some(error) => Err(anyhow::anyhow!("{error:#}")),
        None => {
            info!("stopped");
            Ok(())
        }
    }
}

async fn load_voices(
    config: Config,
    state: AppState,
    address: std::net::SocketAddr,
    failed: watch::Sender<Option<Arc<anyhow::Error>>>,
) {
    let options = EngineOptions {
        sessions_per_voice: config.sessions_per_voice(),
        intra_op_threads: config.intra_op_threads.get(),
    };
    let dir = config.voices_dir.clone();
    let started = std::time::Instant::now();
    let loaded = tokio::task::spawn_blocking(move || VoiceCatalog::load_dir(&dir, &options))
        .await
        .context("the voice loading thread stopped")
        .and_then(|catalog| {
            catalog.with_context(|| format!("loading voices from {}", config.voices_dir.display()))
        })
        .and_then(|catalog| {
            let aliases = config.read_voice_aliases()?;
            LoadedVoices::new(catalog, config.default_voice.as_deref(), aliases)
        })
        .and_then(|voices| {
            let count = voices.all().len();
            let default_voice = voices.default_voice().info().name.clone();
            state.set_voices(voices)?;
            Ok((count, default_voice))
        });
    match loaded {
        Ok((count, default_voice)) => {
            metrics::voices_loaded(count);
            info!(count, %default_voice, seconds = started.elapsed().as_secs_f64(), "voices loaded");
            println!("voxgate-sidecar ready on http://{address} ({count} voices, default {default_voice})");
        }
        Err(error) => {
            failed.send_replace(Some(Arc::new(error)));
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn termination_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
