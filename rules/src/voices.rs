//! Which voice a request gets: the voices a deployment has (its catalog), the operator's alias
//! table for OpenAI voice names, the model names, and an optional allowlist. The sidecar
//! resolves against the voices it loaded; the filter against the same catalog, learned from
//! the sidecar's `GET /v1/audio/voices`, plus the operator's allowlist.

use std::collections::BTreeMap;

use crate::error::{RuleCode, RuleError};

/// OpenAI's built-in voice names. Each is an alias: of the voice the operator's table names,
/// else of the default voice.
pub const OPENAI_VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
    "shimmer", "verse",
];

/// `model` values that mean "the voice the request names"; any other `model` must be a voice.
pub const MODEL_NAMES: &[&str] = &["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "voxgate"];

/// The voice a request resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved<'a> {
    Voice(&'a str),
    /// The deployment's default voice, where the table does not know its name.
    Default,
}

/// The voices a request may name and what each alias means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VoiceTable {
    /// Voice names; empty when unknown, and then any name is taken as given.
    voices: Vec<String>,
    default_voice: Option<String>,
    /// Alias → voice, as the operator wrote it; OpenAI names left out mean the default voice.
    aliases: BTreeMap<String, String>,
    /// Voices a request may get; empty allows every voice.
    allowed: Vec<String>,
}

impl VoiceTable {
    /// Checks that the aliases name voices and never shadow one, and that the default voice
    /// is one of `voices` (when the voices are known). The error names the bad entry.
    pub fn new(
        voices: Vec<String>,
        default_voice: Option<String>,
        aliases: BTreeMap<String, String>,
        allowed: Vec<String>,
    ) -> Result<Self, String> {
        let known = |name: &str| voices.is_empty() || voices.iter().any(|v| v == name);
        if let Some(default) = default_voice.as_deref().filter(|d| !known(d)) {
            return Err(format!(
                "default voice `{default}` is not one of the voices"
            ));
        }
        for (alias, target) in &aliases {
            if alias.trim().is_empty() {
                return Err("an alias name is empty".to_string());
            }
            if voices.iter().any(|v| v == alias) {
                return Err(format!("alias `{alias}` is also the name of a voice"));
            }
            if !known(target) {
                return Err(format!(
                    "alias `{alias}` names `{target}`, which is not one of the voices"
                ));
            }
        }
        Ok(VoiceTable {
            voices,
            default_voice,
            aliases,
            allowed,
        })
    }

    /// What `name` means as an alias, if it is one.
    fn alias(&self, name: &str) -> Option<Resolved<'_>> {
        match self.aliases.get_key_value(name) {
            Some((_, target)) => Some(Resolved::Voice(target)),
            None => OPENAI_VOICES
                .contains(&name)
                .then_some(self.default_choice()),
        }
    }

    /// The default voice's name, where the table knows it.
    pub fn default_voice(&self) -> Option<&str> {
        self.default_voice.as_deref()
    }

    fn default_choice(&self) -> Resolved<'_> {
        self.default_voice
            .as_deref()
            .map_or(Resolved::Default, Resolved::Voice)
    }

    fn is_voice(&self, name: &str) -> bool {
        self.voices.is_empty() || self.voices.iter().any(|v| v == name)
    }

    fn is_allowed(&self, resolved: Resolved<'_>) -> bool {
        match resolved {
            _ if self.allowed.is_empty() => true,
            Resolved::Voice(name) => self.allowed.iter().any(|a| a == name),
            // Without a catalog the default voice is the sidecar's choice, not the request's.
            Resolved::Default => true,
        }
    }

    /// Every alias with the voice it means: the operator's, then the OpenAI names left to the
    /// default voice (`None` where its name is unknown).
    pub fn aliases(&self) -> BTreeMap<&str, Option<&str>> {
        let mut table: BTreeMap<&str, Option<&str>> = OPENAI_VOICES
            .iter()
            .map(|name| (*name, self.default_voice.as_deref()))
            .collect();
        table.extend(
            self.aliases
                .iter()
                .map(|(alias, target)| (alias.as_str(), Some(target.as_str()))),
        );
        table
    }

    /// The voice for a request's `voice` and `model` (OpenAI), or `voice` alone (Coqui).
    ///
    /// `model` is a model name or a voice. `voice` is a voice or an alias; an alias means the
    /// voice named in `model` when there is one, else the alias's voice; no `voice` is the
    /// same as an alias. A voice outside the allowlist is refused whichever field named it.
    pub fn resolve<'a>(
        &'a self,
        voice: Option<&'a str>,
        model: Option<&'a str>,
    ) -> Result<Resolved<'a>, RuleError> {
        let model_voice = match model {
            None => None,
            Some(name) if MODEL_NAMES.contains(&name) => None,
            Some(name) if self.is_voice(name) && self.is_allowed(Resolved::Voice(name)) => {
                Some(name)
            }
            Some(_) => return Err(unknown_model()),
        };
        let resolved = match voice {
            None => model_voice.map_or(self.default_choice(), Resolved::Voice),
            Some(name) => match (self.alias(name), model_voice) {
                (Some(_), Some(model_voice)) => Resolved::Voice(model_voice),
                (Some(target), None) => target,
                (None, _) if self.is_voice(name) => Resolved::Voice(name),
                (None, _) => return Err(unknown_voice()),
            },
        };
        if self.is_allowed(resolved) {
            Ok(resolved)
        } else {
            Err(unknown_voice())
        }
    }
}

