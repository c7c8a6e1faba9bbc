//! Request validation for the speech routes: method and content type, body size, then the
//! shared request rules (`voxgate_rules`: fields, types, ranges, text, voices, formats) and
//! the operator's policy on top of them (allowed formats, a narrower speed range, deny
//! patterns). Every refusal of a shared rule is the one the sidecar would make.

mod text;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::Deserialize;
use voxgate_rules::body::{self, Body};
use voxgate_rules::openai::{self, MAX_SPEED, MIN_SPEED};
use voxgate_rules::{coqui, form, CoquiParams, OpenAiSpeech, Resolved, ResponseFormat, RuleCode, RuleError, Speakers, SpeechApi, TextLimits, VoiceTable};

use crate::error::ConfigError;
use crate::decision::{Code, Rejection};
use crate::routes::Api;
use text::DenyPatterns;

/// Largest accepted `max_body_bytes`: the body is buffered in the filter's memory.
pub const MAX_BODY_BYTES_LIMIT: usize = 16 << 20;
/// Largest accepted `max_chars`.
pub const MAX_CHARS_LIMIT: usize = 1_000_000;

/// `text` in the plugin configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextRules {
    pub max_body_bytes: usize,
    /// In Unicode scalar values.
    pub max_chars: usize,
    /// Accept control, bidi and invisible characters (NUL is refused regardless).
    pub allow_control_chars: bool,
    /// Regular expressions (regex-lite syntax); a text matching any is refused.
    pub deny_patterns: Vec<String>,
    /// Allowed voices (after aliases are resolved), for `voice` and `model` alike; empty
    /// allows every voice of the catalog.
    pub voices: Vec<String>,
    /// The sidecar's voices, as its `GET /v1/audio/voices` lists them (rendered into this
    /// configuration by `tools/render_envoy.py`); empty: any voice name is let through.
    pub catalog: Catalog,
    /// Allowed `response_format` values, of those the sidecar produces; empty allows all.
    pub response_formats: Vec<String>,
    pub min_speed: f64,
    pub max_speed: f64,
}

impl Default for TextRules {
    fn default() -> Self {
        TextRules {
            max_body_bytes: 65_536,
            max_chars: 4_096,
            allow_control_chars: false,
            deny_patterns: Vec::new(),
            voices: Vec::new(),
            catalog: Catalog::default(),
            response_formats: Vec::new(),
            min_speed: 0.25,
            max_speed: 4.0,
        }
    }
}

/// `text.catalog`: the voices, the default voice and the alias table of the sidecar.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Catalog {
    pub voices: Vec<CatalogVoice>,
    pub default_voice: Option<String>,
    pub aliases: BTreeMap<String, String>,
}

/// One voice of the catalog: its name alone, or what `GET /v1/audio/voices` says of it, which
/// lets the filter refuse a speaker or a Coqui `language_id` the voice does not have.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum CatalogVoice {
    Name(String),
    Described(DescribedVoice),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescribedVoice {
    pub name: String,
    pub language: String,
    pub num_speakers: u32,
    #[serde(default)]
    pub speaker_ids: BTreeMap<String, u32>,
}

impl CatalogVoice {
    pub fn name(&self) -> &str {
        match self {
            CatalogVoice::Name(name) => name,
            CatalogVoice::Described(voice) => &voice.name,
        }
    }
}

/// What the filter knows of a voice beyond its name.
#[derive(Debug, Clone)]
struct VoiceFacts {
    language: String,
    speakers: Speakers,
}

/// What the rate limiter needs from a valid speech request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeechRequest {
    /// Characters (Unicode scalar values) of the text to synthesize.
    pub chars: u64,
    pub voice: Option<String>,
}

/// `TextRules` after checking, with deny patterns compiled once.
#[derive(Debug, Clone)]
pub struct TextValidator {
    max_body_bytes: usize,
    text: TextLimits,
    deny: DenyPatterns,
    voices: VoiceTable,
    /// By voice name; only voices the catalog describes.
    voice_facts: BTreeMap<String, VoiceFacts>,
    response_formats: Vec<ResponseFormat>,
    min_speed: f64,
    max_speed: f64,
}

