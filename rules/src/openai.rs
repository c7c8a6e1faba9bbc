//! The fields of an OpenAI speech request (`POST /v1/audio/speech`): `model`, `input`,
//! `voice`, `response_format`, `speed`, `stream`/`stream_format`, and `speaker` for
//! multi-speaker voices. `instructions` and fields unknown here are accepted and ignored:
//! OpenAI adds fields over time, clients send them, and VITS voices take no style prompt.

use serde_json::{Map, Value};

use crate::error::{RuleCode, RuleError};
use crate::fields;
use crate::formats::{ResponseFormat, StreamMode};
use crate::text::TextLimits;

/// The slowest and fastest `speed`, as OpenAI's API.
pub const MIN_SPEED: f64 = 0.25;
pub const MAX_SPEED: f64 = 4.0;

/// A speech request whose fields have their types and ranges checked. The voice is resolved
/// afterwards (`VoiceTable::resolve`), from `voice` and `model`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiSpeech<'a> {
    pub model: Option<&'a str>,
    pub input: &'a str,
    /// Characters (Unicode scalar values) of `input`.
    pub chars: u64,
    pub voice: Option<&'a str>,
    /// A speaker name or index, as text.
    pub speaker: Option<String>,
    pub format: ResponseFormat,
    /// `speed` as sent; `None` when absent (then 1, see `speed()`).
    pub requested_speed: Option<f64>,
    pub stream: StreamMode,
}

impl<'a> OpenAiSpeech<'a> {
    /// Checks each field in one fixed order, so that a request with several faults gets the
    /// same refusal from the filter and from the sidecar.
    pub fn parse(map: &'a Map<String, Value>, text: &TextLimits) -> Result<Self, RuleError> {
        let input = fields::required_string(map, "input")?;
        let format = ResponseFormat::parse(fields::string(map, "response_format")?)?;
        let requested_speed = fields::number(map, "speed")?.map(check_speed).transpose()?;
        let stream = StreamMode::parse(
            fields::boolean(map, "stream")?,
            fields::string(map, "stream_format")?,
        )?;
        let model = fields::string(map, "model")?;
        let voice = fields::string(map, "voice")?;
        let speaker = fields::speaker(map, "speaker")?;
        let chars = text.check("input", input)?;
        Ok(OpenAiSpeech {
            model,
            input,
            chars,
            voice,
            speaker,
            format,
            requested_speed,
            stream,
        })
    }

    /// The speed to synthesize at: as requested, else 1.
    pub fn speed(&self) -> f64 {
        self.requested_speed.unwrap_or(1.0)
    }
}

/// `speed` within OpenAI's range.
pub fn check_speed(speed: f64) -> Result<f64, RuleError> {
    if speed.is_finite() && (MIN_SPEED..=MAX_SPEED).contains(&speed) {
        Ok(speed)
    } else {
        Err(speed_outside(MIN_SPEED, MAX_SPEED))
    }
}

/// 400 `invalid_speed` for a range `[min, max]` (an operator may narrow OpenAI's).
pub fn speed_outside(min: f64, max: f64) -> RuleError {
    RuleError::invalid(
        "speed",
        RuleCode::InvalidSpeed,
        format!("`speed` must be between {min} and {max}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<(ResponseFormat, f64, StreamMode, u64), &'static str> {
        let map = body.as_object().expect("test bodies are objects");
        OpenAiSpeech::parse(map, &TextLimits::default())
            .map(|r| (r.format, r.speed(), r.stream, r.chars))
            .map_err(|e| e.code.as_str())
    }

    #[test]
    fn a_minimal_request_gets_openai_defaults() {
        assert_eq!(parse(json!({"input": "Hello."})), Ok((ResponseFormat::Mp3, 1.0, StreamMode::Off, 6)));
        let value = json!({"model": "tts-1", "input": "Hi there.", "voice": "alloy", "speaker": 2,
                           "response_format": "PCM", "speed": 1.5, "stream": true,
                           "instructions": "Speak cheerfully.", "unknown": [1]});
        let request = OpenAiSpeech::parse(value.as_object().unwrap(), &TextLimits::default()).unwrap();
        assert_eq!((request.model, request.voice), (Some("tts-1"), Some("alloy")));
        assert_eq!(request.speaker.as_deref(), Some("2"));
        assert_eq!((request.format, request.speed(), request.stream), (ResponseFormat::Pcm, 1.5, StreamMode::Audio));
    }

    #[test]
    fn each_bad_field_has_its_code() {
        let cases = [
            (json!({}), "missing_field"),
            (json!({"input": null}), "missing_field"),
            (json!({"input": 5}), "invalid_type"),
            (json!({"input": ""}), "empty_input"),
            (json!({"input": "a".repeat(4097)}), "input_too_long"),
            (json!({"input": "a\u{202E}b"}), "forbidden_character"),
            (json!({"input": "Hi.", "speed": 5}), "invalid_speed"),
            (json!({"input": "Hi.", "speed": 0.1}), "invalid_speed"),
            (json!({"input": "Hi.", "speed": "fast"}), "invalid_type"),
            (json!({"input": "Hi.", "response_format": "aac"}), "unsupported_response_format"),
            (json!({"input": "Hi.", "stream": "yes"}), "invalid_type"),
            (json!({"input": "Hi.", "stream_format": "events"}), "unsupported_stream_format"),
            (json!({"input": "Hi.", "speaker": -1}), "invalid_type"),
            (json!({"input": "Hi.", "voice": 3}), "invalid_type"),
            (json!({"input": "Hi.", "model": false}), "invalid_type"),
        ];
        for (body, code) in cases {
            let shown = body.to_string();
            assert_eq!(parse(body), Err(code), "{shown}");
        }
    }

    #[test]
    fn several_faults_are_reported_in_one_order() {
        // The text is checked last: a bad speed is reported before an empty input.
        assert_eq!(parse(json!({"input": "", "speed": 9})), Err("invalid_speed"));
        assert_eq!(parse(json!({"input": "", "response_format": "x", "speed": 9})), Err("unsupported_response_format"));
    }
}
