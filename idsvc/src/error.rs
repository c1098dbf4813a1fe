//! [`IdError`]: everything an ID request or the service's start can fail with, and how each
//! maps onto HTTP statuses, gRPC codes and the JSON error `code`.

use axum::http::StatusCode;
use roam_store::StoreError;

/// Why an ID request (or starting the service) failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The tag was never created (`create_tag`). Tags are never created implicitly.
    #[error("unknown tag {tag:?}; create it first (POST /api/v1/ids/tags)")]
    UnknownTag {
        /// The tag asked for.
        tag: String,
    },
    /// `create_tag` for a tag that already exists.
    #[error("tag {tag:?} already exists")]
    TagExists {
        /// The tag.
        tag: String,
    },
    /// A request argument is out of range or malformed (count, tag name, step, id).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No ID can be issued right now, and none was: both segment buffers are empty and the
    /// store fails or is slow, a worker lease is lost or its reservation could not be
    /// renewed, or the service is shutting down. Retry later or elsewhere.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The wall clock is further behind the last issued (or persisted) time than the
    /// configured tolerance; nothing is issued until it catches up.
    #[error(
        "{generator}: the clock is {behind_ms} ms behind the last issued time (tolerance \
         {tolerance_ms} ms); refusing to issue"
    )]
    ClockMovedBackwards {
        /// `snowflake` or `sonyflake`.
        generator: &'static str,
        /// How far behind.
        behind_ms: u64,
        /// The configured `max_backward_ms`.
        tolerance_ms: u64,
    },
    /// The ID space is used up: a tag reached 2^53, or a time-based layout its last tick.
    #[error("{0}")]
    Exhausted(String),
    /// Every worker id is leased by a live process.
    #[error("{generator}: every worker id below {limit} is leased by a live process")]
    NoFreeWorker {
        /// `snowflake` or `sonyflake`.
        generator: &'static str,
        /// The number of ids tried.
        limit: u32,
    },
    /// The configuration is inconsistent.
    #[error("invalid ids configuration: {0}")]
    Config(String),
    /// A store call failed outside the cases above (creating a tag, claiming a lease).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A remote ID service answered with a status that has no closer variant.
    #[error("remote id service: {code:?}: {message}")]
    Remote {
        /// The gRPC code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
}

impl IdError {
    /// The HTTP status of this error on the business API.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::UnknownTag { .. } => StatusCode::NOT_FOUND,
            Self::TagExists { .. } | Self::Exhausted(_) => StatusCode::CONFLICT,
            Self::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable(_)
            | Self::ClockMovedBackwards { .. }
            | Self::NoFreeWorker { .. }
            | Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Remote { code, .. } => match code {
                tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// The gRPC code of this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::UnknownTag { .. } => tonic::Code::NotFound,
            Self::TagExists { .. } => tonic::Code::AlreadyExists,
            Self::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Self::Unavailable(_)
            | Self::ClockMovedBackwards { .. }
            | Self::NoFreeWorker { .. }
            | Self::Store(_) => tonic::Code::Unavailable,
            Self::Exhausted(_) => tonic::Code::FailedPrecondition,
            Self::Config(_) => tonic::Code::Internal,
            Self::Remote { code, .. } => *code,
        }
    }

    /// The `code` of the JSON error object.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownTag { .. } => "not_found",
            Self::TagExists { .. } => "already_exists",
            Self::InvalidArgument(_) => "invalid_argument",
            Self::Unavailable(_) | Self::NoFreeWorker { .. } | Self::Store(_) => "unavailable",
            Self::ClockMovedBackwards { .. } => "clock_moved_backwards",
            Self::Exhausted(_) => "exhausted",
            Self::Config(_) => "internal",
            Self::Remote { .. } => "upstream",
        }
    }

    /// True for [`IdError::UnknownTag`].
    pub fn is_unknown_tag(&self) -> bool {
        matches!(self, Self::UnknownTag { .. })
    }

    /// True when the request may succeed later unchanged (statuses 503 / UNAVAILABLE).
    pub fn is_unavailable(&self) -> bool {
        self.grpc_code() == tonic::Code::Unavailable
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }
}

impl From<IdError> for tonic::Status {
    fn from(e: IdError) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}

impl From<tonic::Status> for IdError {
    /// The error a remote service's status stands for (used by [`crate::IdSource`]).
    fn from(s: tonic::Status) -> Self {
        let message = s.message().to_owned();
        match s.code() {
            tonic::Code::InvalidArgument => Self::InvalidArgument(message),
            tonic::Code::Unavailable => Self::Unavailable(message),
            code => Self::Remote { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_agree_between_http_and_grpc() {
        let cases = [
            (
                IdError::UnknownTag { tag: "x".into() },
                404,
                tonic::Code::NotFound,
            ),
            (IdError::invalid("count"), 400, tonic::Code::InvalidArgument),
            (
                IdError::Unavailable("store".into()),
                503,
                tonic::Code::Unavailable,
            ),
            (
                IdError::ClockMovedBackwards {
                    generator: "snowflake",
                    behind_ms: 10_000,
                    tolerance_ms: 5,
                },
                503,
                tonic::Code::Unavailable,
            ),
        ];
        for (e, http, grpc) in cases {
            assert_eq!(e.http_status().as_u16(), http, "{e}");
            assert_eq!(e.grpc_code(), grpc, "{e}");
        }
    }

    #[test]
    fn a_status_comes_back_as_the_same_kind() {
        let e: IdError = tonic::Status::unavailable("down").into();
        assert!(e.is_unavailable());
        let e: IdError = tonic::Status::not_found("unknown tag").into();
        assert_eq!(e.grpc_code(), tonic::Code::NotFound);
        assert_eq!(e.http_status(), StatusCode::BAD_GATEWAY);
    }
}
