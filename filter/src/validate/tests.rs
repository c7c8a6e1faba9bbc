//! Request-level tests of the validator: each rule with its status and code, and a table of
//! hostile bodies.

use super::*;

const JSON: Option<&str> = Some("application/json");
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

fn catalog() -> Catalog {
    Catalog {
        voices: vec![
            described("en_US-joe-medium", "en-us", 1, &[]),
            described("coqui-vits", "en", 3, &[("spk_a", 0), ("spk_b", 1), ("spk_c", 2)]),
            CatalogVoice::Name("plain".into()),
        ],
        default_voice: Some("en_US-joe-medium".into()),
        aliases: BTreeMap::from([("narrator".to_string(), "coqui-vits".to_string())]),
    }
}

fn described(name: &str, language: &str, num_speakers: u32, speakers: &[(&str, u32)]) -> CatalogVoice {
    CatalogVoice::Described(DescribedVoice {
        name: name.into(),
        language: language.into(),
        num_speakers,
        speaker_ids: speakers.iter().map(|&(n, id)| (n.to_string(), id)).collect(),
    })
}

fn validator() -> TextValidator {
    TextRules {
        deny_patterns: vec!["(?i)forbidden phrase".into()],
        catalog: catalog(),
        response_formats: vec!["mp3".into(), "wav".into(), "pcm".into()],
        ..TextRules::default()
    }
    .compile()
    .unwrap()
}

fn openai(body: &str) -> Result<SpeechRequest, Rejection> {
    validator().validate_body(Api::OpenAiSpeech, JSON, body.as_bytes())
}

fn status_code(result: Result<impl std::fmt::Debug, Rejection>) -> (u16, &'static str) {
    let r = result.unwrap_err();
    (r.status(), r.code.as_str())
}

#[test]
fn a_valid_openai_request() {
    let req = openai(
        r#"{"model": "tts-1", "input": "Hello wörld", "voice": "en_US-joe-medium",
            "response_format": "wav", "speed": 1.25, "stream": true, "instructions": "calm"}"#,
    )
    .unwrap();
    assert_eq!(req, SpeechRequest { chars: 11, voice: Some("en_US-joe-medium".into()) });
    let minimal = openai(r#"{"input": "Hi", "voice": null, "speed": null}"#).unwrap();
    assert_eq!(minimal, SpeechRequest { chars: 2, voice: Some("en_US-joe-medium".into()) });
}

