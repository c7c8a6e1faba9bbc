//! Reads a Coqui VITS voice's `config.json` (and its speakers file, if any).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use anyhow::Context;

use super::{read_json, Scales, VoiceFormat, VoiceSpec};
use crate::tokenizer::coqui::{CoquiTextConfig, CoquiTokenizer};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Deserialize)]
struct CoquiConfig {
    audio: Audio,
    #[serde(default)]
    model_args: ModelArgs,
    /// Speaker names in id order (newer Coqui releases).
    #[serde(default)]
    speakers: Option<Vec<String>>,
    #[serde(default)]
    speakers_file: Option<String>,
    #[serde(default)]
    languages: Option<Vec<String>>,
    #[serde(flatten)]
    text: CoquiTextConfig,
}

#[derive(Debug, Deserialize)]
struct Audio {
    sample_rate: u32,
}

/// Coqui's `VitsArgs` defaults when the configuration leaves them out.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct ModelArgs {
    num_chars: Option<usize>,
    num_speakers: Option<u32>,
    speakers_file: Option<String>,
    inference_noise_scale: f32,
    length_scale: f32,
    inference_noise_scale_dp: f32,
}

impl Default for ModelArgs {
    fn default() -> Self {
        ModelArgs {
            num_chars: None,
            num_speakers: None,
            speakers_file: None,
            inference_noise_scale: 0.667,
            length_scale: 1.0,
            inference_noise_scale_dp: 1.0,
        }
    }
}

pub(super) fn load_spec(dir: &Path, model: &Path, config_path: &Path) -> anyhow::Result<VoiceSpec> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: CoquiConfig = serde_json::from_str(&python_json_to_json(&text))
        .with_context(|| format!("invalid {}", config_path.display()))?;
    if config.audio.sample_rate == 0 {
        anyhow::bail!("audio.sample_rate is 0");
    }
    let tokenizer = CoquiTokenizer::from_config(&config.text)?;
    let speaker_ids = speaker_ids(dir, &config)?;
    let stated_speakers = config.model_args.num_speakers.filter(|&n| n > 0);
    let num_speakers = stated_speakers.unwrap_or(u32::try_from(speaker_ids.len())?);
    let language = config
        .text
        .phoneme_language
        .clone()
        .or_else(|| config.languages.as_ref().and_then(|l| l.first().cloned()))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "und".to_string());
    Ok(VoiceSpec {
        model: model.to_path_buf(),
        format: VoiceFormat::Coqui,
        sample_rate: config.audio.sample_rate,
        language,
        num_symbols: config
            .model_args
            .num_chars
            .unwrap_or_else(|| tokenizer.num_symbols()),
        tokenizer: Tokenizer::Coqui(tokenizer),
        defaults: Scales {
            noise_scale: config.model_args.inference_noise_scale,
            length_scale: config.model_args.length_scale,
            noise_w: config.model_args.inference_noise_scale_dp,
        },
        speaker_ids,
        num_speakers,
    })
}

/// Speaker names → ids: the `speakers` list, else a `{name: id}` speakers file found
/// by its file name in the voice folder (Coqui stores the path of the machine that
/// trained the model).
fn speaker_ids(dir: &Path, config: &CoquiConfig) -> anyhow::Result<HashMap<String, u32>> {
    if let Some(names) = &config.speakers {
        return names
            .iter()
            .enumerate()
            .map(|(id, name)| Ok((name.clone(), u32::try_from(id)?)))
            .collect();
    }
    let file = config
        .speakers_file
        .as_deref()
        .or(config.model_args.speakers_file.as_deref());
    let Some(file_name) = file.and_then(|f| Path::new(f).file_name()) else {
        return Ok(HashMap::new());
    };
    let local = dir.join(file_name);
    if !local.is_file() {
        tracing::warn!(voice = %dir.display(), "speakers file not in the voice folder; speakers have no names");
        return Ok(HashMap::new());
    }
    read_json(&local)
}

/// Coqui saves configurations with Python's `json`, which writes the non-finite floats
/// as bare `NaN`, `Infinity` and `-Infinity`; they become `null` (no field read here
/// is one of them).
pub(crate) fn python_json_to_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            let len = if c == '\\' {
                rest.chars().take(2).map(char::len_utf8).sum()
            } else {
                c.len_utf8()
            };
            in_string = c != '"';
            out.push_str(&rest[..len]);
            rest = &rest[len..];
            continue;
        }
        if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        in_string = c == '"';
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_floats_become_null_outside_strings() {
        let text =
            r#"{"a": Infinity, "b": -Infinity, "c": [NaN], "d": "NaN \" Infinity", "e": 1.5}"#;
        let value: serde_json::Value = serde_json::from_str(&python_json_to_json(text)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"a": null, "b": null, "c": [null], "d": "NaN \" Infinity", "e": 1.5})
        );
    }
}