fn unknown_model() -> RuleError {
    RuleError::invalid(
        "model",
        RuleCode::UnknownModel,
        format!(
            "`model` must be one of {} or the name of an available voice (GET /v1/models)",
            MODEL_NAMES.join(", ")
        ),
    )
}

fn unknown_voice() -> RuleError {
    RuleError::invalid(
        "voice",
        RuleCode::UnknownVoice,
        "`voice` is not an available voice or voice alias (GET /v1/audio/voices)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn table(allowed: &[&str]) -> VoiceTable {
        let aliases = BTreeMap::from([
            ("nova".to_string(), "b".to_string()),
            ("narrator".to_string(), "c".to_string()),
        ]);
        VoiceTable::new(
            names(&["a", "b", "c"]),
            Some("a".into()),
            aliases,
            names(allowed),
        )
        .unwrap()
    }

    fn code(result: Result<Resolved<'_>, RuleError>) -> (&'static str, Option<&'static str>) {
        let error = result.unwrap_err();
        (error.code.as_str(), error.param)
    }

    #[test]
    fn every_openai_name_is_an_alias_of_the_default_unless_the_table_says_otherwise() {
        let t = table(&[]);
        for name in OPENAI_VOICES {
            let expected = if *name == "nova" { "b" } else { "a" };
            assert_eq!(
                t.resolve(Some(name), Some("tts-1")),
                Ok(Resolved::Voice(expected)),
                "{name}"
            );
        }
        assert_eq!(t.resolve(Some("narrator"), None), Ok(Resolved::Voice("c")));
        assert_eq!(t.resolve(None, None), Ok(Resolved::Voice("a")));
        assert_eq!(t.aliases().len(), OPENAI_VOICES.len() + 1);
        assert_eq!(t.aliases()["alloy"], Some("a"));
        assert_eq!(t.aliases()["nova"], Some("b"));
    }

    #[test]
    fn voices_models_and_their_refusals() {
        let t = table(&[]);
        assert_eq!(
            t.resolve(Some("c"), Some("tts-1-hd")),
            Ok(Resolved::Voice("c"))
        );
        assert_eq!(
            t.resolve(Some("alloy"), Some("b")),
            Ok(Resolved::Voice("b")),
            "an alias defers to the model's voice"
        );
        assert_eq!(t.resolve(None, Some("c")), Ok(Resolved::Voice("c")));
        assert_eq!(
            t.resolve(Some("a"), Some("c")),
            Ok(Resolved::Voice("a")),
            "a named voice wins"
        );
        assert_eq!(
            code(t.resolve(Some("zed"), None)),
            ("unknown_voice", Some("voice"))
        );
        assert_eq!(
            code(t.resolve(Some("ALLOY"), None)),
            ("unknown_voice", Some("voice"))
        );
        assert_eq!(
            code(t.resolve(Some("a"), Some("gpt-5"))),
            ("unknown_model", Some("model"))
        );
    }

    #[test]
    fn the_allowlist_holds_for_voice_model_and_aliases_alike() {
        let t = table(&["b"]);
        assert_eq!(t.resolve(Some("b"), None), Ok(Resolved::Voice("b")));
        assert_eq!(t.resolve(Some("nova"), None), Ok(Resolved::Voice("b")));
        assert_eq!(
            code(t.resolve(Some("c"), None)),
            ("unknown_voice", Some("voice"))
        );
        assert_eq!(
            code(t.resolve(None, Some("c"))),
            ("unknown_model", Some("model")),
            "model cannot bypass it"
        );
        assert_eq!(
            code(t.resolve(Some("alloy"), Some("c"))),
            ("unknown_model", Some("model"))
        );
        assert_eq!(
            code(t.resolve(Some("alloy"), None)),
            ("unknown_voice", Some("voice")),
            "the default is not allowed"
        );
        assert_eq!(
            code(t.resolve(None, None)),
            ("unknown_voice", Some("voice"))
        );
    }

    #[test]
    fn without_a_catalog_names_are_taken_as_given() {
        let t = VoiceTable::default();
        assert_eq!(
            t.resolve(Some("anything"), None),
            Ok(Resolved::Voice("anything"))
        );
        assert_eq!(t.resolve(Some("alloy"), None), Ok(Resolved::Default));
        assert_eq!(
            t.resolve(None, Some("some-voice")),
            Ok(Resolved::Voice("some-voice"))
        );
        let restricted = VoiceTable::new(vec![], None, BTreeMap::new(), names(&["a"])).unwrap();
        assert_eq!(
            code(restricted.resolve(None, Some("b"))),
            ("unknown_model", Some("model"))
        );
        assert_eq!(
            restricted.resolve(Some("alloy"), None),
            Ok(Resolved::Default)
        );
    }

    #[test]
    fn bad_tables_are_named() {
        let voices = names(&["a"]);
        let alias = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(
            VoiceTable::new(voices.clone(), Some("x".into()), BTreeMap::new(), vec![])
                .unwrap_err()
                .contains("`x`")
        );
        assert!(
            VoiceTable::new(voices.clone(), None, alias("alloy", "x"), vec![])
                .unwrap_err()
                .contains("alias `alloy`")
        );
        assert!(
            VoiceTable::new(voices.clone(), None, alias("a", "a"), vec![])
                .unwrap_err()
                .contains("also the name")
        );
        assert!(VoiceTable::new(voices, None, alias(" ", "a"), vec![]).is_err());
    }
}
