//! Every error the API answers, as one enum with one JSON shape:
//! `{"error":{"code":"…","message":"…"}}`. Handlers return `Result<_, ApiError>`,
//! so no user input can reach a panic or an unstructured 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// A malformed path segment, query parameter or body (400).
    #[error("{message}")]
    BadRequest {
        /// Stable machine-readable code, e.g. `bad_pk`.
        code: &'static str,
        /// What was wrong and how to fix it.
        message: String,
    },
    /// The entity is not tracked, or the route does not exist (404).
    #[error("{message}")]
    NotFound {
        /// Stable machine-readable code.
        code: &'static str,
        /// What was not found.
        message: String,
    },
    /// A state-changing request without a valid token (401).
    #[error("a valid bearer token is required for this endpoint")]
    Unauthorized,
    /// The body is larger than the limit (413).
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The server cannot answer now (503), e.g. a storage error.
    #[error("{0}")]
    Unavailable(String),
    /// Every live-update slot is taken (503); the client may retry later.
    #[error("{limit} clients are subscribed to live updates already, the most this server allows; retry later")]
    TooManySubscribers {
        /// The limit on concurrent subscribers.
        limit: usize,
    },
}

impl ApiError {
    /// A 400 with `code` and `message`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 404 with `code` and `message`.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::NotFound { code, .. } => (StatusCode::NOT_FOUND, code),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::TooManySubscribers { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "too_many_subscribers")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(%code, error = %self, "request failed on the server side");
        }
        let body = crate::ErrorBody::new(code, self.to_string());
        (status, axum::Json(body)).into_response()
    }
}