#[test]
fn voices_resolve_through_the_catalog_and_aliases() {
    let voice = |body: &str| openai(body).unwrap().voice;
    for name in voxgate_rules::voices::OPENAI_VOICES {
        let body = format!(r#"{{"model": "tts-1", "input": "Hi", "voice": "{name}"}}"#);
        assert_eq!(voice(&body).as_deref(), Some("en_US-joe-medium"), "{name}");
    }
    assert_eq!(voice(r#"{"input": "Hi", "voice": "narrator"}"#).as_deref(), Some("coqui-vits"));
    assert_eq!(voice(r#"{"input": "Hi", "model": "coqui-vits", "voice": "alloy"}"#).as_deref(), Some("coqui-vits"));
    assert_eq!(status_code(openai(r#"{"input": "a", "model": "nobody"}"#)), (400, "unknown_model"));
    let refused = openai(r#"{"input": "a", "voice": "nobody"}"#).unwrap_err();
    assert_eq!((refused.code.as_str(), refused.param), ("unknown_voice", Some("voice")));
}

#[test]
fn speakers_and_languages_are_those_of_the_resolved_voice() {
    let ok = |body: &str| openai(body).map(|r| r.voice).unwrap();
    let refused = |body: &str| {
        let r = openai(body).unwrap_err();
        (r.status(), r.code.as_str(), r.param)
    };
    assert_eq!(ok(r#"{"input": "a", "voice": "coqui-vits", "speaker": "spk_c"}"#).as_deref(), Some("coqui-vits"));
    ok(r#"{"input": "a", "model": "coqui-vits", "speaker": 2}"#);
    ok(r#"{"input": "a", "voice": "alloy", "speaker": 0}"#);
    ok(r#"{"input": "a", "voice": "plain", "speaker": 40}"#);
    for bad in [
        r#"{"input": "a", "voice": "coqui-vits", "speaker": 3}"#,
        r#"{"input": "a", "voice": "narrator", "speaker": "spk_d"}"#,
        r#"{"input": "a", "voice": "alloy", "speaker": 1}"#,
        r#"{"input": "a", "speaker": "5"}"#,
    ] {
        assert_eq!(refused(bad), (400, "unknown_speaker", Some("speaker")), "{bad}");
    }
    let coqui = |query: &str| validator().validate_query(Api::CoquiTts, query).map(|r| r.unwrap().voice);
    assert_eq!(coqui("text=Hi&voice=coqui-vits&speaker_id=spk_b&language_id=EN").unwrap().as_deref(), Some("coqui-vits"));
    coqui("text=Hi&language_id=en_US").unwrap();
    coqui("text=Hi&voice=plain&language_id=de&speaker_id=9").unwrap();
    let e = coqui("text=Hi&language_id=de").unwrap_err();
    assert_eq!((e.code.as_str(), e.param), ("unsupported_language", Some("language_id")));
    let e = coqui("text=Hi&voice=coqui-vits&speaker_id=3").unwrap_err();
    assert_eq!((e.code.as_str(), e.param), ("unknown_speaker", Some("speaker_id")));
}

#[test]
fn catalog_voices_are_names_or_descriptions() {
    let rules: TextRules = serde_json::from_str(
        r#"{"catalog": {"voices": ["a", {"name": "b", "language": "en", "num_speakers": 2, "speaker_ids": {"x": 1}}]}}"#,
    )
    .unwrap();
    assert_eq!(rules.catalog.voices[0], CatalogVoice::Name("a".into()));
    assert_eq!(rules.catalog.voices[1].name(), "b");
    let bad = r#"{"catalog": {"voices": [{"name": "b", "language": "en", "num_speakers": 2, "extra": 1}]}}"#;
    assert!(serde_json::from_str::<TextRules>(bad).is_err());
    let twice = TextRules { catalog: Catalog { voices: vec![CatalogVoice::Name("a".into()), described("a", "en", 1, &[])], ..Catalog::default() }, ..TextRules::default() };
    assert_eq!(twice.compile().unwrap_err().field, "text.catalog.voices[1]");
}

#[test]
fn a_voice_allowlist_holds_for_model_too() {
    let v = TextRules { catalog: catalog(), voices: vec!["en_US-joe-medium".into()], ..TextRules::default() }
        .compile()
        .unwrap();
    let check = |body: &str| v.validate_body(Api::OpenAiSpeech, JSON, body.as_bytes()).map(|r| r.voice);
    assert_eq!(check(r#"{"input": "a", "voice": "alloy"}"#).unwrap().as_deref(), Some("en_US-joe-medium"));
    assert_eq!(status_code(check(r#"{"input": "a", "voice": "coqui-vits"}"#)), (400, "unknown_voice"));
    assert_eq!(status_code(check(r#"{"input": "a", "model": "coqui-vits"}"#)), (400, "unknown_model"));
    assert_eq!(status_code(check(r#"{"input": "a", "voice": "narrator"}"#)), (400, "unknown_voice"));
    let coqui = v.validate_query(Api::CoquiTts, "text=Hi&voice=coqui-vits");
    assert_eq!(status_code(coqui), (400, "unknown_voice"));
}

#[test]
fn openai_field_rules() {
    assert_eq!(status_code(openai(r#"{"voice": "x"}"#)), (400, "missing_field"));
    assert_eq!(status_code(openai(r#"{"input": null}"#)), (400, "missing_field"));
    assert_eq!(status_code(openai(r#"{"input": 5}"#)), (400, "invalid_type"));
    assert_eq!(status_code(openai(r#"{"input": ["a"]}"#)), (400, "invalid_type"));
    assert_eq!(status_code(openai(r#"{"input": "a", "model": 1}"#)), (400, "invalid_type"));
    assert_eq!(status_code(openai(r#"{"input": "a", "voice": 1}"#)), (400, "invalid_type"));
    assert_eq!(status_code(openai(r#"{"input": "a", "speed": "1.0"}"#)), (400, "invalid_type"));
    assert_eq!(status_code(openai(r#"{"input": "a", "stream": "yes"}"#)), (400, "invalid_type"));
    assert_eq!(status_code(openai(r#"{"input": "a", "voice": "EN_US-JOE-MEDIUM"}"#)), (400, "unknown_voice"));
    assert_eq!(status_code(openai(r#"{"input": "a", "response_format": "flac"}"#)), (400, "unsupported_response_format"));
    assert_eq!(status_code(openai(r#"{"input": "a", "response_format": "aac"}"#)), (400, "unsupported_response_format"));
    assert!(openai(r#"{"input": "a", "response_format": "MP3"}"#).is_ok());
    assert_eq!(status_code(openai(r#"{"input": "a", "stream_format": "events"}"#)), (400, "unsupported_stream_format"));
    assert!(openai(r#"{"input": "a", "stream_format": "sse"}"#).is_ok());
    assert_eq!(status_code(openai(r#"{"input": "a", "speed": 0.2}"#)), (400, "invalid_speed"));
    assert_eq!(status_code(openai(r#"{"input": "a", "speed": 4.01}"#)), (400, "invalid_speed"));
    assert!(openai(r#"{"input": "a", "speed": 0.25}"#).is_ok());
    assert!(openai(r#"{"input": "a", "speed": 4}"#).is_ok());
    assert_eq!(status_code(openai(r#"{"input": "   "}"#)), (400, "empty_input"));
    assert_eq!(status_code(openai(r#"{"input": "a Forbidden Phrase"}"#)), (400, "denied_text"));
    let long = format!(r#"{{"input": "{}"}}"#, "a".repeat(4097));
    assert_eq!(status_code(openai(&long)), (400, "input_too_long"));
    let exact = format!(r#"{{"input": "{}"}}"#, "é".repeat(4096));
    assert_eq!(openai(&exact).unwrap().chars, 4096);
}

#[test]
fn a_narrower_speed_range_bounds_only_the_speeds_asked_for() {
    let v = TextRules { min_speed: 1.5, max_speed: 2.0, ..TextRules::default() }.compile().unwrap();
    let check = |body: &str| v.validate_body(Api::OpenAiSpeech, JSON, body.as_bytes());
    assert!(check(r#"{"input": "a"}"#).is_ok());
    assert!(check(r#"{"input": "a", "speed": 1.5}"#).is_ok());
    assert_eq!(status_code(check(r#"{"input": "a", "speed": 1.0}"#)), (400, "invalid_speed"));
}

#[test]
fn empty_lists_allow_any_voice_and_format() {
    let v = TextRules::default().compile().unwrap();
    let req = v
        .validate_body(Api::OpenAiSpeech, JSON, br#"{"input": "a", "voice": "any", "response_format": "flac"}"#)
        .unwrap();
    assert_eq!(req.voice.as_deref(), Some("any"));
}

#[test]
fn content_types() {
    let v = validator();
    let check = |api, ct| v.check_content_type(api, ct);
    assert!(check(Api::OpenAiSpeech, JSON).is_ok());
    assert!(check(Api::OpenAiSpeech, Some("application/json; charset=utf-8")).is_ok());
    assert_eq!(status_code(check(Api::OpenAiSpeech, Some("application/json; charset=iso-8859-1"))), (415, "unsupported_media_type"));
    assert_eq!(status_code(check(Api::OpenAiSpeech, Some("text/plain"))), (415, "unsupported_media_type"));
    assert_eq!(status_code(check(Api::OpenAiSpeech, FORM)), (415, "unsupported_media_type"));
    assert_eq!(status_code(check(Api::OpenAiSpeech, None)), (415, "unsupported_media_type"));
    assert!(check(Api::CoquiTts, JSON).is_ok());
    assert!(check(Api::CoquiTts, FORM).is_ok());
    assert!(check(Api::CoquiTts, None).is_ok());
    assert_eq!(status_code(check(Api::CoquiTts, Some("multipart/form-data; boundary=x"))), (415, "unsupported_media_type"));
    assert!(check(Api::Metadata, None).is_ok());
    // the body check agrees with the header check
    assert_eq!(status_code(v.validate_body(Api::OpenAiSpeech, Some("text/plain"), b"{}")), (415, "unsupported_media_type"));
}

#[test]
fn body_size_limit() {
    let v = TextRules { max_body_bytes: 100, ..TextRules::default() }.compile().unwrap();
    assert_eq!(v.max_body_bytes(), 100);
    assert!(v.check_body_size(100).is_ok());
    assert_eq!(status_code(v.check_body_size(101)), (413, "body_too_large"));
    let body = format!(r#"{{"input": "{}"}}"#, "a".repeat(100));
    assert_eq!(status_code(v.validate_body(Api::OpenAiSpeech, JSON, body.as_bytes())), (413, "body_too_large"));
}

#[test]
fn coqui_json_form_and_query() {
    let v = validator();
    let req = v
        .validate_body(Api::CoquiTts, JSON, br#"{"text": "Hello", "speaker_id": 0, "language_id": "en", "style_wav": ""}"#)
        .unwrap();
    assert_eq!(req, SpeechRequest { chars: 5, voice: Some("en_US-joe-medium".into()) });
    assert!(v.validate_body(Api::CoquiTts, JSON, br#"{"text": "Hello", "speaker_id": "spk_b", "voice": "coqui-vits"}"#).is_ok());
    assert_eq!(status_code(v.validate_body(Api::CoquiTts, JSON, br#"{"text": "Hi", "speaker_id": -1}"#)), (400, "invalid_type"));
    assert_eq!(status_code(v.validate_body(Api::CoquiTts, JSON, br#"{"text": "Hi", "speaker_id": 1.5}"#)), (400, "invalid_type"));
    assert_eq!(status_code(v.validate_body(Api::CoquiTts, JSON, br#"{"text": "Hi", "language_id": 1}"#)), (400, "invalid_type"));
    assert_eq!(status_code(v.validate_body(Api::CoquiTts, JSON, br#"{"input": "Hi"}"#)), (400, "missing_field"));
    let req = v.validate_body(Api::CoquiTts, FORM, b"text=Hello+there&speaker_id=spk_a&voice=coqui-vits").unwrap();
    assert_eq!(req, SpeechRequest { chars: 11, voice: Some("coqui-vits".into()) });
    assert_eq!(status_code(v.validate_body(Api::CoquiTts, FORM, b"text=a&voice=nope")), (400, "unknown_voice"));
    assert_eq!(status_code(v.validate_body(Api::CoquiTts, None, b"")), (400, "missing_field"));
    assert_eq!(status_code(v.validate_body(Api::CoquiTts, None, b"text=hi")), (415, "unsupported_media_type"));

    let req = v.validate_query(Api::CoquiTts, "?text=Guten%20Tag&language_id=de&voice=plain").unwrap().unwrap();
    assert_eq!(req.chars, 9);
    assert_eq!(status_code(v.validate_query(Api::CoquiTts, "speaker_id=1")), (400, "missing_field"));
    assert_eq!(status_code(v.validate_query(Api::CoquiTts, "text=%E2%80%AEevil")), (400, "forbidden_character"));
    assert_eq!(status_code(v.validate_query(Api::CoquiTts, "text=%zz")), (400, "invalid_encoding"));
    assert_eq!(status_code(v.validate_query(Api::CoquiTts, "text=a&text=b")), (400, "duplicate_field"));
    assert_eq!(status_code(v.validate_query(Api::CoquiTts, "text=+++")), (400, "empty_input"));
    assert_eq!(v.validate_query(Api::OpenAiSpeech, "text=whatever").unwrap(), None);
    assert_eq!(v.validate_query(Api::Metadata, "").unwrap(), None);
    assert_eq!(v.validate_body(Api::Metadata, None, b"").unwrap(), SpeechRequest { chars: 0, voice: None });
}

#[test]
fn hostile_bodies() {
    let v = validator();
    let nested = format!(r#"{{"input": "a", "x": {}{}}}"#, "[".repeat(1000), "]".repeat(1000));
    let five_mb = format!(r#"{{"input": "{}"}}"#, "a".repeat(5 << 20));
    let cases: Vec<(&str, Vec<u8>, (u16, &str))> = vec![
        ("NUL escaped", br#"{"input": "a\u0000b"}"#.to_vec(), (400, "forbidden_character")),
        ("NUL raw in a string", b"{\"input\": \"a\0b\"}".to_vec(), (400, "malformed_json")),
        ("overlong UTF-8 C0 80", b"{\"input\": \"a\xC0\x80b\"}".to_vec(), (400, "invalid_utf8")),
        ("CESU surrogate bytes", b"{\"input\": \"\xED\xA0\x80\"}".to_vec(), (400, "invalid_utf8")),
        ("truncated UTF-8", b"{\"input\": \"\xE2\x82\"}".to_vec(), (400, "invalid_utf8")),
        ("lone surrogate escape", br#"{"input": "\ud800"}"#.to_vec(), (400, "malformed_json")),
        ("bidi override raw", "{\"input\": \"abc\u{202E}def\"}".as_bytes().to_vec(), (400, "forbidden_character")),
        ("bidi override escaped", br#"{"input": "abc\u202edef"}"#.to_vec(), (400, "forbidden_character")),
        ("bidi isolate", br#"{"input": "abc\u2067def"}"#.to_vec(), (400, "forbidden_character")),
        ("zero-width space", br#"{"input": "forbidden\u200b phrase"}"#.to_vec(), (400, "forbidden_character")),
        ("byte order mark inside", br#"{"input": "a\ufeffb"}"#.to_vec(), (400, "forbidden_character")),
        ("tag characters", "{\"input\": \"hi\u{E0069}\u{E0067}\"}".as_bytes().to_vec(), (400, "forbidden_character")),
        ("escape character", br#"{"input": "\u001b[31mred"}"#.to_vec(), (400, "forbidden_character")),
        ("C1 control", br#"{"input": "a\u0085b"}"#.to_vec(), (400, "forbidden_character")),
        ("5 MB body", five_mb.into_bytes(), (413, "body_too_large")),
        ("depth-1000 nesting", nested.into_bytes(), (400, "malformed_json")),
        ("duplicate input", br#"{"input": "benign", "input": "a forbidden phrase"}"#.to_vec(), (400, "duplicate_field")),
        ("duplicate via escape", br#"{"input": "a", "\u0069nput": "b"}"#.to_vec(), (400, "duplicate_field")),
        ("input is a number", br#"{"input": 42}"#.to_vec(), (400, "invalid_type")),
        ("input is an object", br#"{"input": {"text": "a"}}"#.to_vec(), (400, "invalid_type")),
        ("speed is a string", br#"{"input": "a", "speed": "fast"}"#.to_vec(), (400, "invalid_type")),
        ("trailing garbage", br#"{"input": "a"} x"#.to_vec(), (400, "malformed_json")),
        ("second document", br#"{"input": "a"}{"input": "b"}"#.to_vec(), (400, "malformed_json")),
        ("top-level array", br#"[{"input": "a"}]"#.to_vec(), (400, "invalid_body")),
        ("empty body", Vec::new(), (400, "malformed_json")),
        ("UTF-8 BOM prefix", b"\xEF\xBB\xBF{\"input\": \"a\"}".to_vec(), (400, "malformed_json")),
        ("huge number", br#"{"input": "a", "speed": 1e999}"#.to_vec(), (400, "malformed_json")),
    ];
    for (name, body, expected) in cases {
        let r = v.validate_body(Api::OpenAiSpeech, JSON, &body).unwrap_err();
        assert_eq!((r.status(), r.code.as_str()), expected, "{name}");
        assert!(!r.message.contains("forbidden phrase") && !r.message.contains("benign"), "{name}: {}", r.message);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&r.body()).unwrap()["error"]["code"], expected.1);
    }
}

#[test]
fn configuration_errors_name_the_field() {
    let field = |rules: TextRules| rules.compile().unwrap_err().field;
    assert_eq!(field(TextRules { max_body_bytes: 0, ..TextRules::default() }), "text.max_body_bytes");
    assert_eq!(field(TextRules { max_body_bytes: 32 << 20, ..TextRules::default() }), "text.max_body_bytes");
    assert_eq!(field(TextRules { max_chars: 0, ..TextRules::default() }), "text.max_chars");
    assert_eq!(field(TextRules { min_speed: 0.0, ..TextRules::default() }), "text.min_speed");
    assert_eq!(field(TextRules { min_speed: f64::NAN, ..TextRules::default() }), "text.min_speed");
    assert_eq!(field(TextRules { max_speed: 0.1, ..TextRules::default() }), "text.max_speed");
    assert_eq!(field(TextRules { voices: vec!["a".into(), "a".into()], ..TextRules::default() }), "text.voices[1]");
    assert_eq!(field(TextRules { response_formats: vec![" ".into()], ..TextRules::default() }), "text.response_formats[0]");
    assert_eq!(field(TextRules { deny_patterns: vec!["[".into()], ..TextRules::default() }), "text.deny_patterns[0]");
}

#[test]
fn configuration_json() {
    let rules: TextRules = serde_json::from_str(
        r#"{ "max_body_bytes": 65536, "max_chars": 4096, "allow_control_chars": false,
             "deny_patterns": ["(?i)forbidden phrase"], "voices": ["en_US-joe-medium"],
             "response_formats": ["wav", "pcm"], "min_speed": 0.25, "max_speed": 4.0 }"#,
    )
    .unwrap();
    assert!(rules.compile().is_ok());
    let defaults: TextRules = serde_json::from_str("{}").unwrap();
    assert_eq!(defaults, TextRules::default());
    assert!(serde_json::from_str::<TextRules>(r#"{"max_char": 5}"#).is_err());
    let apis: Vec<Api> = serde_json::from_str(r#"["openai_speech", "coqui_tts", "metadata"]"#).unwrap();
    assert_eq!(apis, vec![Api::OpenAiSpeech, Api::CoquiTts, Api::Metadata]);
}
