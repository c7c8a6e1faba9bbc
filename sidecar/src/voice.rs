//! The voices folder and synthesis with one voice: text → ids → ONNX → samples.
//!
//! A folder is scanned once at start; each entry is detected by its layout:
//! - Piper: `NAME.onnx` next to `NAME.onnx.json`;
//! - Coqui VITS: a folder `NAME/` holding `model.onnx` and `config.json` (as written
//!   by Coqui's `Vits.export_onnx`).
//!
//! An entry that cannot be loaded is logged and skipped; a folder without any usable
//! voice is an error.

pub(crate) mod coqui;
mod piper;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::inference::{
    GraphOptimization, InferenceError, Interrupt, ModelInput, SessionPool, SessionSettings,
};
use crate::phonemize::PhonemizeError;
use crate::tokenizer::Tokenizer;
use voxgate_rules::Speakers;

/// `length_scale` accepted by [`Voice::synthesize`]; values outside are clamped so
/// one request cannot ask for minutes of audio per word.
const LENGTH_SCALE_RANGE: (f32, f32) = (0.1, 10.0);
/// `noise_scale` and `noise_w` accepted by [`Voice::synthesize`], clamped likewise.
const NOISE_RANGE: (f32, f32) = (0.0, 2.0);
/// Most sessions a voice gets by default, whatever the number of cores.
const MAX_DEFAULT_SESSIONS: usize = 4;
/// Spoken once when a voice loads to learn how much audio one token id makes
/// ([`Voice::predict_seconds`]): ordinary prose, long enough to average over phonemes.
const CALIBRATION_TEXT: &str =
    "The quick brown fox jumps over the lazy dog, and then it runs back home before dinner.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiceFormat {
    Piper,
    Coqui,
}

impl VoiceFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            VoiceFormat::Piper => "piper",
            VoiceFormat::Coqui => "coqui",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VoiceInfo {
    pub name: String,
    pub format: VoiceFormat,
    pub sample_rate: u32,
    /// espeak-ng voice or Coqui `phoneme_language` (e.g. `en-us`); `und` when unknown.
    pub language: String,
    /// How many speakers, and their names (the shared rules resolve a request's speaker).
    pub speakers: Speakers,
    /// The voice's default scales, used when a request leaves them unset.
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
}

/// How each voice's ONNX sessions are set up.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Sessions per voice: how many requests one voice synthesizes at once.
    pub sessions_per_voice: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_op_threads: usize,
}

impl Default for EngineOptions {
    /// One single-threaded session per core (at most [`MAX_DEFAULT_SESSIONS`]), the
    /// remaining cores shared out as intra-op threads.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let sessions_per_voice = cores.clamp(1, MAX_DEFAULT_SESSIONS);
        EngineOptions {
            sessions_per_voice,
            intra_op_threads: (cores / sessions_per_voice).max(1),
        }
    }
}

