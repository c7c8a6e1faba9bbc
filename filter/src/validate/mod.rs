//! Request validation for the speech routes: method and content type, body size, and the
//! fields of an OpenAI speech request or a Coqui TTS request (JSON, form or query string),
//! down to the rules for the text itself.

mod form;
mod json;
mod media;
mod text;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use voxgate_rules::{Resolved, ResponseFormat, RuleError, StreamMode, VoiceTable};

use crate::config::ConfigError;
use crate::decision::Rejection;
use media::MediaType;
pub(crate) use text::forbidden_kind;
use text::TextPolicy;

/// Largest accepted `max_body_bytes`: the body is buffered in the filter's memory.
pub const MAX_BODY_BYTES_LIMIT: usize = 16 << 20;
/// Largest accepted `max_chars`.
pub const MAX_CHARS_LIMIT: usize = 1_000_000;

/// The API a route speaks (`api` in the route configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Api {
    /// `POST /v1/audio/speech`, OpenAI's speech API.
    #[serde(rename = "openai_speech")]
    OpenAiSpeech,
    /// `GET|POST /api/tts`, Coqui's TTS server API.
    #[serde(rename = "coqui_tts")]
    CoquiTts,
    /// Everything else (voices, models, health): no body or text to validate.
    #[serde(rename = "metadata")]
    Metadata,
}

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

/// `text.catalog`: the voice names, the default voice and the alias table of the sidecar.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Catalog {
    pub voices: Vec<String>,
    pub default_voice: Option<String>,
    pub aliases: BTreeMap<String, String>,
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
    text: TextPolicy,
    voices: VoiceTable,
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
        check_names(&self.catalog.voices, "text.catalog.voices")?;
        let voices = VoiceTable::new(self.catalog.voices, self.catalog.default_voice, self.catalog.aliases, self.voices)
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
        if !(self.min_speed.is_finite() && self.min_speed > 0.0) {
            return Err(ConfigError::new("text.min_speed", "must be a number above 0"));
        }
        if !(self.max_speed.is_finite() && self.max_speed >= self.min_speed) {
            return Err(ConfigError::new("text.max_speed", "must be a number not below min_speed"));
        }
        Ok(TextValidator {
            max_body_bytes: self.max_body_bytes,
            text: TextPolicy::new(self.max_chars, self.allow_control_chars, &self.deny_patterns)?,
            voices,
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

/// The fields of a Coqui request, from a JSON object or from form/query pairs.
enum Fields {
    Json(Map<String, Value>),
    Pairs(BTreeMap<String, String>),
}

fn invalid_field(name: &str, expected: &str) -> Rejection {
    Rejection::new(400, "invalid_field", format!("`{name}` must be {expected}"))
}

fn missing_field(name: &str) -> Rejection {
    Rejection::new(400, "missing_field", format!("`{name}` is required"))
}

/// A string member; `null` counts as absent.
fn json_string<'a>(map: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, Rejection> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid_field(name, "a string")),
    }
}

fn json_required_string<'a>(map: &'a Map<String, Value>, name: &str) -> Result<&'a str, Rejection> {
    match map.get(name) {
        None => Err(missing_field(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid_field(name, "a string")),
    }
}

fn json_number(map: &Map<String, Value>, name: &str) -> Result<Option<f64>, Rejection> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| invalid_field(name, "a number")),
        Some(_) => Err(invalid_field(name, "a number")),
    }
}

fn json_bool(map: &Map<String, Value>, name: &str) -> Result<Option<bool>, Rejection> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid_field(name, "true or false")),
    }
}

impl Fields {
    fn optional_string(&self, name: &str) -> Result<Option<&str>, Rejection> {
        match self {
            Fields::Pairs(pairs) => Ok(pairs.get(name).map(String::as_str)),
            Fields::Json(map) => json_string(map, name),
        }
    }

    fn required_string(&self, name: &str) -> Result<&str, Rejection> {
        match self {
            Fields::Pairs(pairs) => pairs.get(name).map(String::as_str).ok_or_else(|| missing_field(name)),
            Fields::Json(map) => json_required_string(map, name),
        }
    }

    /// A speaker: a name, or in JSON also a non-negative integer index.
    fn check_speaker(&self, name: &str) -> Result<(), Rejection> {
        let expected = "a string or a non-negative integer";
        match self {
            Fields::Json(map) => match map.get(name) {
                None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
                Some(Value::Number(n)) if n.as_u64().is_some() => Ok(()),
                Some(_) => Err(invalid_field(name, expected)),
            },
            Fields::Pairs(_) => Ok(()),
        }
    }
}

impl TextValidator {
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// 413 when a body of `len` bytes (announced or buffered so far) is over the limit.
    pub fn check_body_size(&self, len: usize) -> Result<(), Rejection> {
        if len > self.max_body_bytes {
            return Err(Rejection::new(
                413,
                "body_too_large",
                format!("the request body is larger than {} bytes", self.max_body_bytes),
            ));
        }
        Ok(())
    }

    /// 405 for a method the route does not serve, 415 for a body type it does not read.
    pub fn check_content_type(&self, api: Api, method: &str, content_type: Option<&str>) -> Result<(), Rejection> {
        match (api, method) {
            (Api::Metadata, _) | (Api::CoquiTts, "GET") => Ok(()),
            (Api::OpenAiSpeech, "POST") | (Api::CoquiTts, "POST") => body_format(api, content_type).map(|_| ()),
            (Api::OpenAiSpeech, _) => Err(method_not_allowed("POST")),
            (Api::CoquiTts, _) => Err(method_not_allowed("GET, POST")),
        }
    }

