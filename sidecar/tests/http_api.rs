//! The sidecar over real HTTP: the built binary, the real Joe voice and a Coqui multi-speaker
//! fixture, driven through every status code of the API, streaming, disconnects, bursts
//! beyond the queue, deadlines and graceful shutdown.

mod support;

use std::io::Read;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    agent, joe_files, metric, pcm_seconds, post_json, rms, serial, voices_dir, wait_for_metrics,
    Answer, Sidecar, Wav, JOE, JOE_SAMPLE_RATE, MULTI,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const WAV_HEADER_LEN: usize = 44;

const PARAGRAPH: &str = "The quick brown fox jumps over the lazy dog. \
    A second sentence follows the first one. \
    Speech synthesis turns written words into sound.";
const PARAGRAPH_WORDS: f64 = 22.0;

/// A short first sentence, then long ones: the first chunk can only arrive early if audio
/// leaves sentence by sentence.
const STREAM_TEXT: &str = "This is the first sentence of the stream. \
    The second sentence is a good deal longer, so that producing it takes the engine a while \
    and the client notices that the first sentence arrived well before it. \
    The third sentence keeps going in the same way, with plenty of words to say and nothing \
    much to mean, which is exactly what a test of streaming audio needs. \
    A fourth sentence adds more of the same, describing rivers, mountains, valleys and the \
    long roads that wind between them through the quiet countryside. \
    The fifth and final sentence closes the paragraph, after which the stream should end.";
const STREAM_SENTENCES: f64 = 5.0;

/// POSTs an OpenAI speech request; these tests read WAV, so that is the format unless the
/// body names another.
fn speech(sidecar: &Sidecar, mut body: serde_json::Value) -> Answer {
    if let Some(fields) = body.as_object_mut() {
        fields
            .entry("response_format")
            .or_insert_with(|| json!("wav"));
    }
    post_json(
        &agent(CALL_TIMEOUT),
        &sidecar.url("/v1/audio/speech"),
        &body,
    )
}

fn assert_plausible_speech(wav: &Wav, words: f64) {
    let seconds = wav.seconds();
    let per_word = seconds / words;
    assert!(
        (0.15..=1.0).contains(&per_word),
        "{seconds:.2} s for {words} words is not speech-like"
    );
    let loudness = rms(&wav.samples);
    assert!(
        (0.01..=0.5).contains(&loudness),
        "RMS {loudness:.4} is neither silence nor noise-free speech"
    );
}

/// The model file is a named pipe, so loading blocks until the test writes the model into
/// it: the not-ready window is held open for as long as the checks take.
#[test]
fn readyz_is_503_until_the_voices_are_loaded() {
    let _serial = serial();
    let [model, config] = joe_files();
    let voices = tempfile::TempDir::with_prefix("voxgate-fifo-").expect("scratch dir");
    std::os::unix::fs::symlink(
        &config,
        voices.path().join(config.file_name().expect("name")),
    )
    .expect("link config");
    let pipe = voices.path().join(model.file_name().expect("name"));
    let made = std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");

    let mut sidecar = Sidecar::spawn(voices.path(), &["--sessions-per-voice", "1"]);
    let http = agent(CALL_TIMEOUT);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(sidecar.url("/healthz"))
        .call()
        .is_ok_and(|response| response.status() == 200)
    {
        assert!(
            Instant::now() < deadline,
            "no /healthz answer:\n{}",
            sidecar.log()
        );
        thread::sleep(Duration::from_millis(20));
    }

    let not_ready = Answer::from(http.get(sidecar.url("/readyz")).call().expect("GET"));
    not_ready.assert_error(503, "not_ready");
    assert_eq!(not_ready.header("retry-after"), Some("1"));
    let refused = speech(&sidecar, json!({"input": "Too early."}));
    refused.assert_error(503, "not_ready");
    assert_eq!(refused.header("retry-after"), Some("1"));
    Answer::from(
        http.get(sidecar.url("/v1/audio/voices"))
            .call()
            .expect("GET"),
    )
    .assert_error(503, "not_ready");
    assert_eq!(
        metric(&sidecar.metrics(), "voxgate_sidecar_ready", &[]),
        0.0
    );

    let feeder = thread::spawn(move || {
        let mut source = std::fs::File::open(model).expect("open model");
        let mut sink = std::fs::OpenOptions::new()
            .write(true)
            .open(pipe)
            .expect("open pipe");
        std::io::copy(&mut source, &mut sink).expect("feed the model");
    });
    sidecar.wait_ready();
    feeder.join().expect("model fed");
    assert_eq!(
        metric(&sidecar.metrics(), "voxgate_sidecar_ready", &[]),
        1.0
    );
    assert_eq!(speech(&sidecar, json!({"input": "Ready now."})).status, 200);
}

