//! The plugin configuration as Envoy hands it over: arbitrary bytes through
//! `config::load` (parse, then compile every section), and each section alone through its
//! owner's serde type and `compile`. A configuration that loads must give sections that
//! compile on their own, errors must name a field, and the compiled objects must serve a
//! request without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use voxgate_filter::auth::AuthConfig;
use voxgate_filter::config::{load, CompiledConfig};
use voxgate_filter::ratelimit::{Identity, RateLimitConfig};
use voxgate_filter::routes::Api;
use voxgate_filter::validate::TextRules;
use voxgate_fuzz::store::FuzzStore;

fuzz_target!(|data: &[u8]| {
    let loaded = load(data);
    if let Err(error) = &loaded {
        // Only a member literally named "" leaves the field name empty.
        let names_field = !error.field.is_empty() || error.message.contains("field ``");
        assert!(
            names_field && !error.message.is_empty(),
            "an error without a field: {error:?}"
        );
    }
    let sections = sections(data);
    if let Ok(compiled) = loaded {
        let (auth, text, limits) = sections.expect("a loaded configuration is a JSON object");
        assert!(
            auth.is_none_or(|r| r.is_ok()),
            "auth compiled in the whole but not alone"
        );
        assert!(
            text.is_none_or(|r| r.is_ok()),
            "text compiled in the whole but not alone"
        );
        assert!(
            limits.is_none_or(|r| r.is_ok()),
            "rate_limits compiled in the whole but not alone"
        );
        serve_one_request(&compiled);
    }
});

type SectionResults = (
    Option<Result<(), String>>,
    Option<Result<(), String>>,
    Option<Result<(), String>>,
);

/// Parses and compiles each section found in the document by itself.
fn sections(data: &[u8]) -> Option<SectionResults> {
    let Ok(Value::Object(document)) = serde_json::from_slice::<Value>(data) else {
        return None;
    };
    let auth = document.get("auth").filter(|v| !v.is_null()).map(|v| {
        serde_json::from_value::<AuthConfig>(v.clone())
            .map_err(|e| e.to_string())?
            .compile()
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let text = document.get("text").map(|v| {
        serde_json::from_value::<TextRules>(v.clone())
            .map_err(|e| e.to_string())?
            .compile()
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let limits = document.get("rate_limits").map(|v| {
        serde_json::from_value::<RateLimitConfig>(v.clone())
            .map_err(|e| e.to_string())?
            .compile()
            .map(drop)
            .map_err(|e| e.to_string())
    });
    Some((auth, text, limits))
}

/// Routes, validates and charges one speech request with the compiled configuration.
fn serve_one_request(compiled: &CompiledConfig) {
    for path in [
        "/v1/audio/speech",
        "/api/tts?text=Hello",
        "/v1/models",
        "/healthz",
        "/nowhere",
    ] {
        let _ = compiled.routes.find(path);
    }
    let body = br#"{"model": "tts-1", "input": "Hello world.", "voice": "alloy", "speed": 1.0}"#;
    let _ = compiled
        .text
        .validate_body(Api::OpenAiSpeech, Some("application/json"), body);
    let _ = compiled
        .text
        .validate_query(Api::CoquiTts, "text=Hello+world");
    let store = FuzzStore::with_fixed_secret();
    let who = Identity {
        subject: Some("alice"),
        plan: Some("pro"),
        client_addr: "203.0.113.9:4711",
    };
    for now_ms in [0, 1_800_000_000_000, u64::MAX] {
        let _ = compiled.rate_limits.admit(&store, now_ms, &who, 12);
        let _ = compiled.rate_limits.release_in_flight(&store, &who);
        if let Some(table) = &compiled.failed_auth {
            let _ = table.take(&store, now_ms, "203.0.113.9", 1);
        }
    }
}
