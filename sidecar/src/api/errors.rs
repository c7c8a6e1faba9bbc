//! The error answers of the HTTP API: status code, `Retry-After` where waiting helps, and the
//! OpenAI error body `{"error":{"type","code","message","param"}}`. Messages describe the
//! problem without repeating the user's text.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The error code of an answer, kept in the response extensions for the request metrics.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    param: Option<&'static str>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    /// 400 for a request the client must change before retrying.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 400 that names the offending request field.
    pub fn invalid_param(
        param: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            param: Some(param),
            ..Self::invalid(code, message)
        }
    }

    /// A path no route serves: the same answer as the filter's for a stray path.
    pub fn not_found() -> Self {
        voxgate_rules::error::unknown_route().into()
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept this method; see the Allow header",
        )
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    pub fn body_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {limit_bytes} bytes"),
        )
    }

    pub fn queue_full(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            "all synthesis workers are busy and the wait queue is full; retry later",
        )
        .retry_after(retry_after_secs)
    }

    pub fn queue_timeout(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_timeout",
            "the request deadline passed while waiting for a synthesis worker; retry later",
        )
        .retry_after(retry_after_secs)
    }

    pub fn not_ready(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "voices are still loading; retry later",
        )
        .retry_after(retry_after_secs)
    }

    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the service is shutting down",
        )
    }

    pub fn deadline_exceeded() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            "synthesis did not finish before the request deadline",
        )
    }

    /// 400 for a text whose predicted audio is over the per-request limit.
    pub fn audio_limit_exceeded(predicted_seconds: f64, limit_seconds: f64) -> Self {
        Self::invalid_param(
            "input",
            "audio_limit_exceeded",
            format!(
                "the input would make about {predicted_seconds:.1} s of audio; one request may make at most {limit_seconds:.0} s (max_request_audio_seconds)"
            ),
        )
    }

    /// 400 for a text whose predicted audio is more than the tenant's audio bucket holds.
    pub fn audio_exceeds_plan(predicted_seconds: f64, capacity_seconds: f64) -> Self {
        Self::invalid_param(
            "input",
            "audio_exceeds_plan",
            format!(
                "the input would make about {predicted_seconds:.1} s of audio, more than the plan's audio_seconds limit of {capacity_seconds:.0} s allows in one request"
            ),
        )
    }

    /// 429 for a text whose predicted audio is more than the tenant has left; the gateway adds
    /// `Retry-After` and the rate-limit headers, since it knows the refill rate.
    pub fn audio_budget_exceeded(required_seconds: f64, budget_seconds: f64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "rate limit reached (audio_seconds): this request needs {required_seconds:.1} s of audio budget and {budget_seconds:.1} s are left"
            ),
        )
    }

    /// 429 for a tenant whose syntheses already running here reach its plan's cap.
    pub fn too_many_in_flight(max: u32) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_in_flight",
            format!("too many syntheses running for this caller (at most {max}); retry after 1 s"),
        )
        .retry_after(1)
    }

    pub fn internal(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, message)
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after_secs: None,
        }
    }

    fn retry_after(self, secs: u64) -> Self {
        ApiError {
            retry_after_secs: Some(secs),
            ..self
        }
    }
}

impl From<voxgate_rules::RuleError> for ApiError {
    fn from(error: voxgate_rules::RuleError) -> Self {
        ApiError {
            status: StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST),
            code: error.code.as_str(),
            message: error.message,
            param: error.param,
            retry_after_secs: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = voxgate_rules::error::error_body(
            self.status.as_u16(),
            self.code,
            &self.message,
            self.param,
        );
        let content_type = HeaderValue::from_static("application/json");
        let mut response =
            (self.status, [(header::CONTENT_TYPE, content_type)], body).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use serde_json::json;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = to_bytes(response.into_body(), 4096).await.expect("body");
        serde_json::from_slice(&bytes).expect("JSON body")
    }

    #[tokio::test]
    async fn invalid_param_has_openai_shape() {
        let response = ApiError::invalid_param(
            "speed",
            "invalid_speed",
            "speed must be between 0.25 and 4.0",
        )
        .into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(
            body_json(response).await,
            json!({"error": {
                "type": "invalid_request_error",
                "code": "invalid_speed",
                "message": "speed must be between 0.25 and 4.0",
                "param": "speed"
            }})
        );
    }

    #[tokio::test]
    async fn queue_full_is_503_with_retry_after_and_server_error_type() {
        let response = ApiError::queue_full(3).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            response.extensions().get::<ErrorCode>().map(|c| c.0),
            Some("queue_full")
        );
        let body = body_json(response).await;
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(body["error"]["code"], "queue_full");
        assert_eq!(body["error"]["param"], serde_json::Value::Null);
    }
}