#[test]
fn speech_endpoints_return_playable_audio() {
    let _serial = serial();
    let voices = voices_dir();
    let sidecar = Sidecar::start(voices.path(), &[]);

    let wav_answer = speech(
        &sidecar,
        json!({"model": "tts-1", "input": PARAGRAPH, "voice": "alloy", "response_format": "wav"}),
    );
    assert_eq!(
        wav_answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&wav_answer.body)
    );
    assert_eq!(wav_answer.header("content-type"), Some("audio/wav"));
    assert_eq!(
        wav_answer.header("content-length"),
        Some(wav_answer.body.len().to_string().as_str())
    );
    let wav = Wav::parse(&wav_answer.body);
    assert_eq!(wav.sample_rate, JOE_SAMPLE_RATE);
    assert_plausible_speech(&wav, PARAGRAPH_WORDS);

    let pcm = speech(
        &sidecar,
        json!({"model": "voxgate", "input": PARAGRAPH, "voice": JOE, "response_format": "pcm"}),
    );
    assert_eq!(pcm.status, 200);
    assert_eq!(pcm.header("content-type"), Some("audio/pcm"));
    assert_eq!(pcm.header("x-sample-rate"), Some("22050"));
    assert_eq!(pcm.body.len() % 2, 0, "whole 16-bit samples");
    let pcm_secs = pcm_seconds(pcm.body.len(), JOE_SAMPLE_RATE);
    let ratio = pcm_secs / wav.seconds();
    assert!(
        (0.8..=1.25).contains(&ratio),
        "pcm {pcm_secs:.2} s vs wav {:.2} s for the same text",
        wav.seconds()
    );

    let fast = speech(
        &sidecar,
        json!({"input": PARAGRAPH, "voice": JOE, "speed": 2.0}),
    );
    let slow = speech(
        &sidecar,
        json!({"input": PARAGRAPH, "model": JOE, "voice": "nova", "speed": 0.5}),
    );
    let (fast, slow) = (Wav::parse(&fast.body), Wav::parse(&slow.body));
    assert!(
        fast.seconds() < slow.seconds() * 0.6,
        "speed 2 gave {:.2} s, speed 0.5 gave {:.2} s",
        fast.seconds(),
        slow.seconds()
    );

    let multi = speech(
        &sidecar,
        json!({"input": "Hello world. This is a test!", "voice": MULTI, "speaker": "spk_b"}),
    );
    assert_eq!(
        multi.status,
        200,
        "{}",
        String::from_utf8_lossy(&multi.body)
    );
    assert!(!Wav::parse(&multi.body).samples.is_empty());
    let multi_by_index = speech(
        &sidecar,
        json!({"input": "Hello world.", "voice": MULTI, "speaker": 2}),
    );
    assert_eq!(multi_by_index.status, 200);

    let http = agent(CALL_TIMEOUT);
    let coqui_get = Answer::from(
        http.get(sidecar.url("/api/tts"))
            .query("text", "Hello from the Coqui compatible route.")
            .query("speaker_id", "")
            .query("language_id", "")
            .query("style_wav", "")
            .call()
            .expect("GET /api/tts"),
    );
    assert_eq!(
        coqui_get.status,
        200,
        "{}",
        String::from_utf8_lossy(&coqui_get.body)
    );
    assert_eq!(coqui_get.header("content-type"), Some("audio/wav"));
    assert_plausible_speech(&Wav::parse(&coqui_get.body), 6.0);

    let coqui_json = post_json(
        &http,
        &sidecar.url("/api/tts"),
        &json!({"text": "Posted as JSON.", "language_id": "en", "speaker_id": ""}),
    );
    assert_eq!(coqui_json.status, 200);
    Wav::parse(&coqui_json.body);

    let coqui_form = Answer::from(
        http.post(sidecar.url("/api/tts"))
            .send_form([
                ("text", "Posted as a form."),
                ("voice", MULTI),
                ("speaker_id", "spk_c"),
            ])
            .expect("POST form"),
    );
    assert_eq!(
        coqui_form.status,
        200,
        "{}",
        String::from_utf8_lossy(&coqui_form.body)
    );
    Wav::parse(&coqui_form.body);

    let coqui_query_post = Answer::from(
        http.post(sidecar.url("/api/tts"))
            .query("text", "Posted with the text in the query string.")
            .send_empty()
            .expect("POST query"),
    );
    assert_eq!(coqui_query_post.status, 200);
    Wav::parse(&coqui_query_post.body);

    let text = sidecar.metrics();
    let speech_ok = [
        ("route", "/v1/audio/speech"),
        ("voice", JOE),
        ("status", "200"),
    ];
    assert_eq!(
        metric(&text, "voxgate_sidecar_requests_total", &speech_ok),
        4.0
    );
    let coqui_ok = [("route", "/api/tts"), ("status", "200")];
    assert_eq!(
        metric(&text, "voxgate_sidecar_requests_total", &coqui_ok),
        4.0
    );
    assert!(
        metric(
            &text,
            "voxgate_sidecar_synthesis_seconds_count",
            &[("voice", JOE)]
        ) >= 7.0
    );
    assert!(
        metric(
            &text,
            "voxgate_sidecar_audio_seconds_sum",
            &[("voice", JOE)]
        ) > 10.0
    );
    assert!(
        metric(
            &text,
            "voxgate_sidecar_real_time_factor_count",
            &[("voice", JOE)]
        ) >= 7.0
    );
    assert!(
        metric(
            &text,
            "voxgate_sidecar_sentences_total",
            &[("voice", MULTI)]
        ) >= 3.0
    );
    assert_eq!(metric(&text, "voxgate_sidecar_in_flight", &[]), 0.0);
    assert_eq!(metric(&text, "voxgate_sidecar_queue_depth", &[]), 0.0);
}

