//! Data-layer errors as gRPC statuses, mapped in one place.

use tonic::{Code, Status};

use crate::db::DbError;

/// Metadata on an `UNAVAILABLE` status that only one shard was unreachable.
pub const SHARD_UNAVAILABLE: &str = "switchboard-shard-unavailable";

impl From<DbError> for Status {
    fn from(error: DbError) -> Self {
        match &error {
            DbError::DuplicateEmail { .. } => Status::already_exists(error.to_string()),
            DbError::NotFound { .. } => Status::not_found(error.to_string()),
            DbError::UnknownAuthor(_) => Status::failed_precondition(error.to_string()),
            DbError::InvalidCursor(_) => Status::invalid_argument(error.to_string()),
            DbError::Unavailable(_) => Status::unavailable(error.to_string()),
            DbError::ShardUnavailable { shard, .. } => {
                let mut status = Status::unavailable(error.to_string());
                // Read by the tonic layer: not a reason to open the database breaker.
                status.metadata_mut().insert(
                    SHARD_UNAVAILABLE,
                    shard.to_string().parse().expect("digits"),
                );
                status
            }
            DbError::Busy { .. } => Status::resource_exhausted(error.to_string()),
            DbError::Conflict(_) => Status::aborted(error.to_string()),
            DbError::Query(_) | DbError::Corrupt(_) => {
                tracing::error!(%error, "database failure");
                Status::internal("internal database error")
            }
        }
    }
}

/// The canonical name of a status code (`OK`, `NOT_FOUND`, …), as metrics labels, logs
/// and the load tool show it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
