//! `response_format` (the audio encoding of the answer) and the streaming options `stream`
//! and `stream_format`.

use crate::error::{RuleCode, RuleError};

/// The encodings an answer may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// MPEG-1 Layer III, OpenAI's default.
    Mp3,
    /// Opus in Ogg, at 48 kHz.
    Opus,
    Flac,
    Wav,
    /// Raw 16-bit little-endian mono samples at the voice's rate (`x-sample-rate`).
    Pcm,
}

/// OpenAI formats that are not produced, so that their refusal can say so.
const NOT_PRODUCED: &[&str] = &["aac"];

impl ResponseFormat {
    pub const ALL: [ResponseFormat; 5] = [
        ResponseFormat::Mp3,
        ResponseFormat::Opus,
        ResponseFormat::Flac,
        ResponseFormat::Wav,
        ResponseFormat::Pcm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ResponseFormat::Mp3 => "mp3",
            ResponseFormat::Opus => "opus",
            ResponseFormat::Flac => "flac",
            ResponseFormat::Wav => "wav",
            ResponseFormat::Pcm => "pcm",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ResponseFormat::Mp3 => "audio/mpeg",
            ResponseFormat::Opus => "audio/ogg",
            ResponseFormat::Flac => "audio/flac",
            ResponseFormat::Wav => "audio/wav",
            ResponseFormat::Pcm => "audio/pcm",
        }
    }

    /// A format name, case-insensitive, without a check of the request field.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// `response_format`; absent means mp3, as OpenAI.
    pub fn parse(value: Option<&str>) -> Result<Self, RuleError> {
        let Some(value) = value else {
            return Ok(ResponseFormat::Mp3);
        };
        Self::from_name(value).ok_or_else(|| {
            let what = if NOT_PRODUCED.iter().any(|n| n.eq_ignore_ascii_case(value)) {
                "is not produced by this service"
            } else {
                "is not a known format"
            };
            RuleError::invalid(
                "response_format",
                RuleCode::UnsupportedResponseFormat,
                format!("`response_format` {what}; use one of {}", supported_list()),
            )
        })
    }
}

/// `mp3, opus, flac, wav, pcm`.
pub fn supported_list() -> String {
    ResponseFormat::ALL.map(ResponseFormat::name).join(", ")
}

/// How the answer is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// One complete file.
    Off,
    /// Chunked audio, the first chunk as soon as the first sentence is synthesized.
    Audio,
    /// Server-sent events: `speech.audio.delta` with base64 audio, then `speech.audio.done`.
    Sse,
}

impl StreamMode {
    /// `stream: true` or `stream_format: "audio"` streams audio (`stream: false` wins over
    /// `"audio"`); `stream_format: "sse"` streams events.
    pub fn parse(stream: Option<bool>, stream_format: Option<&str>) -> Result<Self, RuleError> {
        match (stream_format, stream) {
            (None, Some(true)) | (Some("audio"), None | Some(true)) => Ok(StreamMode::Audio),
            (None | Some("audio"), _) => Ok(StreamMode::Off),
            (Some("sse"), _) => Ok(StreamMode::Sse),
            (Some(_), _) => Err(RuleError::invalid(
                "stream_format",
                RuleCode::UnsupportedStreamFormat,
                "`stream_format` must be `audio` or `sse`",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_case_insensitively_and_default_to_mp3() {
        assert_eq!(ResponseFormat::parse(None), Ok(ResponseFormat::Mp3));
        for format in ResponseFormat::ALL {
            assert_eq!(ResponseFormat::parse(Some(format.name())), Ok(format));
            assert_eq!(
                ResponseFormat::parse(Some(&format.name().to_uppercase())),
                Ok(format)
            );
        }
        assert_eq!(ResponseFormat::Opus.content_type(), "audio/ogg");
    }

    #[test]
    fn unsupported_formats_name_the_supported_set() {
        for bad in ["aac", "ogg", ""] {
            let error = ResponseFormat::parse(Some(bad)).unwrap_err();
            assert_eq!(
                (error.status(), error.code.as_str(), error.param),
                (400, "unsupported_response_format", Some("response_format"))
            );
            assert!(
                error
                    .message
                    .ends_with("use one of mp3, opus, flac, wav, pcm"),
                "{}",
                error.message
            );
        }
        assert!(ResponseFormat::parse(Some("aac"))
            .unwrap_err()
            .message
            .contains("not produced"));
    }

    #[test]
    fn stream_options() {
        assert_eq!(StreamMode::parse(None, None), Ok(StreamMode::Off));
        assert_eq!(StreamMode::parse(Some(true), None), Ok(StreamMode::Audio));
        assert_eq!(
            StreamMode::parse(None, Some("audio")),
            Ok(StreamMode::Audio)
        );
        assert_eq!(
            StreamMode::parse(Some(false), Some("audio")),
            Ok(StreamMode::Off)
        );
        assert_eq!(StreamMode::parse(None, Some("sse")), Ok(StreamMode::Sse));
        assert_eq!(
            StreamMode::parse(Some(false), Some("sse")),
            Ok(StreamMode::Sse)
        );
        assert_eq!(
            StreamMode::parse(None, Some("events")).unwrap_err().code.as_str(),
            "unsupported_stream_format"
        );
    }
}
