//! The parameters of a Coqui TTS server request (`GET|POST /api/tts`): `text`, `speaker_id`,
//! `language_id`, `style_wav` (accepted and ignored) and voxgate's `voice`. Coqui reads each
//! from the first source that has it: request headers, then the query string, then the body.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{RuleCode, RuleError};
use crate::fields;
use crate::text::TextLimits;

/// The parameters, each from the first source that has it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CoquiParams {
    pub text: Option<String>,
    pub speaker_id: Option<String>,
    pub language_id: Option<String>,
    pub voice: Option<String>,
}

impl CoquiParams {
    /// From a JSON body: each member type-checked.
    pub fn from_json(map: &Map<String, Value>) -> Result<CoquiParams, RuleError> {
        let owned = |value: Option<&str>| value.map(str::to_owned);
        let text = owned(fields::string(map, "text")?);
        let speaker_id = fields::speaker(map, "speaker_id")?;
        let language_id = owned(fields::string(map, "language_id")?);
        fields::string(map, "style_wav")?;
        let voice = owned(fields::string(map, "voice")?);
        Ok(CoquiParams {
            text,
            speaker_id,
            language_id,
            voice,
        })
    }

    /// From decoded form or query pairs; names other than the parameters are ignored.
    pub fn from_pairs(mut pairs: BTreeMap<String, String>) -> CoquiParams {
        CoquiParams {
            text: pairs.remove("text"),
            speaker_id: pairs.remove("speaker_id"),
            language_id: pairs.remove("language_id"),
            voice: pairs.remove("voice"),
        }
    }

    /// Keeps values already found and fills the gaps from `next`.
    pub fn or(self, next: CoquiParams) -> CoquiParams {
        CoquiParams {
            text: self.text.or(next.text),
            speaker_id: self.speaker_id.or(next.speaker_id),
            language_id: self.language_id.or(next.language_id),
            voice: self.voice.or(next.voice),
        }
    }

    /// Checks the text, once every source is merged; returns its length in characters.
    pub fn check_text(&self, limits: &TextLimits) -> Result<u64, RuleError> {
        let text = self.text.as_deref().ok_or_else(|| fields::missing("text"))?;
        limits.check("text", text)
    }

    /// The voice asked for: an empty `voice`, as forms send it, is no voice.
    pub fn voice(&self) -> Option<&str> {
        self.voice.as_deref().filter(|name| !name.is_empty())
    }

    /// The language asked for, if any (blank is none).
    pub fn language(&self) -> Option<&str> {
        self.language_id.as_deref().filter(|l| !l.trim().is_empty())
    }
}

/// Refuses a `language_id` that `voice` (speaking `spoken`) does not speak; none is fine.
pub fn check_language(requested: Option<&str>, voice: &str, spoken: &str) -> Result<(), RuleError> {
    match requested {
        Some(language) if !same_language(language, spoken) => Err(RuleError::invalid(
            "language_id",
            RuleCode::UnsupportedLanguage,
            format!("voice `{voice}` speaks `{spoken}`; leave `language_id` empty or use that language"),
        )),
        _ => Ok(()),
    }
}

/// `en`, `en-us`, `en_US` and `EN-us` all match a voice speaking `en-us`: case and the
/// separator are ignored, and a bare language matches any of its regions.
fn same_language(requested: &str, spoken: &str) -> bool {
    let normalize = |tag: &str| tag.trim().to_ascii_lowercase().replace('_', "-");
    let (requested, spoken) = (normalize(requested), normalize(spoken));
    let primary = |tag: &str| tag.split('-').next().unwrap_or("").to_owned();
    requested == spoken
        || (!requested.contains('-') && requested == primary(&spoken))
        || (!spoken.contains('-') && spoken == primary(&requested))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::form::parse_pairs;
    use serde_json::json;

    fn pairs(encoded: &str) -> CoquiParams {
        CoquiParams::from_pairs(parse_pairs(encoded).unwrap())
    }

    #[test]
    fn earlier_sources_win() {
        let header = CoquiParams { speaker_id: Some("from-header".to_owned()), ..CoquiParams::default() };
        let params = header
            .or(pairs("text=from+query&speaker_id=from-query"))
            .or(pairs("text=from+body&language_id=en&voice=v"));
        assert_eq!(
            params,
            CoquiParams {
                text: Some("from query".to_owned()),
                speaker_id: Some("from-header".to_owned()),
                language_id: Some("en".to_owned()),
                voice: Some("v".to_owned()),
            }
        );
    }

    #[test]
    fn json_members_are_typed_and_the_text_is_checked() {
        let value = json!({"text": "Hi.", "speaker_id": 2, "style_wav": ""});
        let params = CoquiParams::from_json(value.as_object().unwrap()).unwrap();
        assert_eq!(params.speaker_id.as_deref(), Some("2"));
        assert_eq!(params.check_text(&TextLimits::default()), Ok(3));
        for bad in [json!({"text": ["Hi."]}), json!({"text": "a", "style_wav": 1}), json!({"text": "a", "speaker_id": -2})] {
            assert_eq!(CoquiParams::from_json(bad.as_object().unwrap()).unwrap_err().code.as_str(), "invalid_type", "{bad}");
        }
        assert_eq!(CoquiParams::default().check_text(&TextLimits::default()).unwrap_err().code.as_str(), "missing_field");
        assert_eq!(pairs("text=+++").check_text(&TextLimits::default()).unwrap_err().code.as_str(), "empty_input");
        assert_eq!(pairs("text=a&voice=").voice(), None);
        assert_eq!(pairs("text=a&language_id=+").language(), None);
    }

    #[test]
    fn languages_match_loosely_but_not_across_languages() {
        assert!(same_language("en", "en-us"));
        assert!(same_language("en_US", "en-us"));
        assert!(same_language("EN-us", "en_US"));
        assert!(same_language("en-us", "en"));
        assert!(!same_language("de", "en-us"));
        assert!(!same_language("en-gb", "en-us"));
        assert!(!same_language("eng", "en-us"));
        assert_eq!(check_language(None, "v", "en-us"), Ok(()));
        assert_eq!(check_language(Some("en"), "v", "en-us"), Ok(()));
        let error = check_language(Some("de"), "v", "en-us").unwrap_err();
        assert_eq!((error.code.as_str(), error.param), ("unsupported_language", Some("language_id")));
    }
}
