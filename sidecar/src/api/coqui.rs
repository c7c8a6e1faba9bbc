//! `GET|POST /api/tts`, compatible with Coqui's TTS server: `text`, `speaker_id`,
//! `language_id` and `style_wav` (ignored), read like Coqui reads them (request header
//! first, then query string, then a form or JSON body), answered with a WAV file. The
//! extra `voice` parameter picks a voice other than the default.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::errors::ApiError;
use super::extract::{self, BodyKind};
use super::speech::{self, SpeechRequest};
use super::state::{AppState, LoadedVoices};
use super::VoiceLabel;
use crate::tenants::Tenant;
use voxgate_rules::{ResponseFormat, StreamMode};

/// The parameters, each from the first source that has it.
#[derive(Debug, Default, Clone, PartialEq)]
struct CoquiParams {
    text: Option<String>,
    speaker_id: Option<String>,
    language_id: Option<String>,
    voice: Option<String>,
}

impl CoquiParams {
    /// Keeps values already found and fills the gaps from `next`.
    fn or(self, next: CoquiParams) -> CoquiParams {
        CoquiParams {
            text: self.text.or(next.text),
            speaker_id: self.speaker_id.or(next.speaker_id),
            language_id: self.language_id.or(next.language_id),
            voice: self.voice.or(next.voice),
        }
    }

    fn from_headers(headers: &HeaderMap) -> CoquiParams {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        CoquiParams {
            text: get("text"),
            speaker_id: get("speaker-id"),
            language_id: get("language-id"),
            voice: None,
        }
    }