impl TextRules {
    pub fn compile(self) -> Result<TextValidator, ConfigError> {
        if !(1..=MAX_BODY_BYTES_LIMIT).contains(&self.max_body_bytes) {
            return Err(ConfigError::new(
                "text.max_body_bytes",
                format!("must be between 1 and {MAX_BODY_BYTES_LIMIT}"),
            ));
        }
        if !(1..=MAX_CHARS_LIMIT).contains(&self.max_chars) {
            return Err(ConfigError::new("text.max_chars", format!("must be between 1 and {MAX_CHARS_LIMIT}")));
        }
        check_names(&self.voices, "text.voices")?;
        let names: Vec<String> = self.catalog.voices.iter().map(|v| v.name().to_owned()).collect();
        check_names(&names, "text.catalog.voices")?;
        let voice_facts = self
            .catalog
            .voices
            .into_iter()
            .filter_map(|voice| match voice {
                CatalogVoice::Name(_) => None,
                CatalogVoice::Described(v) => Some((
                    v.name,
                    VoiceFacts { language: v.language, speakers: Speakers::new(v.num_speakers, v.speaker_ids) },
                )),
            })
            .collect();
        let voices = VoiceTable::new(names, self.catalog.default_voice, self.catalog.aliases, self.voices)
            .map_err(|problem| ConfigError::new("text.catalog", problem))?;
        check_names(&self.response_formats, "text.response_formats")?;
        let response_formats = self
            .response_formats
            .iter()
            .enumerate()
            .map(|(index, name)| {
                ResponseFormat::from_name(name).ok_or_else(|| {
                    ConfigError::new(
                        format!("text.response_formats[{index}]"),
                        format!("must be one of {}", voxgate_rules::formats::supported_list()),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        // The sidecar synthesizes OpenAI's range only: a wider one would admit, and charge,
        // requests it refuses.
        if !(self.min_speed.is_finite() && (MIN_SPEED..=MAX_SPEED).contains(&self.min_speed)) {
            return Err(ConfigError::new("text.min_speed", format!("must be between {MIN_SPEED} and {MAX_SPEED}")));
        }
        if !(self.max_speed.is_finite() && (self.min_speed..=MAX_SPEED).contains(&self.max_speed)) {
            return Err(ConfigError::new("text.max_speed", format!("must be between min_speed and {MAX_SPEED}")));
        }
        Ok(TextValidator {
            max_body_bytes: self.max_body_bytes,
            text: TextLimits { max_chars: self.max_chars, allow_control_chars: self.allow_control_chars },
            deny: DenyPatterns::new(&self.deny_patterns)?,
            voices,
            voice_facts,
            response_formats,
            min_speed: self.min_speed,
            max_speed: self.max_speed,
        })
    }
}

fn check_names(names: &[String], field: &str) -> Result<(), ConfigError> {
    for (index, name) in names.iter().enumerate() {
        if name.trim().is_empty() {
            return Err(ConfigError::new(format!("{field}[{index}]"), "must not be empty"));
        }
        if names[..index].contains(name) {
            return Err(ConfigError::new(format!("{field}[{index}]"), "is listed twice"));
        }
    }
    Ok(())
}

impl TextValidator {
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// 413 when a body of `len` bytes (announced or buffered so far) is over the limit.
    pub fn check_body_size(&self, len: usize) -> Result<(), Rejection> {
        if len > self.max_body_bytes {
            return Err(Rejection::new(
                Code::BodyTooLarge,
                format!("the request body is larger than {} bytes", self.max_body_bytes),
            ));
        }
        Ok(())
    }

    /// 415 for a body type the route's API does not read. The method is the route's to check
    /// (`routes::Route::check_method`), before any body is looked at.
    pub fn check_content_type(&self, api: Api, content_type: Option<&str>) -> Result<(), Rejection> {
        match api.speech() {
            None => Ok(()),
            Some(speech) => check_body_format(speech, content_type),
        }
    }

    /// Validates a complete request body. For `POST /api/tts` without a body, use
    /// `validate_query` instead (Coqui clients send the text in the query string).
    pub fn validate_body(&self, api: Api, content_type: Option<&str>, body: &[u8]) -> Result<SpeechRequest, Rejection> {
        self.check_body_size(body.len())?;
        let Some(speech_api) = api.speech() else {
            return Ok(SpeechRequest { chars: 0, voice: None });
        };
        if speech_api == SpeechApi::OpenAi {
            let map = body::json_body(content_type, body)?;
            return self.openai(OpenAiSpeech::parse(&map, &self.text)?);
        }
        match body::parse_body(speech_api, content_type, body)? {
            Body::Json(map) => self.coqui(CoquiParams::from_json(&map)?),
            Body::Pairs(pairs) => self.coqui(CoquiParams::from_pairs(pairs)),
        }
    }

    /// Validates the query string (with or without the leading `?`) of `GET /api/tts`, or of
    /// `POST /api/tts` without a body. `None` for APIs that take no input from the query.
    pub fn validate_query(&self, api: Api, query: &str) -> Result<Option<SpeechRequest>, Rejection> {
        if api != Api::CoquiTts {
            return Ok(None);
        }
        let query = query.strip_prefix('?').unwrap_or(query);
        self.coqui(CoquiParams::from_pairs(form::parse_pairs(query)?)).map(Some)
    }

    /// The operator's policy on a request the shared rules admit.
    fn openai(&self, request: OpenAiSpeech<'_>) -> Result<SpeechRequest, Rejection> {
        if !self.response_formats.is_empty() && !self.response_formats.contains(&request.format) {
            let allowed: Vec<&str> = self.response_formats.iter().map(|f| f.name()).collect();
            return Err(Rejection::from(RuleError::invalid(
                "response_format",
                RuleCode::UnsupportedResponseFormat,
                format!("`response_format` must be one of: {}", allowed.join(", ")),
            )));
        }
        // The operator's range bounds the speeds clients ask for; one that asks none gets 1.
        if let Some(speed) = request.requested_speed {
            if !(self.min_speed..=self.max_speed).contains(&speed) {
                return Err(openai::speed_outside(self.min_speed, self.max_speed).into());
            }
        }
        let voice = self.voice(request.voice, request.model)?;
        if let Some((name, facts)) = self.facts(voice.as_deref()) {
            facts.speakers.resolve(name, request.speaker.as_deref(), "speaker")?;
        }
        self.deny.check("input", request.input)?;
        Ok(SpeechRequest { chars: request.chars, voice })
    }

    fn coqui(&self, params: CoquiParams) -> Result<SpeechRequest, Rejection> {
        let chars = params.check_text(&self.text)?;
        let voice = self.voice(params.voice(), None)?;
        if let Some((name, facts)) = self.facts(voice.as_deref()) {
            coqui::check_language(params.language(), name, &facts.language)?;
            facts.speakers.resolve(name, params.speaker_id.as_deref(), "speaker_id")?;
        }
        self.deny.check("text", params.text.as_deref().unwrap_or_default())?;
        Ok(SpeechRequest { chars, voice })
    }

    /// What the catalog says of the resolved voice (`None`: the default voice), if anything.
    fn facts(&self, voice: Option<&str>) -> Option<(&str, &VoiceFacts)> {
        let name = voice.or(self.voices.default_voice())?;
        self.voice_facts.get_key_value(name).map(|(name, facts)| (name.as_str(), facts))
    }

    /// The voice by the shared rules (`voxgate_rules::voices`): `None` for the default.
    fn voice(&self, voice: Option<&str>, model: Option<&str>) -> Result<Option<String>, Rejection> {
        match self.voices.resolve(voice, model)? {
            Resolved::Voice(name) => Ok(Some(name.to_string())),
            Resolved::Default => Ok(None),
        }
    }
}

fn check_body_format(api: SpeechApi, content_type: Option<&str>) -> Result<(), Rejection> {
    body::body_format(api, content_type).map(|_| ()).map_err(Rejection::from)
}
