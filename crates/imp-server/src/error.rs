//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the status
//! the OpenAI API uses for the same failure, so that clients' error handling works unchanged.

use std::time::Duration;

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

    /// 408: the client did not send its body within `--body-timeout`.
    pub fn body_timeout(limit: Duration) -> Self {
        Self::invalid(
            format!(
                "The request body did not arrive within {} s (--body-timeout).",
                limit.as_secs_f64()
            ),
            None,
        )
        .with_status(StatusCode::REQUEST_TIMEOUT, "invalid_request_error")
        .with_code("body_timeout")
    }

    /// 504: the request (queueing and generation included) ran past `--request-timeout`; its
    /// generation was stopped.
    pub fn request_timeout(limit: Duration) -> Self {
        Self::invalid(
            format!(
                "The request took longer than the server's limit of {} s (--request-timeout); \
                 its generation was stopped.",
                limit.as_secs_f64()
            ),
            None,
        )
        .with_status(StatusCode::GATEWAY_TIMEOUT, "server_error")
        .with_code("request_timeout")
    }

    /// 503: the server received SIGTERM or Ctrl-C and takes no new generations.
    pub fn shutting_down() -> Self {
        Self::invalid(
            "The server is shutting down; retry on another instance.",
            None,
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE, "server_error")
        .with_code("shutting_down")
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

impl From<imp::messages::MessageError> for ApiError {
    fn from(error: imp::messages::MessageError) -> Self {
        let invalid = Self::invalid(error.message, error.param.as_deref());
        match error.code {
            Some(code) => invalid.with_code(code),
            None => invalid,
        }
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
            imp::Error::Constraint(_) => Self::invalid(message, Some("response_format")),
            _ => Self::internal(message),
        }
    }
}
