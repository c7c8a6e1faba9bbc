//! The body validator on raw requests. Byte 0 picks the API, the content type, the rules and whether the rest is a body or a query string; with content type `custom`
//! the rest starts with a `Content-Type` line. Every entry point runs:
//! `check_content_type`, `check_body_size`, `validate_body`, `validate_query`.
//!
//! Judged: refusals have the expected statuses and error shape. An accepted speech request is
//! read again the way the sidecar reads it (its own `api::extract` functions, then the shared
//! field rules): the sidecar reads it too, and its text is the text the filter judged (same
//! character count, same voice), within the limit, free of NUL (and under strict rules of
//! other control characters), allowed, and clear of the deny patterns. A difference would let
//! a request through the filter with one text and have the sidecar speak another, or refuse
//! what the filter admitted and charged.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use voxgate_filter::routes::Api;
use voxgate_filter::validate::{SpeechRequest, TextRules, TextValidator};
use voxgate_fuzz::oracle;
use voxgate_rules::body::Body;
use voxgate_rules::voices::{Resolved, VoiceTable};
use voxgate_rules::{form, CoquiParams};
use voxgate_sidecar::api::extract;

const APIS: [Api; 3] = [Api::OpenAiSpeech, Api::CoquiTts, Api::Metadata];
const CONTENT_TYPES: [Option<&str>; 8] = [
    None,
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("application/x-www-form-urlencoded"),
    Some("Application/JSON;charset=\"UTF-8\""),
    Some("text/plain"),
    Some("application/json; charset=latin1"),
    Some("custom"),
];
const MAX_CHARS: usize = 200;
const VOICES: [&str; 2] = ["en_US-joe-medium", "coqui_vits_chars"];

/// Strict rules as an operator would write them, and permissive ones.
fn validators() -> &'static [TextValidator; 2] {
    static VALIDATORS: OnceLock<[TextValidator; 2]> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        let strict: TextRules = serde_json::from_value(json!({
            "max_body_bytes": 2048, "max_chars": MAX_CHARS, "deny_patterns": ["(?i)forbidden phrase", "\\bkill\\s+all\\b"],
            "voices": VOICES, "response_formats": ["wav", "pcm"], "min_speed": 0.25, "max_speed": 4.0
        }))
        .expect("strict rules parse");
        let permissive: TextRules = serde_json::from_value(json!({
            "max_body_bytes": 65536, "max_chars": 4096, "allow_control_chars": true
        }))
        .expect("permissive rules parse");
        [strict.compile().expect("strict rules compile"), permissive.compile().expect("permissive rules compile")]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let api = APIS[usize::from(selector % 3)];
    let mut content_type = CONTENT_TYPES[usize::from(selector / 3 % 8)];
    let strict = selector / 24 % 2 == 0;
    let as_query = selector / 48 % 2 == 1;
    let validator = &validators()[usize::from(!strict)];

    let mut body = rest;
    let custom_type;
    if content_type == Some("custom") {
        let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        custom_type = String::from_utf8_lossy(&rest[..split]).into_owned();
        content_type = Some(&custom_type);
        body = rest.get(split + 1..).unwrap_or(&[]);
    }

    if let Err(rejection) = validator.check_content_type(api, content_type) {
        oracle::check_rejection(&rejection, &[415], &[]);
    }
    if let Err(rejection) = validator.check_body_size(body.len()) {
        oracle::check_rejection(&rejection, &[413], &[]);
    }
    if as_query {
        let query = String::from_utf8_lossy(body);
        match validator.validate_query(api, &query) {
            Ok(Some(request)) => {
                let params = form::parse_pairs(&query).map(CoquiParams::from_pairs);
                check_accepted(strict, api, &request, params.ok().map(SidecarView::from));
            }
            Ok(None) => assert_ne!(api, Api::CoquiTts, "a Coqui query was not validated"),
            Err(rejection) => oracle::check_rejection(&rejection, &[400], &[]),
        }
    } else {
        match validator.validate_body(api, content_type, body) {
            Ok(request) if api == Api::Metadata => assert_eq!(request.chars, 0),
            Ok(request) => {
                let view = sidecar_view(api, content_type, body);
                assert!(view.is_some(), "the sidecar would refuse a body the filter accepted");
                check_accepted(strict, api, &request, view)
            }
            Err(rejection) => oracle::check_rejection(&rejection, &[400, 413, 415], &[]),
        }
    }
});