    fn from_pairs(pairs: Vec<(String, String)>) -> CoquiParams {
        let mut params = CoquiParams::default();
        for (key, value) in pairs {
            let slot = match key.as_str() {
                "text" => &mut params.text,
                "speaker_id" => &mut params.speaker_id,
                "language_id" => &mut params.language_id,
                "voice" => &mut params.voice,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        params
    }

    fn from_json(map: &Map<String, Value>) -> Result<CoquiParams, ApiError> {
        Ok(CoquiParams {
            text: extract::json_str(map, "text")?.map(str::to_owned),
            speaker_id: extract::json_str_or_index(map, "speaker_id")?,
            language_id: extract::json_str(map, "language_id")?.map(str::to_owned),
            voice: extract::json_str(map, "voice")?.map(str::to_owned),
        })
    }
}

pub async fn tts(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (voice, result) = handle(&state, &uri, &headers, body).await;
    let mut response = result.into_response();
    if let Some(voice) = voice {
        response.extensions_mut().insert(voice);
    }
    response
}

async fn handle(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> (Option<VoiceLabel>, Result<Response, ApiError>) {
    let params = match read_params(state, uri, headers, body).await {
        Ok(params) => params,
        Err(error) => return (None, Err(error)),
    };
    let request = match state.voices().and_then(|voices| resolve(params, voices)) {
        Ok(request) => request,
        Err(error) => return (None, Err(error)),
    };
    let label = VoiceLabel(request.voice.info().name.clone());
    (
        Some(label),
        speech::respond(state, request, Tenant::from_headers(headers)).await,
    )
}

async fn read_params(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<CoquiParams, ApiError> {
    let limits = state.limits();
    let body = extract::read_body(body, limits.max_body_bytes).await?;
    let from_body = match extract::body_kind(headers, &body) {
        BodyKind::Json => CoquiParams::from_json(&extract::json_object(&body)?)?,
        BodyKind::Form => CoquiParams::from_pairs(extract::form_pairs(&body)?),
        BodyKind::Empty => CoquiParams::default(),
        BodyKind::Other => {
            return Err(ApiError::unsupported_media_type(
                "the body must be application/json or application/x-www-form-urlencoded",
            ))
        }
    };
    let from_query =
        CoquiParams::from_pairs(extract::form_pairs(uri.query().unwrap_or("").as_bytes())?);
    let params = CoquiParams::from_headers(headers)
        .or(from_query)
        .or(from_body);
    let text = params
        .text
        .as_deref()
        .ok_or_else(|| ApiError::invalid_param("text", "missing_field", "`text` is required"))?;
    speech::check_input(text, "text", limits.max_input_chars)?;
    Ok(params)
}

fn resolve(params: CoquiParams, voices: &LoadedVoices) -> Result<SpeechRequest, ApiError> {
    // An empty `voice`, as forms send it, is no voice.
    let voice = voices.resolve(
        params.voice.as_deref().filter(|name| !name.is_empty()),
        None,
    )?;
    if let Some(language) = params
        .language_id
        .as_deref()
        .filter(|l| !l.trim().is_empty())
    {
        if !same_language(language, &voice.info().language) {
            return Err(ApiError::invalid_param(
                "language_id",
                "unsupported_language",
                format!(
                    "voice `{}` speaks `{}`; leave `language_id` empty or use that language",
                    voice.info().name,
                    voice.info().language
                ),
            ));
        }
    }
    let speaker = speech::resolve_speaker(&voice, params.speaker_id.as_deref(), "speaker_id")?;
    Ok(SpeechRequest {
        options: speech::options_for(&voice, speaker, 1.0),
        voice,
        text: params.text.unwrap_or_default(),
        format: ResponseFormat::Wav,
        stream: StreamMode::Off,
    })
}

/// `en`, `en-us`, `en_US` and `EN-us` all match a voice speaking `en-us`: case and the
/// separator are ignored, and a bare language matches any of its regions.
fn same_language(requested: &str, spoken: &str) -> bool {
    let normalize = |tag: &str| tag.trim().to_ascii_lowercase().replace('_', "-");
    let (requested, spoken) = (normalize(requested), normalize(spoken));
    let primary = |tag: &str| tag.split('-').next().unwrap_or("").to_owned();
    requested == spoken
        || (!requested.contains('-') && requested == primary(&spoken))
        || (!spoken.contains('-') && spoken == primary(&requested))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn pairs(encoded: &str) -> CoquiParams {
        CoquiParams::from_pairs(extract::form_pairs(encoded.as_bytes()).expect("form"))
    }

    #[test]
    fn header_beats_query_beats_body() {
        let mut headers = HeaderMap::new();
        headers.insert("speaker-id", HeaderValue::from_static("from-header"));
        let params = CoquiParams::from_headers(&headers)
            .or(pairs("text=from+query&speaker_id=from-query"))
            .or(pairs("text=from+body&language_id=en&voice=v"));
        assert_eq!(
            params,
            CoquiParams {
                text: Some("from query".to_owned()),
                speaker_id: Some("from-header".to_owned()),
                language_id: Some("en".to_owned()),
                voice: Some("v".to_owned()),
            }
        );
    }

    #[test]
    fn unknown_keys_and_style_wav_are_ignored_and_first_value_wins() {
        let params = pairs("style_wav=x.wav&text=a&text=b&other=1");
        assert_eq!(params.text.as_deref(), Some("a"));
        assert_eq!(params.speaker_id, None);
    }

    #[test]
    fn json_speaker_id_may_be_a_number() {
        let map = extract::json_object(br#"{"text": "Hi.", "speaker_id": 2, "style_wav": ""}"#)
            .expect("object");
        let params = CoquiParams::from_json(&map).expect("params");
        assert_eq!(params.speaker_id.as_deref(), Some("2"));
        let bad = extract::json_object(br#"{"text": ["Hi."]}"#).expect("object");
        assert_eq!(
            CoquiParams::from_json(&bad).unwrap_err().code(),
            "invalid_type"
        );
    }

    #[test]
    fn languages_match_loosely_but_not_across_languages() {
        assert!(same_language("en", "en-us"));
        assert!(same_language("en_US", "en-us"));
        assert!(same_language("EN-us", "en_US"));
        assert!(same_language("en-us", "en"));
        assert!(!same_language("de", "en-us"));
        assert!(!same_language("en-gb", "en-us"));
        assert!(!same_language("eng", "en-us"));
    }
}
