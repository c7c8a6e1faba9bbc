//! Component tests of the speech engine with real models and real ONNX Runtime:
//! the three Coqui VITS fixtures against their reference waveforms, speaker
//! handling, voice folder scanning, and the real Joe Piper voice speaking a
//! paragraph with plausible duration and loudness.
//!
//! Needs `ORT_DYLIB_PATH` (libonnxruntime.so) and `VOXGATE_VOICES_DIR` (the folder
//! with `en_US-joe-medium.onnx`); `make test` exports both.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use voxgate_sidecar::text::split_sentences;
use voxgate_sidecar::voice::{
    EngineOptions, SynthesisError, SynthesisOptions, Voice, VoiceCatalog, VoiceFormat,
};

const JOE: &str = "en_US-joe-medium";
const COQUI_FIXTURES: [&str; 3] = [
    "coqui_vits_chars",
    "coqui_vits_espeak",
    "coqui_vits_multispeaker",
];
/// Largest sample difference accepted against a fixture's reference waveform (made
/// by Python onnxruntime from the same ids); lengths must be equal.
const REFERENCE_TOLERANCE: f32 = 1e-3;

/// Noise off, natural length: the deterministic setting the references use.
fn reference_options(speaker: Option<u32>) -> SynthesisOptions {
    SynthesisOptions {
        speaker,
        noise_scale: Some(0.0),
        length_scale: Some(1.0),
        noise_w: Some(0.0),
    }
}

/// Checks the environment the tests need and shows the engine's logs (such as why a
/// voice was skipped) in the test output.
fn required_env(name: &str) -> PathBuf {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    match std::env::var_os(name) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => panic!(
            "{name} is not set: run through `make test`, or export ORT_DYLIB_PATH=<path to libonnxruntime.so> \
             and VOXGATE_VOICES_DIR=<folder with {JOE}.onnx>"
        ),
    }
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/coqui")
}

fn expected(fixture: &str) -> serde_json::Value {
    let path = fixture_dir().join(format!("{fixture}.expected.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn expected_ids(fixture: &str) -> Vec<i64> {
    serde_json::from_value(expected(fixture)["ids"].clone()).unwrap()
}

fn reference_waveform(fixture: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture_dir().join(format!("{fixture}.ref.npy"))).unwrap();
    npyz::NpyFile::new(&bytes[..])
        .unwrap()
        .into_vec::<f32>()
        .unwrap()
}

/// Lays the flat fixture files out as Coqui voice folders: `NAME/model.onnx` and
/// `NAME/config.json`.
fn coqui_voice_folder(dir: &Path, fixture: &str) {
    let voice = dir.join(fixture);
    std::fs::create_dir_all(&voice).unwrap();
    let source = fixture_dir().canonicalize().unwrap();
    std::os::unix::fs::symlink(
        source.join(format!("{fixture}.onnx")),
        voice.join("model.onnx"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        source.join(format!("{fixture}.config.json")),
        voice.join("config.json"),
    )
    .unwrap();
}

/// All three Coqui fixtures, loaded once for the whole file.
fn coqui_catalog() -> &'static VoiceCatalog {
    static CATALOG: OnceLock<VoiceCatalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        required_env("ORT_DYLIB_PATH");
        let dir = tempfile::tempdir().unwrap();
        for fixture in COQUI_FIXTURES {
            coqui_voice_folder(dir.path(), fixture);
        }
        let opts = EngineOptions {
            sessions_per_voice: 2,
            intra_op_threads: 1,
        };
        VoiceCatalog::load_dir(dir.path(), &opts).unwrap()
    })
}

fn coqui(fixture: &str) -> Arc<Voice> {
    coqui_catalog()
        .get(fixture)
        .unwrap_or_else(|| panic!("fixture voice {fixture} did not load"))
}