/// The text, voice and model the sidecar reads from this body.
struct SidecarView {
    text: Option<String>,
    voice: Option<String>,
    model: Option<String>,
}

impl From<CoquiParams> for SidecarView {
    fn from(params: CoquiParams) -> Self {
        SidecarView {
            text: params.text,
            voice: params.voice,
            model: None,
        }
    }
}

/// `None` where the sidecar would refuse the body the filter accepted.
fn sidecar_view(api: Api, content_type: Option<&str>, body: &[u8]) -> Option<SidecarView> {
    let mut headers = HeaderMap::new();
    if let Some(value) = content_type {
        let Ok(value) = HeaderValue::from_str(value) else {
            // Not a value HTTP carries (Envoy refuses control characters): nothing to compare.
            return Some(SidecarView { text: None, voice: None, model: None });
        };
        headers.insert(header::CONTENT_TYPE, value);
    }
    if api == Api::OpenAiSpeech {
        let map = extract::json_object(&headers, body).ok()?;
        let text = map.get("input")?.as_str().map(str::to_string);
        let voice = map.get("voice").and_then(|v| v.as_str()).map(str::to_string);
        let model = map.get("model").and_then(|v| v.as_str()).map(str::to_string);
        return Some(SidecarView { text, voice, model });
    }
    match extract::decode(&headers, body).ok()? {
        Body::Json(map) => CoquiParams::from_json(&map).ok().map(SidecarView::from),
        Body::Pairs(pairs) => Some(SidecarView::from(CoquiParams::from_pairs(pairs))),
    }
}

fn check_accepted(strict: bool, api: Api, request: &SpeechRequest, sidecar: Option<SidecarView>) {
    assert_ne!(api, Api::Metadata);
    let limit = if strict { MAX_CHARS } else { 4096 };
    assert!(
        request.chars >= 1 && request.chars <= limit as u64,
        "accepted a text of {} characters",
        request.chars
    );
    if strict {
        if let Some(voice) = &request.voice {
            assert!(
                VOICES.contains(&voice.as_str()),
                "accepted an unconfigured voice"
            );
        }
    }
    let Some(SidecarView {
        text: Some(text),
        voice,
        model,
    }) = sidecar
    else {
        return;
    };
    assert_eq!(
        text.chars().count() as u64,
        request.chars,
        "the sidecar would read another text than the filter judged"
    );
    // The Coqui handler takes an empty `voice`, as forms send it, as no voice.
    let voice = match api {
        Api::CoquiTts => voice.filter(|v| !v.is_empty()),
        _ => voice,
    };
    // What the fields the sidecar reads mean under the validator's voice table (no catalog,
    // the strict allowlist): an OpenAI name is an alias of the default voice (`None`).
    let allowed = if strict { VOICES.iter().map(|v| v.to_string()).collect() } else { Vec::new() };
    let table = VoiceTable::new(Vec::new(), None, BTreeMap::new(), allowed).expect("a valid table");
    let resolved = table
        .resolve(voice.as_deref(), model.as_deref())
        .expect("the filter accepted these fields");
    let sidecar_voice = match resolved {
        Resolved::Voice(name) => Some(name.to_string()),
        Resolved::Default => None,
    };
    assert_eq!(
        sidecar_voice, request.voice,
        "the sidecar would read another voice than the filter judged"
    );
    assert!(!text.contains('\0'), "accepted a text with NUL");
    if strict {
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')),
            "accepted a control character under strict rules"
        );
        assert!(
            !text.to_ascii_lowercase().contains("forbidden phrase"),
            "accepted a text matching a deny pattern"
        );
    }
}
