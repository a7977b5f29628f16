//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the status
//! the OpenAI API uses for the same failure, so that clients' error handling works unchanged.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request is wrong; `param` names the field at fault.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_owned),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_status(mut self, status: StatusCode, kind: &'static str) -> Self {
        self.status = status;
        self.kind = kind;
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::invalid(message, None)
            .with_status(StatusCode::UNAUTHORIZED, "authentication_error")
            .with_code("invalid_api_key")
    }

    pub fn model_not_found(name: &str) -> Self {
        Self::invalid(
            format!("The model `{name}` does not exist; GET /v1/models lists the served model."),
            Some("model"),
        )
        .with_status(StatusCode::NOT_FOUND, "invalid_request_error")
        .with_code("model_not_found")
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::invalid(message, None)
            .with_status(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error")
            .with_code("request_too_large")
    }

    pub fn queue_full() -> Self {
        Self::invalid(
            "The server is busy: every generation slot is taken and the queue is full; retry \
             later.",
            None,
        )
        .with_status(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error")
        .with_code("queue_full")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::invalid(message, None).with_status(StatusCode::INTERNAL_SERVER_ERROR, "server_error")
    }

    /// The JSON body, also sent as an SSE event when a stream fails after it started.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<imp::Error> for ApiError {
    fn from(error: imp::Error) -> Self {
        let message = error.to_string();
        match error {
            imp::Error::ContextOverflow { .. } => {
                Self::invalid(message, Some("messages")).with_code("context_length_exceeded")
            }
            imp::Error::Image { .. } => {
                Self::invalid(message, Some("messages")).with_code("invalid_image")
            }
            imp::Error::Prompt(_) | imp::Error::Tokenizer(_) => {
                Self::invalid(message, Some("messages"))
            }
            imp::Error::InvalidArgument(_) => Self::invalid(message, None),
            _ => Self::internal(message),
        }
    }
}
