//! A voice's speakers and which one a request names (`speaker` for OpenAI, `speaker_id` for
//! Coqui): one of the voice's speaker names, or an index below its speaker count. The sidecar
//! checks against the voices it loaded, the filter against the same facts learned from the
//! sidecar's `GET /v1/audio/voices` (`speaker_ids`, `num_speakers`).

use std::collections::BTreeMap;

use crate::error::{RuleCode, RuleError};

/// The speakers of one voice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speakers {
    count: u32,
    /// Speaker name → id, every id below `count`.
    ids: BTreeMap<String, u32>,
}

/// More names than this are summarised in an error message rather than listed.
const NAMES_LISTED: usize = 16;

impl Speakers {
    /// A voice with `count` speakers (at least one) and these named ones; a name whose id is
    /// out of range is no speaker of the voice.
    pub fn new(count: u32, ids: BTreeMap<String, u32>) -> Speakers {
        let count = count.max(1);
        let ids = ids.into_iter().filter(|&(_, id)| id < count).collect();
        Speakers { count, ids }
    }

    /// A voice with one unnamed speaker.
    pub fn single() -> Speakers {
        Speakers::new(1, BTreeMap::new())
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Speaker name → id.
    pub fn ids(&self) -> &BTreeMap<String, u32> {
        &self.ids
    }

    /// The named speakers in id order.
    pub fn names_by_id(&self) -> Vec<&str> {
        let mut by_id: Vec<(u32, &str)> = self.ids.iter().map(|(name, &id)| (id, name.as_str())).collect();
        by_id.sort();
        by_id.into_iter().map(|(_, name)| name).collect()
    }

    /// The speaker id a request asks for: `None` (absent or blank) is the voice's default
    /// speaker. A name is looked up first, so a speaker named `"3"` wins over index 3.
    pub fn resolve(
        &self,
        voice: &str,
        requested: Option<&str>,
        param: &'static str,
    ) -> Result<Option<u32>, RuleError> {
        let Some(requested) = requested.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let id = self.ids.get(requested).copied().or_else(|| requested.parse::<u32>().ok());
        match id {
            Some(id) if id < self.count => Ok(Some(id)),
            _ => Err(RuleError::invalid(
                param,
                RuleCode::UnknownSpeaker,
                format!(
                    "voice `{voice}` has no such speaker; it has {} (ids 0 to {})",
                    self.describe(),
                    self.count - 1
                ),
            )),
        }
    }

    fn describe(&self) -> String {
        match (self.ids.len(), self.count) {
            (0, 1) => "a single speaker".to_owned(),
            (0, n) => format!("{n} speakers"),
            (named, _) if named <= NAMES_LISTED => format!("speakers {}", self.names_by_id().join(", ")),
            (_, n) => format!("{n} speakers (see GET /v1/audio/voices)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(count: u32, names: &[(&str, u32)]) -> Speakers {
        Speakers::new(count, names.iter().map(|&(n, id)| (n.to_owned(), id)).collect())
    }

    #[test]
    fn names_and_indices_within_the_count_resolve() {
        let speakers = named(3, &[("p225", 0), ("p226", 2), ("ghost", 7)]);
        assert_eq!(speakers.resolve("v", None, "speaker"), Ok(None));
        assert_eq!(speakers.resolve("v", Some("  "), "speaker"), Ok(None));
        assert_eq!(speakers.resolve("v", Some("p226"), "speaker"), Ok(Some(2)));
        assert_eq!(speakers.resolve("v", Some(" 1 "), "speaker"), Ok(Some(1)));
        assert_eq!(speakers.names_by_id(), vec!["p225", "p226"]);
        for bad in ["3", "ghost", "p227", "-1", "1.0"] {
            let error = speakers.resolve("v", Some(bad), "speaker_id").unwrap_err();
            assert_eq!((error.status(), error.code.as_str(), error.param), (400, "unknown_speaker", Some("speaker_id")), "{bad}");
        }
    }

    #[test]
    fn a_name_wins_over_the_index_it_spells() {
        let speakers = named(4, &[("3", 0)]);
        assert_eq!(speakers.resolve("v", Some("3"), "speaker"), Ok(Some(0)));
    }

    #[test]
    fn the_message_describes_the_speakers_without_the_request() {
        let message = |s: Speakers| s.resolve("piper", Some("99"), "speaker").unwrap_err().message;
        assert_eq!(
            message(Speakers::single()),
            "voice `piper` has no such speaker; it has a single speaker (ids 0 to 0)"
        );
        assert!(message(named(4, &[])).contains("4 speakers (ids 0 to 3)"));
        assert!(message(named(2, &[("b", 1), ("a", 0)])).contains("speakers a, b"));
        let many: Vec<(String, u32)> = (0..20).map(|i| (format!("s{i}"), i)).collect();
        let many = Speakers::new(20, many.into_iter().collect());
        assert!(message(many).contains("20 speakers (see GET /v1/audio/voices)"));
    }
}