/// The Joe voice with one single-threaded session, loaded once.
fn joe() -> Arc<Voice> {
    static CATALOG: OnceLock<VoiceCatalog> = OnceLock::new();
    let catalog = CATALOG.get_or_init(|| {
        required_env("ORT_DYLIB_PATH");
        let dir = required_env("VOXGATE_VOICES_DIR");
        let opts = EngineOptions {
            sessions_per_voice: 1,
            intra_op_threads: 1,
        };
        VoiceCatalog::load_dir(&dir, &opts).unwrap()
    });
    catalog
        .get(JOE)
        .unwrap_or_else(|| panic!("{JOE} is not in VOXGATE_VOICES_DIR"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn rms(samples: &[f32]) -> f32 {
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
}

#[test]
fn coqui_fixtures_match_their_reference_waveforms_from_ids_and_from_text() {
    for fixture in COQUI_FIXTURES {
        let voice = coqui(fixture);
        let reference = reference_waveform(fixture);
        let ids = expected_ids(fixture);

        let from_ids = voice
            .synthesize_ids(&ids, &reference_options(None))
            .unwrap();
        let text = expected(fixture)["sample_text"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            voice.text_to_ids(&text).unwrap(),
            ids,
            "{fixture}: ids from text"
        );
        let from_text = voice.synthesize(&text, &reference_options(None)).unwrap();

        for (path, audio) in [("ids", &from_ids), ("text", &from_text)] {
            assert_eq!(audio.len(), reference.len(), "{fixture} via {path}: length");
            let diff = max_abs_diff(audio, &reference);
            println!(
                "{fixture} via {path}: {} samples, max |diff| vs reference = {diff:e}",
                audio.len()
            );
            assert!(
                diff <= REFERENCE_TOLERANCE,
                "{fixture} via {path}: max |diff| {diff}"
            );
        }
    }
}

#[test]
fn coqui_fixture_voices_describe_themselves() {
    let names: Vec<String> = coqui_catalog()
        .voices()
        .iter()
        .map(|v| v.info().name.clone())
        .collect();
    assert_eq!(names, COQUI_FIXTURES);
    let chars = coqui("coqui_vits_chars");
    let info = chars.info();
    assert_eq!(
        (info.format, info.sample_rate, info.language.as_str()),
        (VoiceFormat::Coqui, 22050, "en")
    );
    assert_eq!((info.speakers.count(), info.speakers.ids().len()), (1, 0));
    assert_eq!(
        (info.noise_scale, info.length_scale, info.noise_w),
        (0.667, 1.0, 1.0)
    );
    let espeak = coqui("coqui_vits_espeak");
    assert_eq!(espeak.info().language, "en-us");
}

#[test]
fn multispeaker_speakers_differ_and_out_of_range_ids_are_refused() {
    let voice = coqui("coqui_vits_multispeaker");
    let speakers = &voice.info().speakers;
    assert_eq!(speakers.count(), 3);
    assert_eq!(speakers.names_by_id(), ["spk_a", "spk_b", "spk_c"]);
    let resolve = |name| speakers.resolve("multi", Some(name), "speaker");
    assert_eq!(resolve("spk_b"), Ok(Some(1)));
    assert_eq!(resolve("2"), Ok(Some(2)));
    assert!(resolve("3").is_err());
    assert!(resolve("nobody").is_err());

    let ids = expected_ids("coqui_vits_multispeaker");
    let first = voice
        .synthesize_ids(&ids, &reference_options(Some(0)))
        .unwrap();
    let second = voice
        .synthesize_ids(&ids, &reference_options(Some(1)))
        .unwrap();
    assert!(
        max_abs_diff(&first, &reference_waveform("coqui_vits_multispeaker")) <= REFERENCE_TOLERANCE
    );
    let diff = max_abs_diff(&first, &second);
    assert!(
        diff > 1e-3,
        "speakers 0 and 1 sound the same (max |diff| {diff})"
    );

    for speaker in [3, u32::MAX] {
        match voice.synthesize_ids(&ids, &reference_options(Some(speaker))) {
            Err(SynthesisError::SpeakerOutOfRange {
                speaker: s,
                num_speakers: 3,
            }) => assert_eq!(s, speaker),
            other => panic!("speaker {speaker}: expected SpeakerOutOfRange, got {other:?}"),
        }
    }
    let single = coqui("coqui_vits_chars");
    assert!(matches!(
        single.synthesize(
            "Hello.",
            &SynthesisOptions {
                speaker: Some(1),
                ..Default::default()
            }
        ),
        Err(SynthesisError::SpeakerOutOfRange {
            speaker: 1,
            num_speakers: 1
        })
    ));
}

#[test]
fn bad_requests_are_errors_not_crashes() {
    let voice = coqui("coqui_vits_espeak");
    for text in ["", "   \n"] {
        assert!(matches!(
            voice.synthesize(text, &SynthesisOptions::default()),
            Err(SynthesisError::EmptyText)
        ));
    }
    assert!(matches!(
        voice.synthesize_ids(&[], &SynthesisOptions::default()),
        Err(SynthesisError::EmptyText)
    ));
    assert!(matches!(
        voice.synthesize_ids(&[3, 10_000, 3], &SynthesisOptions::default()),
        Err(SynthesisError::Inference(_))
    ));
    let wild = SynthesisOptions {
        speaker: None,
        noise_scale: Some(f32::NAN),
        length_scale: Some(1e9),
        noise_w: Some(-5.0),
    };
    let audio = voice.synthesize("Hello world.", &wild).unwrap();
    assert!(!audio.is_empty() && audio.iter().all(|s| s.abs() <= 1.0));
}

#[test]
fn concurrent_synthesis_shares_the_session_pool() {
    let voice = coqui("coqui_vits_chars");
    let ids = expected_ids("coqui_vits_chars");
    let reference = reference_waveform("coqui_vits_chars");
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let voice = Arc::clone(&voice);
            let ids = ids.clone();
            std::thread::spawn(move || {
                voice
                    .synthesize_ids(&ids, &reference_options(None))
                    .unwrap()
            })
        })
        .collect();
    for thread in threads {
        let audio = thread.join().unwrap();
        assert!(max_abs_diff(&audio, &reference) <= REFERENCE_TOLERANCE);
    }
}

#[test]
fn voice_folder_scan_skips_broken_entries() {
    required_env("ORT_DYLIB_PATH");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    coqui_voice_folder(root, "coqui_vits_chars");
    // A Coqui folder missing its config, one with a model that is not ONNX, a Piper
    // model without its JSON, and a Piper voice whose JSON is not valid.
    std::fs::create_dir(root.join("no_config")).unwrap();
    std::fs::write(root.join("no_config/model.onnx"), b"").unwrap();
    std::fs::create_dir(root.join("not_onnx")).unwrap();
    std::fs::write(root.join("not_onnx/model.onnx"), b"not a model").unwrap();
    std::fs::copy(
        fixture_dir().join("coqui_vits_chars.config.json"),
        root.join("not_onnx/config.json"),
    )
    .unwrap();
    std::fs::write(root.join("lonely.onnx"), b"").unwrap();
    std::fs::write(root.join("bad_json.onnx"), b"").unwrap();
    std::fs::write(root.join("bad_json.onnx.json"), b"{ nope").unwrap();
    std::fs::write(root.join("notes.txt"), b"not a voice").unwrap();

    let catalog = VoiceCatalog::load_dir(
        root,
        &EngineOptions {
            sessions_per_voice: 1,
            intra_op_threads: 1,
        },
    )
    .unwrap();
    let names: Vec<String> = catalog
        .voices()
        .iter()
        .map(|v| v.info().name.clone())
        .collect();
    assert_eq!(names, ["coqui_vits_chars"]);
    assert!(catalog.get("not_onnx").is_none());

    let empty = tempfile::tempdir().unwrap();
    assert!(VoiceCatalog::load_dir(empty.path(), &EngineOptions::default()).is_err());
    assert!(VoiceCatalog::load_dir(&root.join("missing"), &EngineOptions::default()).is_err());
}

const PARAGRAPH: &str = "The quick brown fox jumps over the lazy dog. \
    Speech synthesis turns written text into sound that people can understand. \
    This paragraph has five sentences of different lengths! \
    Does the voice pause between them? \
    It should, and every word should take a plausible amount of time.";

#[test]
fn joe_voice_speaks_a_paragraph_plausibly() {
    let voice = joe();
    let info = voice.info();
    assert_eq!(
        (info.format, info.sample_rate, info.language.as_str()),
        (VoiceFormat::Piper, 22050, "en-us")
    );
    assert_eq!(info.speakers.count(), 1);

    let sentences = split_sentences(PARAGRAPH);
    assert_eq!(sentences.len(), 5);
    // Noise off so loudness bounds do not depend on chance.
    let opts = SynthesisOptions {
        noise_scale: Some(0.0),
        noise_w: Some(0.0),
        ..Default::default()
    };
    let mut audio = Vec::new();
    for sentence in &sentences {
        let part = voice.synthesize(sentence, &opts).unwrap();
        assert!(
            part.len() > info.sample_rate as usize / 2,
            "a sentence lasted under half a second"
        );
        audio.extend(part);
    }

    let seconds = audio.len() as f32 / info.sample_rate as f32;
    let words = PARAGRAPH.split_whitespace().count() as f32;
    let per_word = seconds / words;
    let peak = audio.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    let loudness = rms(&audio);
    // 20 ms frames; speech has quiet stretches between words and sentences, noise has none.
    let frame = info.sample_rate as usize / 50;
    let frames: Vec<f32> = audio.chunks(frame).map(rms).collect();
    let quiet = frames.iter().filter(|&&f| f < 0.1 * loudness).count() as f32 / frames.len() as f32;
    println!(
        "Joe paragraph: {seconds:.2} s for {words} words ({per_word:.3} s/word), RMS {loudness:.4}, peak {peak:.3}, \
         quiet frames {:.0}%",
        quiet * 100.0
    );
    assert!((0.15..=0.8).contains(&per_word), "{per_word} s per word");
    assert!((0.02..=0.5).contains(&loudness), "RMS {loudness}");
    assert!(peak < 1.0 && peak > 0.1, "peak {peak}");
    assert!(
        (0.05..=0.6).contains(&quiet),
        "quiet frame fraction {quiet}"
    );

    report_real_time_factor(&voice, &sentences);
}

/// Prints synthesis seconds per audio second for the paragraph with the voice's
/// default settings, the session already warm. Measured, never asserted.
fn report_real_time_factor(voice: &Voice, sentences: &[String]) {
    let opts = SynthesisOptions::default();
    let started = Instant::now();
    let samples: usize = sentences
        .iter()
        .map(|s| voice.synthesize(s, &opts).unwrap().len())
        .sum();
    let synthesis = started.elapsed().as_secs_f64();
    let audio = samples as f64 / f64::from(voice.info().sample_rate);
    println!(
        "Joe voice real-time factor (warm, 1 session x 1 intra-op thread): {:.3} ({synthesis:.2} s for {audio:.2} s of audio)",
        synthesis / audio
    );
}