/// Per-request synthesis settings; `None` takes the voice's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SynthesisOptions {
    pub speaker: Option<u32>,
    pub length_scale: Option<f32>,
    pub noise_scale: Option<f32>,
    pub noise_w: Option<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthesisError {
    #[error("speaker {speaker} is out of range (the voice has {num_speakers})")]
    SpeakerOutOfRange { speaker: u32, num_speakers: u32 },
    #[error("the text has nothing to speak")]
    EmptyText,
    #[error("phonemization failed: {0}")]
    Phonemize(#[from] PhonemizeError),
    #[error("inference failed: {0}")]
    Inference(#[from] InferenceError),
}

/// The scales a model run takes, in the model's order.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scales {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

/// What a voice's configuration says, before its model is loaded.
#[derive(Debug)]
struct VoiceSpec {
    model: PathBuf,
    format: VoiceFormat,
    sample_rate: u32,
    language: String,
    tokenizer: Tokenizer,
    defaults: Scales,
    /// Ids the model's embedding accepts: `0..num_symbols`.
    num_symbols: usize,
    /// Speaker names → ids.
    speaker_ids: HashMap<String, u32>,
    /// Speaker count the configuration states (0 when it states none).
    num_speakers: u32,
}

/// One loaded voice; shared by all requests.
#[derive(Debug)]
pub struct Voice {
    info: VoiceInfo,
    tokenizer: Tokenizer,
    num_symbols: usize,
    pool: SessionPool,
    /// Seconds of audio one token id makes at length scale 1, measured at load.
    seconds_per_id: f64,
}

impl Voice {
    fn load(name: String, spec: VoiceSpec, settings: &SessionSettings) -> anyhow::Result<Voice> {
        if let Some(espeak_voice) = spec.tokenizer.espeak_voice() {
            crate::phonemize::check_voice(espeak_voice)?;
        }
        let pool = SessionPool::load(&spec.model, settings)?;
        let num_speakers = match (pool.takes_speaker(), spec.num_speakers) {
            (true, 0) => anyhow::bail!(
                "the model takes a speaker id but the configuration states no speaker count"
            ),
            (true, n) => n,
            (false, 0 | 1) => 1,
            (false, n) => anyhow::bail!(
                "the configuration states {n} speakers but the model takes no speaker id"
            ),
        };
        let mut voice = Voice {
            info: VoiceInfo {
                name,
                format: spec.format,
                sample_rate: spec.sample_rate,
                language: spec.language,
                speakers: Speakers::new(num_speakers, spec.speaker_ids.into_iter().collect()),
                noise_scale: spec.defaults.noise_scale,
                length_scale: spec.defaults.length_scale,
                noise_w: spec.defaults.noise_w,
            },
            tokenizer: spec.tokenizer,
            num_symbols: spec.num_symbols,
            pool,
            seconds_per_id: 0.0,
        };
        voice.seconds_per_id = voice.calibrate()?;
        Ok(voice)
    }

    /// Seconds of audio per token id at length scale 1, from one synthesis of
    /// [`CALIBRATION_TEXT`] with the voice's default scales.
    fn calibrate(&self) -> anyhow::Result<f64> {
        let ids = self
            .text_to_ids(CALIBRATION_TEXT)
            .context("phonemizing the calibration text")?;
        let options = SynthesisOptions {
            length_scale: Some(1.0),
            ..SynthesisOptions::default()
        };
        let samples = self
            .synthesize_ids(&ids, &options)
            .context("synthesizing the calibration text")?;
        let seconds = samples.len() as f64 / f64::from(self.info.sample_rate);
        // A model that says nothing for a whole sentence is broken, but predicting zero audio
        // for it would make every text free: a floor of 10 ms per id keeps costs positive.
        Ok((seconds / ids.len() as f64).max(0.01))
    }

    /// Seconds of audio `ids` token ids are expected to make at `length_scale`: durations
    /// scale with the length scale, and the audio of a VITS voice is close to proportional to
    /// its phonemes, whatever the text they came from.
    pub fn predict_seconds(&self, ids: usize, length_scale: f32) -> f64 {
        let length_scale = length_scale.clamp(LENGTH_SCALE_RANGE.0, LENGTH_SCALE_RANGE.1);
        ids as f64 * self.seconds_per_id * f64::from(length_scale)
    }

    /// The length scale a synthesis with `opts` runs at.
    pub fn length_scale(&self, opts: &SynthesisOptions) -> f32 {
        self.scales(opts)[1]
    }

    pub fn info(&self) -> &VoiceInfo {
        &self.info
    }

    /// Sessions in this voice's pool: how many syntheses run at once.
    pub fn concurrency(&self) -> usize {
        self.pool.size()
    }

    /// The model's token ids for one chunk of text.
    pub fn text_to_ids(&self, text: &str) -> Result<Vec<i64>, SynthesisError> {
        if text.trim().is_empty() {
            return Err(SynthesisError::EmptyText);
        }
        let encoded = self.tokenizer.text_to_ids(text)?;
        if encoded.skipped > 0 {
            tracing::debug!(voice = %self.info.name, skipped = encoded.skipped, "symbols without an id were skipped");
        }
        if encoded.symbols == 0 {
            return Err(SynthesisError::EmptyText);
        }
        Ok(encoded.ids)
    }

    /// Blocking; safe to call from many threads at once (waits for a free session of
    /// the pool). One sentence/chunk of text in, mono f32 samples in [-1, 1] at
    /// `info().sample_rate` out.
    pub fn synthesize(
        &self,
        text: &str,
        opts: &SynthesisOptions,
    ) -> Result<Vec<f32>, SynthesisError> {
        self.check_speaker(opts.speaker)?;
        let ids = self.text_to_ids(text)?;
        self.synthesize_ids(&ids, opts)
    }

    /// Runs the model on token ids as they are (no text processing).
    pub fn synthesize_ids(
        &self,
        ids: &[i64],
        opts: &SynthesisOptions,
    ) -> Result<Vec<f32>, SynthesisError> {
        self.synthesize_ids_on(ids, opts, &Interrupt::new()?, 0)
    }

    /// [`Voice::synthesize_ids`] on the session of scheduler worker `worker`, stopped early
    /// when `interrupt` is stopped.
    pub fn synthesize_ids_on(
        &self,
        ids: &[i64],
        opts: &SynthesisOptions,
        interrupt: &Interrupt,
        worker: usize,
    ) -> Result<Vec<f32>, SynthesisError> {
        let speaker = self.check_speaker(opts.speaker)?;
        if ids.is_empty() {
            return Err(SynthesisError::EmptyText);
        }
        if let Some(bad) = ids
            .iter()
            .find(|&&id| id < 0 || id as usize >= self.num_symbols)
        {
            return Err(SynthesisError::Inference(InferenceError::Run(format!(
                "token id {bad} is outside the model's {} symbols",
                self.num_symbols
            ))));
        }
        let input = ModelInput {
            ids,
            scales: self.scales(opts),
            speaker: self.pool.takes_speaker().then_some(i64::from(speaker)),
        };
        let mut samples = self.pool.run(&input, interrupt, worker)?;
        for sample in &mut samples {
            *sample = if sample.is_finite() {
                sample.clamp(-1.0, 1.0)
            } else {
                0.0
            };
        }
        Ok(samples)
    }

    /// The speaker to use; validated here because an out-of-range id fails inside
    /// the model's embedding lookup.
    fn check_speaker(&self, speaker: Option<u32>) -> Result<u32, SynthesisError> {
        let speaker = speaker.unwrap_or(0);
        if speaker >= self.info.speakers.count() {
            return Err(SynthesisError::SpeakerOutOfRange {
                speaker,
                num_speakers: self.info.speakers.count(),
            });
        }
        Ok(speaker)
    }

    /// `[noise_scale, length_scale, noise_w]`, the model's `scales` input.
    fn scales(&self, opts: &SynthesisOptions) -> [f32; 3] {
        let pick = |requested: Option<f32>, default: f32, (low, high): (f32, f32)| {
            requested
                .filter(|v| v.is_finite())
                .map_or(default, |v| v.clamp(low, high))
        };
        [
            pick(opts.noise_scale, self.info.noise_scale, NOISE_RANGE),
            pick(
                opts.length_scale,
                self.info.length_scale,
                LENGTH_SCALE_RANGE,
            ),
            pick(opts.noise_w, self.info.noise_w, NOISE_RANGE),
        ]
    }
}

/// All voices of the voices folder, by name.
#[derive(Debug)]
pub struct VoiceCatalog {
    voices: BTreeMap<String, Arc<Voice>>,
}

impl VoiceCatalog {
    /// Scans `dir` and loads every voice in it (blocking: models load here), with
    /// ONNX Runtime's full graph optimization.
    pub fn load_dir(dir: &Path, opts: &EngineOptions) -> anyhow::Result<VoiceCatalog> {
        Self::load_dir_with_optimization(dir, opts, GraphOptimization::default())
    }

    /// [`VoiceCatalog::load_dir`] with a chosen graph optimization level.
    pub fn load_dir_with_optimization(
        dir: &Path,
        opts: &EngineOptions,
        optimization: GraphOptimization,
    ) -> anyhow::Result<VoiceCatalog> {
        let settings = SessionSettings {
            sessions: opts.sessions_per_voice,
            intra_op_threads: opts.intra_op_threads,
            optimization,
        };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the voices folder {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        let mut voices = BTreeMap::new();
        for entry in entries {
            let Some((name, found)) = detect(&entry) else {
                continue;
            };
            if voices.contains_key(&name) {
                tracing::warn!(entry = %entry.display(), voice = %name, "voice skipped: another entry has the same name");
                continue;
            }
            match found.and_then(|spec| Voice::load(name.clone(), spec, &settings)) {
                Ok(voice) => {
                    tracing::info!(
                        voice = %name,
                        format = voice.info.format.as_str(),
                        sample_rate = voice.info.sample_rate,
                        speakers = voice.info.speakers.count(),
                        sessions = voice.concurrency(),
                        audio_seconds_per_id = format_args!("{:.4}", voice.seconds_per_id),
                        "voice loaded"
                    );
                    voices.insert(name, Arc::new(voice));
                }
                Err(error) => {
                    tracing::warn!(entry = %entry.display(), error = format!("{error:#}"), "voice skipped")
                }
            }
        }
        if voices.is_empty() {
            anyhow::bail!("no usable voice in {}", dir.display());
        }
        Ok(VoiceCatalog { voices })
    }

    /// All voices, sorted by name.
    pub fn voices(&self) -> Vec<Arc<Voice>> {
        self.voices.values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Voice>> {
        self.voices.get(name).cloned()
    }
}

/// Recognizes a voice entry by its layout; `None` for files that are not a voice
/// (such as a Piper voice's `.onnx.json`).
fn detect(entry: &Path) -> Option<(String, anyhow::Result<VoiceSpec>)> {
    let file_name = entry.file_name()?.to_str()?;
    if entry.is_dir() {
        let (model, config) = (entry.join("model.onnx"), entry.join("config.json"));
        if !model.is_file() || !config.is_file() {
            tracing::warn!(entry = %entry.display(), "folder skipped: a Coqui voice needs model.onnx and config.json");
            return None;
        }
        return Some((
            file_name.to_string(),
            coqui::load_spec(entry, &model, &config),
        ));
    }
    let name = file_name.strip_suffix(".onnx")?;
    let config = entry.with_file_name(format!("{file_name}.json"));
    if !config.is_file() {
        tracing::warn!(entry = %entry.display(), "model skipped: a Piper voice needs {file_name}.json beside it");
        return None;
    }
    Some((name.to_string(), piper::load_spec(entry, &config)))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("invalid {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_engine_options_use_single_threaded_sessions_on_small_machines() {
        let opts = EngineOptions::default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(opts.sessions_per_voice >= 1 && opts.sessions_per_voice <= MAX_DEFAULT_SESSIONS);
        assert!(opts.sessions_per_voice * opts.intra_op_threads <= cores.max(1));
        if cores <= MAX_DEFAULT_SESSIONS {
            assert_eq!((opts.sessions_per_voice, opts.intra_op_threads), (cores, 1));
        }
    }

    #[test]
    fn a_folder_without_voices_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README.txt"), "not a voice").unwrap();
        let error = VoiceCatalog::load_dir(dir.path(), &EngineOptions::default()).unwrap_err();
        assert!(error.to_string().contains("no usable voice"), "{error}");
    }
}
