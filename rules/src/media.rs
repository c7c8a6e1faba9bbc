//! `Content-Type` parsing: the media type of a request body and its charset parameter.

/// The body formats the speech routes understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    Json,
    Form,
    Other,
}

/// Parses a `Content-Type` value. `Err` when it is malformed or names a charset other than
/// UTF-8 (the only encoding the filter and the sidecar read). Media type and parameter names
/// are case-insensitive; other parameters are ignored.
pub fn parse(content_type: &str) -> Result<MediaType, ()> {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let (kind, subtype) = essence.split_once('/').ok_or(())?;
    if kind.is_empty() || subtype.is_empty() || !essence.bytes().all(is_token_or_slash) {
        return Err(());
    }
    for parameter in parts {
        let parameter = parameter.trim();
        if parameter.is_empty() {
            continue;
        }
        let (name, value) = parameter.split_once('=').ok_or(())?;
        if name.trim().eq_ignore_ascii_case("charset") {
            let value = value.trim();
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            if !value.eq_ignore_ascii_case("utf-8") {
                return Err(());
            }
        }
    }
    Ok(match essence.as_str() {
        "application/json" => MediaType::Json,
        "application/x-www-form-urlencoded" => MediaType::Form,
        _ => MediaType::Other,
    })
}

fn is_token_or_slash(b: u8) -> bool {
    b == b'/' || (b.is_ascii_graphic() && !b"()<>@,;:\\\"[]?={}".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_and_without_utf8_charset() {
        for ct in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/json; boundary=x; charset=utf-8",
        ] {
            assert_eq!(parse(ct), Ok(MediaType::Json), "{ct}");
        }
    }

    #[test]
    fn other_charsets_and_malformed_values_are_refused() {
        for ct in ["application/json; charset=latin1", "application/json; charset=utf-16", "", "json", "/json", "application/json; charset", "application /json"] {
            assert_eq!(parse(ct), Err(()), "{ct}");
        }
    }

    #[test]
    fn form_and_others() {
        assert_eq!(parse("application/x-www-form-urlencoded"), Ok(MediaType::Form));
        assert_eq!(parse("text/plain"), Ok(MediaType::Other));
        assert_eq!(parse("application/json-patch+json"), Ok(MediaType::Other));
    }
}
