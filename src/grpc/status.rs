//! Data-layer errors as gRPC statuses, mapped in one place.

use tonic::Status;

use crate::db::DbError;

impl From<DbError> for Status {
    fn from(error: DbError) -> Self {
        match &error {
            DbError::DuplicateEmail { .. } => Status::already_exists(error.to_string()),
            DbError::NotFound { .. } => Status::not_found(error.to_string()),
            DbError::UnknownAuthor(_) => Status::failed_precondition(error.to_string()),
            DbError::InvalidCursor(_) => Status::invalid_argument(error.to_string()),
            DbError::Unavailable(_) => Status::unavailable(error.to_string()),
            DbError::Busy { .. } => Status::resource_exhausted(error.to_string()),
            DbError::Query(_) | DbError::Corrupt(_) => {
                tracing::error!(%error, "database failure");
                Status::internal("internal database error")
            }
        }
    }
}
