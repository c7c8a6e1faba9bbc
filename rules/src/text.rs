//! Rules for the text to synthesize: not blank, a character limit, and no control, bidi or
//! invisible characters (unless allowed). Messages give counts, positions and code points,
//! never the text.

use crate::error::{RuleCode, RuleError};

/// The limits a text is checked against; the filter and the sidecar each hold one, set alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextLimits {
    /// In Unicode scalar values.
    pub max_chars: usize,
    /// Accept control, bidi and invisible characters (NUL is refused regardless).
    pub allow_control_chars: bool,
}

impl Default for TextLimits {
    fn default() -> Self {
        TextLimits {
            max_chars: 4_096,
            allow_control_chars: false,
        }
    }
}

impl TextLimits {
    /// Checks `text` (the value of field `param`) and returns its length in characters
    /// (Unicode scalar values).
    pub fn check(&self, param: &'static str, text: &str) -> Result<u64, RuleError> {
        if text.trim().is_empty() {
            return Err(RuleError::invalid(
                param,
                RuleCode::EmptyInput,
                format!("`{param}` is empty or only whitespace"),
            ));
        }
        let chars = text.chars().count();
        if chars > self.max_chars {
            return Err(RuleError::invalid(
                param,
                RuleCode::InputTooLong,
                format!(
                    "`{param}` has {chars} characters; the limit is {}",
                    self.max_chars
                ),
            ));
        }
        for (position, c) in text.chars().enumerate() {
            let kind = match forbidden_kind(c) {
                Some("NUL") => Some("NUL"),
                Some(_) if self.allow_control_chars => None,
                other => other,
            };
            if let Some(kind) = kind {
                return Err(RuleError::invalid(
                    param,
                    RuleCode::ForbiddenCharacter,
                    format!(
                        "`{param}` contains {kind} U+{:04X} at character {position}",
                        u32::from(c)
                    ),
                ));
            }
        }
        Ok(chars as u64)
    }
}

/// Why a character is refused in text to synthesize. NUL is refused even when control
/// characters are allowed: it truncates the text at the C boundary of the phonemizer.
/// Variation selectors (emoji and CJK presentation) are allowed.
pub fn forbidden_kind(c: char) -> Option<&'static str> {
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

    const LIMITS: TextLimits = TextLimits {
        max_chars: 20,
        allow_control_chars: false,
    };

    fn code(limits: &TextLimits, text: &str) -> &'static str {
        limits.check("input", text).unwrap_err().code.as_str()
    }

    #[test]
    fn counts_unicode_scalar_values() {
        assert_eq!(LIMITS.check("input", "héllo wörld").unwrap(), 11);
        assert_eq!(LIMITS.check("input", "😀😀").unwrap(), 2);
        assert_eq!(LIMITS.check("input", &"é".repeat(20)).unwrap(), 20, "40 bytes, 20 characters");
        assert_eq!(code(&LIMITS, &"a".repeat(21)), "input_too_long");
        let error = LIMITS.check("input", &"a".repeat(21)).unwrap_err();
        assert_eq!(error.message, "`input` has 21 characters; the limit is 20");
        assert_eq!(error.param, Some("input"));
    }

    #[test]
    fn blank_text_is_empty() {
        for text in ["", " ", "\n\t \r", "\u{3000}\u{2028}"] {
            assert_eq!(code(&LIMITS, text), "empty_input", "{text:?}");
        }
    }

    #[test]
    fn forbidden_characters_are_reported_by_code_point_and_position() {
        let r = LIMITS.check("text", "ab\u{202E}cd").unwrap_err();
        assert_eq!((r.code.as_str(), r.param), ("forbidden_character", Some("text")));
        assert_eq!(r.message, "`text` contains bidirectional control U+202E at character 2");
        for c in [
            '\u{0}', '\u{1}', '\u{1B}', '\u{7F}', '\u{85}', '\u{9F}', '\u{61C}', '\u{200E}', '\u{200F}',
            '\u{202A}', '\u{2066}', '\u{2069}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{2064}',
            '\u{FEFF}', '\u{AD}', '\u{E0041}', '\u{3164}', '\u{FFFE}', '\u{10FFFF}', '\u{FDD0}',
        ] {
            assert_eq!(code(&LIMITS, &format!("hi{c}there")), "forbidden_character", "U+{:04X}", u32::from(c));
        }
    }

    #[test]
    fn ordinary_text_passes() {
        let limits = TextLimits::default();
        for text in [
            "Hello, world!\nSecond line.\r\n\tIndented.",
            "שלום עולם", // right-to-left script without override characters
            "日本語のテキスト",
            "❤\u{FE0F} emoji with a variation selector",
            "Ünïcödé and a non-breaking\u{A0}space",
        ] {
            assert!(limits.check("input", text).is_ok(), "{text}");
        }
    }

    #[test]
    fn allow_control_chars_lifts_everything_but_nul() {
        let limits = TextLimits { max_chars: 100, allow_control_chars: true };
        assert!(limits.check("input", "a\u{202E}b\u{200B}c\u{1B}[0m").is_ok());
        assert_eq!(code(&limits, "a\u{0}b"), "forbidden_character");
    }
}