#[test]
fn bad_requests_get_precise_errors() {
    let _serial = serial();
    let voices = voices_dir();
    let sidecar = Sidecar::start(voices.path(), &[]);
    let http = agent(CALL_TIMEOUT);
    let speech_url = sidecar.url("/v1/audio/speech");

    let cases = [
        (json!({"input": ""}), "empty_input"),
        (json!({"input": "   "}), "empty_input"),
        (json!({"voice": JOE}), "missing_field"),
        (json!({"input": "x".repeat(4097)}), "input_too_long"),
        (
            json!({"input": "Hi there.", "voice": "nobody"}),
            "unknown_voice",
        ),
        (
            json!({"input": "Hi there.", "model": "whisper-1"}),
            "unknown_model",
        ),
        (json!({"input": "Hi there.", "speed": 4.5}), "invalid_speed"),
        (json!({"input": "Hi there.", "speed": 0.2}), "invalid_speed"),
        (
            json!({"input": "Hi there.", "response_format": "aac"}),
            "unsupported_response_format",
        ),
        (
            json!({"input": "Hi there.", "response_format": "ogg"}),
            "unsupported_response_format",
        ),
        (
            json!({"input": "Hi there.", "stream_format": "events"}),
            "unsupported_stream_format",
        ),
        (
            json!({"input": "Hi there.", "voice": MULTI, "speaker": 3}),
            "unknown_speaker",
        ),
        (
            json!({"input": "Hi there.", "voice": MULTI, "speaker": 4_000_000_000u64}),
            "unknown_speaker",
        ),
        (
            json!({"input": "Hi there.", "voice": MULTI, "speaker": "spk_z"}),
            "unknown_speaker",
        ),
        (
            json!({"input": "Hi there.", "voice": JOE, "speaker": 1}),
            "unknown_speaker",
        ),
        (
            json!({"input": "Hi there.", "speed": "fast"}),
            "invalid_type",
        ),
        (json!({"input": "Bell \u{7} here."}), "forbidden_character"),
        (json!({"input": "a\u{202E}b"}), "forbidden_character"),
    ];
    for (body, code) in &cases {
        speech(&sidecar, body.clone()).assert_error(400, code);
    }

    let post_raw = |content_type: Option<&str>, body: &[u8]| {
        let mut request = http.post(&speech_url);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        Answer::from(request.send(body).expect("POST"))
    };
    post_raw(Some("application/json"), br#"{"input": "Hi there.""#)
        .assert_error(400, "malformed_json");
    post_raw(Some("application/json"), b"[\"Hi there.\"]").assert_error(400, "invalid_body");
    post_raw(Some("application/json"), b"").assert_error(400, "malformed_json");
    post_raw(Some("application/json"), br#"{"input": "a", "input": "b"}"#)
        .assert_error(400, "duplicate_field");
    post_raw(Some("text/plain"), br#"{"input": "Hi there."}"#)
        .assert_error(415, "unsupported_media_type");
    post_raw(None, br#"{"input": "Hi there."}"#).assert_error(415, "unsupported_media_type");
    // The body limit is the filter's default, 65536 bytes: a body of that size is read (and
    // refused for what it holds), one byte more is refused for its size.
    post_raw(Some("application/json"), &vec![b' '; 65_536]).assert_error(400, "malformed_json");
    post_raw(Some("application/json"), &vec![b' '; 65_537]).assert_error(413, "body_too_large");

    let wrong_method = Answer::from(http.get(&speech_url).call().expect("GET"));
    wrong_method.assert_error(405, "method_not_allowed");
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    let wrong_method = Answer::from(http.delete(sidecar.url("/api/tts")).call().expect("DELETE"));
    wrong_method.assert_error(405, "method_not_allowed");
    Answer::from(
        http.get(sidecar.url("/v1/audio/speeches"))
            .call()
            .expect("GET"),
    )
    .assert_error(404, "unknown_route");
    Answer::from(http.get(sidecar.url("/")).call().expect("GET")).assert_error(404, "unknown_route");

    let tts = sidecar.url("/api/tts");
    Answer::from(http.get(&tts).call().expect("GET")).assert_error(400, "missing_field");
    Answer::from(http.get(&tts).query("text", "").call().expect("GET"))
        .assert_error(400, "empty_input");
    Answer::from(
        http.get(&tts)
            .query("text", "Hi there.")
            .query("voice", MULTI)
            .query("speaker_id", "7")
            .call()
            .expect("GET"),
    )
    .assert_error(400, "unknown_speaker");
    Answer::from(
        http.get(&tts)
            .query("text", "Hi there.")
            .query("language_id", "de")
            .call()
            .expect("GET"),
    )
    .assert_error(400, "unsupported_language");
    Answer::from(
        http.post(&tts)
            .header("content-type", "text/plain")
            .send("Hi there.")
            .expect("POST"),
    )
    .assert_error(415, "unsupported_media_type");
    post_json(
        &http,
        &tts,
        &json!({"text": "Hi there.", "voice": "nobody"}),
    )
    .assert_error(400, "unknown_voice");

    let text = sidecar.metrics();
    assert_eq!(
        metric(
            &text,
            "voxgate_sidecar_rejections_total",
            &[("reason", "unknown_speaker")]
        ),
        5.0
    );
    assert_eq!(
        metric(
            &text,
            "voxgate_sidecar_rejections_total",
            &[("reason", "unsupported_media_type")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "voxgate_sidecar_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "voxgate_sidecar_requests_total",
            &[("route", "/v1/audio/speech"), ("status", "400")]
        ),
        (cases.len() + 5) as f64
    );
    assert_eq!(
        metric(&text, "voxgate_sidecar_sentences_total", &[]),
        0.0,
        "nothing reached the model"
    );
    assert!(sidecar.log().contains("listening"), "the service logs");
    assert!(
        !sidecar.log().contains("Hi there"),
        "logs never hold the user's text"
    );
}

#[test]
fn meta_endpoints_describe_the_service() {
    let _serial = serial();
    let voices = voices_dir();
    let sidecar = Sidecar::start(voices.path(), &[]);
    let http = agent(CALL_TIMEOUT);
    let get = |path: &str| Answer::from(http.get(sidecar.url(path)).call().expect("GET"));

    let health = get("/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let ready = get("/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["voices"], 2);

    let listed = get("/v1/audio/voices").json();
    assert_eq!(listed["default_voice"], JOE);
    let names: Vec<&str> = listed["voices"]
        .as_array()
        .expect("voices array")
        .iter()
        .filter_map(|voice| voice["name"].as_str())
        .collect();
    assert_eq!(names, vec![MULTI, JOE], "sorted by name");
    let joe = &listed["voices"][1];
    assert_eq!(joe["format"], "piper");
    assert_eq!(joe["sample_rate"], JOE_SAMPLE_RATE);
    assert_eq!(joe["num_speakers"], 1);
    assert_eq!(joe["default"], true);
    assert!(joe["language"]
        .as_str()
        .is_some_and(|l| l.to_ascii_lowercase().starts_with("en")));
    let multi = &listed["voices"][0];
    assert_eq!(multi["format"], "coqui");
    assert_eq!(multi["num_speakers"], 3);
    assert_eq!(multi["speakers"], json!(["spk_a", "spk_b", "spk_c"]));

    let models = get("/v1/models").json();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("model list")
        .iter()
        .map(|model| {
            assert_eq!(model["object"], "model");
            model["id"].as_str().expect("id")
        })
        .collect();
    for id in ["tts-1", "tts-1-hd", "voxgate", JOE, MULTI] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }

    let scrape = get("/metrics");
    assert_eq!(scrape.status, 200);
    assert!(scrape
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    let text = String::from_utf8(scrape.body).expect("UTF-8");
    assert_eq!(metric(&text, "voxgate_sidecar_ready", &[]), 1.0);
    assert_eq!(metric(&text, "voxgate_sidecar_voices", &[]), 2.0);
    assert!(text.contains("# TYPE voxgate_sidecar_requests_total counter"));
    assert!(
        metric(
            &text,
            "voxgate_sidecar_requests_total",
            &[("route", "/readyz"), ("status", "200")]
        ) >= 1.0
    );
}

#[test]
fn streaming_sends_the_first_sentence_before_the_rest_is_synthesized() {
    let _serial = serial();
    let voices = voices_dir();
    let sidecar = Sidecar::start(voices.path(), &["--workers", "1"]);
    let http = agent(CALL_TIMEOUT);

    let started = Instant::now();
    let response = http
        .post(sidecar.url("/v1/audio/speech"))
        .header("content-type", "application/json")
        .send(
            json!({"input": STREAM_TEXT, "voice": JOE, "stream": true, "response_format": "wav"})
                .to_string()
                .as_bytes(),
        )
        .expect("POST");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("transfer-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("chunked")
    );
    assert!(response.headers().get("content-length").is_none());
    let mut reader = response.into_body().into_reader();

    let mut body = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    while body.len() <= WAV_HEADER_LEN {
        let read = reader.read(&mut buffer).expect("read stream");
        assert!(read > 0, "stream ended before any audio");
        body.extend_from_slice(&buffer[..read]);
    }
    let first_chunk_at = started.elapsed();
    let at_first_chunk = sidecar.metrics();
    let sentences_done = metric(
        &at_first_chunk,
        "voxgate_sidecar_sentences_total",
        &[("voice", JOE)],
    );
    // A lone request's later sentences run on every idle worker.
    assert!(
        metric(&at_first_chunk, "voxgate_sidecar_in_flight", &[]) >= 1.0,
        "still synthesizing"
    );
    assert!(
        sentences_done < STREAM_SENTENCES,
        "audio arrived only after {sentences_done} of {STREAM_SENTENCES} sentences were synthesized"
    );

    reader.read_to_end(&mut body).expect("read to the end");
    let complete_at = started.elapsed();
    assert!(first_chunk_at < complete_at);

    assert_eq!(&body[0..4], b"RIFF");
    assert_eq!(&body[4..8], &u32::MAX.to_le_bytes(), "streaming RIFF size");
    assert_eq!(&body[36..40], b"data");
    assert_eq!(
        &body[40..44],
        &u32::MAX.to_le_bytes(),
        "streaming data size"
    );
    assert_eq!(&body[24..28], &JOE_SAMPLE_RATE.to_le_bytes());
    let audio = &body[WAV_HEADER_LEN..];
    assert_eq!(audio.len() % 2, 0);
    let samples: Vec<i16> = audio
        .chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    let words = STREAM_TEXT.split_whitespace().count() as f64;
    assert_plausible_speech(
        &Wav {
            sample_rate: JOE_SAMPLE_RATE,
            samples,
        },
        words,
    );

    let after = sidecar.metrics();
    assert_eq!(
        metric(&after, "voxgate_sidecar_sentences_total", &[("voice", JOE)]),
        STREAM_SENTENCES
    );

    let pcm_stream = Answer::from(
        http.post(sidecar.url("/v1/audio/speech"))
            .header("content-type", "application/json")
            .send(
                json!({"input": PARAGRAPH, "response_format": "pcm", "stream_format": "audio"})
                    .to_string()
                    .as_bytes(),
            )
            .expect("POST"),
    );
    assert_eq!(pcm_stream.status, 200);
    assert_eq!(pcm_stream.header("transfer-encoding"), Some("chunked"));
    assert_eq!(pcm_stream.body.len() % 2, 0);
    assert!(pcm_seconds(pcm_stream.body.len(), JOE_SAMPLE_RATE) / PARAGRAPH_WORDS > 0.15);
}

#[test]
fn client_disconnect_stops_synthesis() {
    let _serial = serial();
    let voices = voices_dir();
    let sidecar = Sidecar::start(voices.path(), &["--workers", "1"]);
    let long_text = [STREAM_TEXT; 3].join(" ");
    let total_sentences = STREAM_SENTENCES * 3.0;

    {
        let response = agent(CALL_TIMEOUT)
            .post(sidecar.url("/v1/audio/speech"))
            .header("content-type", "application/json")
            .send(
                json!({"input": long_text, "stream": true, "response_format": "wav"})
                    .to_string()
                    .as_bytes(),
            )
            .expect("POST");
        assert_eq!(response.status(), 200);
        let mut reader = response.into_body().into_reader();
        let mut first = vec![0u8; 4096];
        let mut received = 0;
        while received <= WAV_HEADER_LEN {
            let read = reader.read(&mut first[received..]).expect("read stream");
            assert!(read > 0, "stream ended before any audio");
            received += read;
        }
    }

    let text = wait_for_metrics(
        &sidecar,
        Duration::from_secs(60),
        "the cancelled synthesis",
        |text| {
            metric(
                text,
                "voxgate_sidecar_synthesis_cancelled_total",
                &[("reason", "client_disconnected")],
            ) == 1.0
                && metric(text, "voxgate_sidecar_in_flight", &[]) == 0.0
        },
    );
    let spoken = metric(&text, "voxgate_sidecar_sentences_total", &[("voice", JOE)]);
    assert!(
        spoken < total_sentences,
        "all {spoken} sentences were synthesized for a client that left"
    );

    let after = speech(&sidecar, json!({"input": "The worker is free again."}));
    assert_eq!(after.status, 200, "the worker was released");
}

#[test]
fn a_burst_beyond_the_queue_is_answered_or_refused_never_left_hanging() {
    let _serial = serial();
    let voices = voices_dir();
    let sidecar = Sidecar::start(
        voices.path(),
        &[
            "--workers",
            "2",
            "--max-queue",
            "2",
            "--retry-after-secs",
            "2",
        ],
    );
    const BURST: usize = 24;
    let barrier = Arc::new(Barrier::new(BURST));
    let url = sidecar.url("/v1/audio/speech");

    let clients: Vec<_> = (0..BURST)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let url = url.clone();
            thread::spawn(move || {
                let body = json!({"input": format!("Request number {i} of the burst is short."), "response_format": "wav"});
                let http = agent(CALL_TIMEOUT);
                barrier.wait();
                post_json(&http, &url, &body)
            })
        })
        .collect();

    let mut answered = 0;
    let mut refused = 0;
    for client in clients {
        let answer = client
            .join()
            .expect("client thread finished within its timeout");
        match answer.status {
            200 => {
                assert!(!Wav::parse(&answer.body).samples.is_empty());
                answered += 1;
            }
            503 => {
                answer.assert_error(503, "queue_full");
                assert_eq!(answer.header("retry-after"), Some("2"));
                refused += 1;
            }
            other => panic!(
                "unexpected status {other}: {}",
                String::from_utf8_lossy(&answer.body)
            ),
        }
    }
    println!("burst of {BURST}: {answered} answered, {refused} refused");
    assert_eq!(answered + refused, BURST);
    assert!(answered >= 1, "some requests are served");
    assert!(
        refused >= 1,
        "{BURST} simultaneous requests cannot all fit 2 workers and 2 queue places"
    );

    let text = sidecar.metrics();
    assert_eq!(
        metric(
            &text,
            "voxgate_sidecar_rejections_total",
            &[("reason", "queue_full")]
        ),
        refused as f64
    );
    assert_eq!(metric(&text, "voxgate_sidecar_in_flight", &[]), 0.0);
    assert_eq!(metric(&text, "voxgate_sidecar_queue_depth", &[]), 0.0);
}

#[test]
fn expired_deadline_is_504() {
    let _serial = serial();
    let voices = voices_dir();
    let sidecar = Sidecar::start(voices.path(), &["--request-timeout-ms", "1"]);
    speech(&sidecar, json!({"input": PARAGRAPH})).assert_error(504, "deadline_exceeded");
    let coqui = Answer::from(
        agent(CALL_TIMEOUT)
            .get(sidecar.url("/api/tts"))
            .query("text", PARAGRAPH)
            .call()
            .expect("GET"),
    );
    coqui.assert_error(504, "deadline_exceeded");
    wait_for_metrics(
        &sidecar,
        Duration::from_secs(60),
        "workers released",
        |text| metric(text, "voxgate_sidecar_in_flight", &[]) == 0.0,
    );
}

#[test]
fn graceful_shutdown_finishes_the_request_in_flight() {
    let _serial = serial();
    let voices = voices_dir();
    let mut sidecar = Sidecar::start(voices.path(), &[]);
    let url = sidecar.url("/v1/audio/speech");

    let client = thread::spawn(move || {
        post_json(
            &agent(CALL_TIMEOUT),
            &url,
            &json!({"input": STREAM_TEXT, "response_format": "wav"}),
        )
    });
    wait_for_metrics(
        &sidecar,
        Duration::from_secs(60),
        "the request in flight",
        |text| metric(text, "voxgate_sidecar_in_flight", &[]) >= 1.0,
    );
    let clean_exit = sidecar.terminate_and_wait(Duration::from_secs(120));

    let answer = client.join().expect("client thread");
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let words = STREAM_TEXT.split_whitespace().count() as f64;
    assert_plausible_speech(&Wav::parse(&answer.body), words);
    assert!(
        clean_exit,
        "exit status 0 after SIGTERM:\n{}",
        sidecar.log()
    );
    assert!(sidecar.log().contains("shutting down"));
    assert!(
        !sidecar.log().contains("phonemizer process replaced"),
        "the phonemizers survive the group's SIGTERM until the sidecar is done:\n{}",
        sidecar.log()
    );
    assert!(
        sidecar.group_ends_within(Duration::from_secs(5)),
        "a phonemizer process outlived the sidecar"
    );
}
