//! Rules for the text to synthesize: not blank, a character limit, no control, bidi or
//! invisible characters (unless allowed), and no match of a configured deny pattern.
//! Messages give counts, positions and code points, never the text.

use regex_lite::{Regex, RegexBuilder};

use crate::config::ConfigError;
use crate::decision::Rejection;

/// Most deny patterns, and longest pattern, accepted.
const MAX_PATTERNS: usize = 256;
const MAX_PATTERN_LEN: usize = 4096;
/// Compiled size limit per pattern (regex-lite's own measure), and nesting limit.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;
const PATTERN_NEST_LIMIT: u32 = 64;

#[derive(Debug, Clone)]
pub(crate) struct TextPolicy {
    max_chars: usize,
    allow_control_chars: bool,
    deny: Vec<Regex>,
}

impl TextPolicy {
    pub fn new(max_chars: usize, allow_control_chars: bool, patterns: &[String]) -> Result<Self, ConfigError> {
        if patterns.len() > MAX_PATTERNS {
            return Err(ConfigError::new("text.deny_patterns", format!("at most {MAX_PATTERNS} patterns")));
        }
        let deny = patterns
            .iter()
            .enumerate()
            .map(|(index, pattern)| {
                let field = format!("text.deny_patterns[{index}]");
                if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
                    return Err(ConfigError::new(field, format!("must be 1 to {MAX_PATTERN_LEN} bytes long")));
                }
                RegexBuilder::new(pattern)
                    .size_limit(PATTERN_SIZE_LIMIT)
                    .nest_limit(PATTERN_NEST_LIMIT)
                    .build()
                    .map_err(|e| ConfigError::new(field, format!("invalid regular expression: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(TextPolicy { max_chars, allow_control_chars, deny })
    }

    /// Checks `text` (the value of field `field`) and returns its length in characters
    /// (Unicode scalar values).
    pub fn check(&self, field: &str, text: &str) -> Result<u64, Rejection> {
        if text.trim().is_empty() {
            return Err(Rejection::new(400, "empty_text", format!("`{field}` is empty or only whitespace")));
        }
        let chars = text.chars().count();
        if chars > self.max_chars {
            return Err(Rejection::new(
                400,
                "text_too_long",
                format!("`{field}` has {chars} characters; the limit is {}", self.max_chars),
            ));
        }
        for (position, c) in text.chars().enumerate() {
            let kind = match forbidden_kind(c) {
                Some("NUL") => Some("NUL"),
                Some(_) if self.allow_control_chars => None,
                other => other,
            };
            if let Some(kind) = kind {
                return Err(Rejection::new(
                    400,
                    "forbidden_character",
                    format!("`{field}` contains {kind} U+{:04X} at character {position}", u32::from(c)),
                ));
            }
        }
        if let Some(index) = self.deny.iter().position(|pattern| pattern.is_match(text)) {
            return Err(Rejection::new(
                400,
                "denied_text",
                format!("`{field}` matches deny pattern {index}"),
            ));
        }
        Ok(chars as u64)
    }
}

/// Why a character is refused in text to synthesize. NUL is refused even when control
/// characters are allowed: it truncates the text at the C boundary of the phonemizer.
/// Variation selectors (emoji and CJK presentation) are allowed.
pub(crate) fn forbidden_kind(c: char) -> Option<&'static str> {
    let cp = u32::from(c);
    match c {
        '\0' => Some("NUL"),
        '\t' | '\n' | '\r' => None,
        '\u{01}'..='\u{1F}' | '\u{7F}'..='\u{9F}' => Some("control character"),
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => {
            Some("bidirectional control")
        }
        // Default-ignorable code points: rendered as nothing, so they hide text from a reader
        // and split words to slip past deny patterns.
        '\u{00AD}'
        | '\u{034F}'
        | '\u{115F}'
        | '\u{1160}'
        | '\u{17B4}'
        | '\u{17B5}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200D}'
        | '\u{2060}'..='\u{2065}'
        | '\u{206A}'..='\u{206F}'
        | '\u{3164}'
        | '\u{FEFF}'
        | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFFB}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E00FF}'
        | '\u{E01F0}'..='\u{E0FFF}' => Some("invisible character"),
        '\u{FDD0}'..='\u{FDEF}' => Some("noncharacter"),
        _ if cp & 0xFFFE == 0xFFFE => Some("noncharacter"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> TextPolicy {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        TextPolicy::new(20, false, &patterns).unwrap()
    }

    fn code(p: &TextPolicy, text: &str) -> &'static str {
        p.check("input", text).unwrap_err().code
    }

    #[test]
    fn counts_unicode_scalar_values() {
        let p = policy(&[]);
        assert_eq!(p.check("input", "héllo wörld").unwrap(), 11);
        assert_eq!(p.check("input", "😀😀").unwrap(), 2);
        assert_eq!(p.check("input", &"é".repeat(20)).unwrap(), 20, "40 bytes, 20 characters");
        assert_eq!(code(&p, &"a".repeat(21)), "text_too_long");
        assert_eq!(p.check("input", &"a".repeat(21)).unwrap_err().message, "`input` has 21 characters; the limit is 20");
    }

    #[test]
    fn blank_text_is_empty() {
        let p = policy(&[]);
        for text in ["", " ", "\n\t \r", "\u{3000}\u{2028}"] {
            assert_eq!(code(&p, text), "empty_text", "{text:?}");
        }
    }

    #[test]
    fn forbidden_characters_are_reported_by_code_point_and_position() {
        let p = policy(&[]);
        let r = p.check("text", "ab\u{202E}cd").unwrap_err();
        assert_eq!(r.code, "forbidden_character");
        assert_eq!(r.message, "`text` contains bidirectional control U+202E at character 2");
        for c in [
            '\u{0}', '\u{1}', '\u{1B}', '\u{7F}', '\u{85}', '\u{9F}', '\u{61C}', '\u{200E}', '\u{200F}', '\u{202A}',
            '\u{2066}', '\u{2069}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{2064}', '\u{FEFF}', '\u{AD}',
            '\u{E0041}', '\u{3164}', '\u{FFFE}', '\u{10FFFF}', '\u{FDD0}',
        ] {
            assert_eq!(code(&p, &format!("hi{c}there")), "forbidden_character", "U+{:04X}", u32::from(c));
        }
    }

    #[test]
    fn ordinary_text_passes() {
        let p = TextPolicy::new(1000, false, &[]).unwrap();
        for text in [
            "Hello, world!\nSecond line.\r\n\tIndented.",
            "שלום עולם", // right-to-left script without override characters
            "日本語のテキスト",
            "❤\u{FE0F} emoji with a variation selector",
            "Ünïcödé and a non-breaking\u{A0}space",
        ] {
            assert!(p.check("input", text).is_ok(), "{text}");
        }
    }

    #[test]
    fn allow_control_chars_lifts_everything_but_nul() {
        let p = TextPolicy::new(100, true, &[]).unwrap();
        assert!(p.check("input", "a\u{202E}b\u{200B}c\u{1B}[0m").is_ok());
        assert_eq!(p.check("input", "a\u{0}b").unwrap_err().code, "forbidden_character");
    }

    #[test]
    fn deny_patterns_name_the_pattern_not_the_text() {
        let p = policy(&["(?i)forbidden phrase", r"\bsecret\b"]);
        let r = p.check("input", "a FORBIDDEN Phrase").unwrap_err();
        assert_eq!((r.code, r.message.as_str()), ("denied_text", "`input` matches deny pattern 0"));
        assert_eq!(p.check("input", "top secret!").unwrap_err().message, "`input` matches deny pattern 1");
        assert!(p.check("input", "secretive").is_ok());
        // an invisible character cannot split a phrase past the pattern: it is refused first
        assert_eq!(code(&p, "forbidden\u{200B} phrase"), "forbidden_character");
    }

    #[test]
    fn bad_patterns_name_their_index() {
        let patterns = vec!["ok".to_string(), "(unclosed".to_string()];
        let e = TextPolicy::new(10, false, &patterns).unwrap_err();
        assert_eq!(e.field, "text.deny_patterns[1]");
        let e = TextPolicy::new(10, false, &[String::new()]).unwrap_err();
        assert_eq!(e.field, "text.deny_patterns[0]");
        let huge = vec!["a{1000}{1000}".to_string()];
        assert_eq!(TextPolicy::new(10, false, &huge).unwrap_err().field, "text.deny_patterns[0]");
    }
}
