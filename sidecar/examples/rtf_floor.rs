//! The floor of synthesis speed: ONNX Runtime `run` time for a text's token ids, with the
//! voice's sessions set up exactly as the sidecar sets them up from the same flags.
//!
//! The text is split into sentences and turned into ids as the sidecar does, outside the
//! timed part; a round then times only `Voice::synthesize_ids` (the ONNX Runtime run, with
//! its input tensors built and its output clamped), sentence after sentence as one sidecar
//! worker would. `make bench` compares the sidecar and piper-tts against this.
//!
//! Protocol, so a benchmark can interleave these rounds with other subjects': after loading
//! and warming up, one JSON line describing the setup; then one timed round per line read
//! on stdin, each answered by a JSON line `{"synthesis_seconds", "audio_seconds"}`; exit at
//! the end of stdin.
//!
//! ```text
//! yes | head -5 | cargo run --release -p voxgate-sidecar --example rtf_floor -- \
//!     --voices-dir .deps/voices --text-file paragraph.txt
//! ```

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

use voxgate_sidecar::config::Config;
use voxgate_sidecar::text::split_sentences;
use voxgate_sidecar::voice::{EngineOptions, SynthesisOptions, Voice, VoiceCatalog};

#[derive(Debug, Parser)]
#[command(about = "ONNX Runtime run time for a text's ids, sessions set up as the sidecar's")]
struct Args {
    #[command(flatten)]
    sidecar: Config,

    /// UTF-8 text to synthesize.
    #[arg(long)]
    text_file: PathBuf,

    /// Untimed runs first, so the timed ones see warm sessions and allocator arenas.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rtf_floor: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let config = &args.sidecar;
    let engine = EngineOptions {
        sessions_per_voice: config.sessions_per_voice(),
        intra_op_threads: config.intra_op_threads.get(),
    };
    let catalog = VoiceCatalog::load_dir(&config.voices_dir, &engine)?;
    let voice = match &config.default_voice {
        Some(name) => catalog
            .get(name)
            .with_context(|| format!("no voice named {name:?}"))?,
        None => catalog
            .voices()
            .into_iter()
            .next()
            .context("no voice loaded")?,
    };
    let text = std::fs::read_to_string(&args.text_file)
        .with_context(|| format!("cannot read {}", args.text_file.display()))?;

    let started = Instant::now();
    let sentence_ids = split_sentences(&text)
        .iter()
        .map(|sentence| voice.text_to_ids(sentence))
        .collect::<Result<Vec<_>, _>>()?;
    let text_to_ids_seconds = started.elapsed().as_secs_f64();

    for _ in 0..args.warmup {
        synthesize_all(&voice, &sentence_ids)?;
    }

    let mut out = std::io::stdout().lock();
    let setup = json!({
        "voice": voice.info().name,
        "sentences": sentence_ids.len(),
        "ids": sentence_ids.iter().map(Vec::len).sum::<usize>(),
        "sessions_per_voice": engine.sessions_per_voice,
        "intra_op_threads": engine.intra_op_threads,
        "text_to_ids_seconds": text_to_ids_seconds,
    });
    writeln!(out, "{setup}")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        line?;
        writeln!(out, "{}", synthesize_all(&voice, &sentence_ids)?)?;
        out.flush()?;
    }
    Ok(())
}

/// One round: every sentence's model run in order; returns synthesis and audio seconds.
fn synthesize_all(voice: &Voice, sentence_ids: &[Vec<i64>]) -> anyhow::Result<serde_json::Value> {
    let options = SynthesisOptions::default();
    let mut synthesis_seconds = 0.0;
    let mut samples = 0usize;
    for ids in sentence_ids {
        let started = Instant::now();
        let audio = voice.synthesize_ids(ids, &options)?;
        synthesis_seconds += started.elapsed().as_secs_f64();
        samples += audio.len();
    }
    let audio_seconds = samples as f64 / f64::from(voice.info().sample_rate);
    Ok(json!({ "synthesis_seconds": synthesis_seconds, "audio_seconds": audio_seconds }))
}
