//! Reads a Piper voice's `NAME.onnx.json`.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{read_json, Scales, VoiceFormat, VoiceSpec};
use crate::tokenizer::piper::PiperTokenizer;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Deserialize)]
struct PiperConfig {
    audio: Audio,
    espeak: Option<Espeak>,
    #[serde(default)]
    inference: Inference,
    #[serde(default)]
    phoneme_type: Option<String>,
    #[serde(default)]
    num_symbols: Option<usize>,
    #[serde(default)]
    num_speakers: u32,
    #[serde(default)]
    speaker_id_map: HashMap<String, u32>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    phoneme_map: HashMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Audio {
    sample_rate: u32,
}

#[derive(Debug, Deserialize)]
struct Espeak {
    voice: String,
}

/// Piper's defaults when the configuration leaves them out.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct Inference {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for Inference {
    fn default() -> Self {
        Inference {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

pub(super) fn load_spec(model: &Path, config_path: &Path) -> anyhow::Result<VoiceSpec> {
    let config: PiperConfig = read_json(config_path)?;
    if let Some(kind) = config
        .phoneme_type
        .as_deref()
        .filter(|kind| *kind != "espeak")
    {
        anyhow::bail!("unsupported phoneme_type {kind:?} (only espeak)");
    }
    let espeak_voice = config
        .espeak
        .map(|e| e.voice)
        .ok_or_else(|| anyhow::anyhow!("no espeak.voice"))?;
    if config.audio.sample_rate == 0 {
        anyhow::bail!("audio.sample_rate is 0");
    }
    let largest_id = config
        .phoneme_id_map
        .values()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0);
    let num_symbols = config
        .num_symbols
        .unwrap_or(0)
        .max(usize::try_from(largest_id)? + 1);
    let tokenizer = PiperTokenizer::new(&espeak_voice, config.phoneme_id_map, config.phoneme_map)?;
    Ok(VoiceSpec {
        model: model.to_path_buf(),
        format: VoiceFormat::Piper,
        sample_rate: config.audio.sample_rate,
        language: espeak_voice,
        tokenizer: Tokenizer::Piper(tokenizer),
        defaults: Scales {
            noise_scale: config.inference.noise_scale,
            length_scale: config.inference.length_scale,
            noise_w: config.inference.noise_w,
        },
        num_symbols,
        speaker_ids: config.speaker_id_map,
        num_speakers: config.num_speakers,
    })
}