    /// Validates a complete request body. For `POST /api/tts` without a body, use
    /// `validate_query` instead (Coqui clients send the text in the query string).
    pub fn validate_body(&self, api: Api, content_type: Option<&str>, body: &[u8]) -> Result<SpeechRequest, Rejection> {
        self.check_body_size(body.len())?;
        if api == Api::Metadata {
            return Ok(SpeechRequest { chars: 0, voice: None });
        }
        let format = body_format(api, content_type)?;
        let text = std::str::from_utf8(body).map_err(|e| {
            Rejection::new(400, "invalid_utf8", format!("the request body is not valid UTF-8 (byte {})", e.valid_up_to()))
        })?;
        let fields = match format {
            BodyFormat::Json => Fields::Json(json::parse_object(text)?),
            BodyFormat::Form => Fields::Pairs(form::parse_pairs(text)?),
            BodyFormat::None if body.is_empty() => Fields::Pairs(BTreeMap::new()),
            BodyFormat::None => return Err(unsupported_media_type(api)),
        };
        match (api, fields) {
            (Api::OpenAiSpeech, Fields::Json(map)) => self.openai(&map),
            (Api::OpenAiSpeech, _) => Err(unsupported_media_type(api)),
            (_, fields) => self.coqui(&fields),
        }
    }

    /// Validates the query string (with or without the leading `?`) of `GET /api/tts`, or of
    /// `POST /api/tts` without a body. `None` for APIs that take no input from the query.
    pub fn validate_query(&self, api: Api, query: &str) -> Result<Option<SpeechRequest>, Rejection> {
        if api != Api::CoquiTts {
            return Ok(None);
        }
        let query = query.strip_prefix('?').unwrap_or(query);
        self.coqui(&Fields::Pairs(form::parse_pairs(query)?)).map(Some)
    }

    /// OpenAI speech fields. Unknown fields are allowed: OpenAI adds fields over time and
    /// clients send them; the sidecar ignores what it does not know.
    fn openai(&self, map: &Map<String, Value>) -> Result<SpeechRequest, Rejection> {
        let input = json_required_string(map, "input")?;
        let format = ResponseFormat::parse(json_string(map, "response_format")?)?;
        if !self.response_formats.is_empty() && !self.response_formats.contains(&format) {
            let allowed: Vec<&str> = self.response_formats.iter().map(|f| f.name()).collect();
            return Err(Rejection::from(RuleError::invalid(
                "response_format",
                "unsupported_response_format",
                format!("`response_format` must be one of: {}", allowed.join(", ")),
            )));
        }
        if let Some(speed) = json_number(map, "speed")? {
            if !(self.min_speed..=self.max_speed).contains(&speed) {
                return Err(Rejection::new(
                    400,
                    "speed_out_of_range",
                    format!("`speed` must be between {} and {}", self.min_speed, self.max_speed),
                ));
            }
        }
        StreamMode::parse(json_bool(map, "stream")?, json_string(map, "stream_format")?)?;
        let voice = self.voice(json_string(map, "voice")?, json_string(map, "model")?)?;
        let chars = self.text.check("input", input)?;
        Ok(SpeechRequest { chars, voice })
    }

    /// Coqui TTS server fields (`voice` too, checked like OpenAI's when present).
    fn coqui(&self, fields: &Fields) -> Result<SpeechRequest, Rejection> {
        let text = fields.required_string("text")?;
        fields.check_speaker("speaker_id")?;
        fields.optional_string("language_id")?;
        fields.optional_string("style_wav")?;
        // An empty `voice`, as forms send it, is no voice.
        let voice = self.voice(fields.optional_string("voice")?.filter(|v| !v.is_empty()), None)?;
        let chars = self.text.check("text", text)?;
        Ok(SpeechRequest { chars, voice })
    }

    /// The voice by the shared rules (`voxgate_rules::voices`): `None` for the default.
    fn voice(&self, voice: Option<&str>, model: Option<&str>) -> Result<Option<String>, Rejection> {
        match self.voices.resolve(voice, model)? {
            Resolved::Voice(name) => Ok(Some(name.to_string())),
            Resolved::Default => Ok(None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    Json,
    Form,
    /// No `Content-Type`: only an empty body is acceptable (Coqui, text in the query).
    None,
}

fn body_format(api: Api, content_type: Option<&str>) -> Result<BodyFormat, Rejection> {
    let media = match content_type.map(media::parse) {
        None => None,
        Some(Ok(media)) => Some(media),
        Some(Err(())) => return Err(unsupported_media_type(api)),
    };
    match (api, media) {
        (_, Some(MediaType::Json)) => Ok(BodyFormat::Json),
        (Api::CoquiTts, Some(MediaType::Form)) => Ok(BodyFormat::Form),
        (Api::CoquiTts, None) => Ok(BodyFormat::None),
        _ => Err(unsupported_media_type(api)),
    }
}

fn unsupported_media_type(api: Api) -> Rejection {
    let accepted = match api {
        Api::CoquiTts => "application/json or application/x-www-form-urlencoded (UTF-8)",
        _ => "application/json (UTF-8)",
    };
    Rejection::new(415, "unsupported_media_type", format!("the request body must be {accepted}"))
}

fn method_not_allowed(allow: &str) -> Rejection {
    Rejection::new(405, "method_not_allowed", format!("this route accepts {allow}")).with_header("Allow", allow)
}
