//! GraphQL errors with a machine-readable `extensions.code`, mapped in one place.

use juniper::{graphql_value, FieldError};

use crate::{db::DbError, domain::ValidationError};

/// Error codes clients can branch on.
pub mod code {
    /// Input failed validation; `extensions.field` names the field.
    pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
    /// The email belongs to another user.
    pub const DUPLICATE_EMAIL: &str = "DUPLICATE_EMAIL";
    /// A post's author does not exist.
    pub const UNKNOWN_AUTHOR: &str = "UNKNOWN_AUTHOR";
    /// A mutation without a valid bearer token.
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// The database is unreachable.
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    /// One shard could not be reached (what does not need it keeps working).
    pub const SHARD_UNAVAILABLE: &str = "SHARD_UNAVAILABLE";
    /// A write gave up waiting for a concurrent one; retry.
    pub const CONFLICT: &str = "CONFLICT";
    /// The server is overloaded (every database connection is in use); retry shortly.
    pub const BUSY: &str = "BUSY";
    /// Anything else; details are logged, not returned.
    pub const INTERNAL: &str = "INTERNAL";
    /// The document is invalid in a way found before execution (e.g. a fragment cycle).
    pub const GRAPHQL_VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";
    /// The document (or a batch's documents together) costs more than the limit.
    pub const COST_LIMIT_EXCEEDED: &str = "COST_LIMIT_EXCEEDED";
    /// A batched request carries more operations than allowed.
    pub const BATCH_LIMIT_EXCEEDED: &str = "BATCH_LIMIT_EXCEEDED";
    /// The document does not parse (or passes the parser's depth or size limits).
    pub const GRAPHQL_PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
    /// The request names no operation it contains, several without a name, or a
    /// subscription over HTTP.
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    /// A mutation sent with `GET` (405, `Allow: POST`).
    pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
    /// The object does not exist.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// A multi-step change failed before its point of no return and was undone;
    /// `extensions.sagaId` names it.
    pub const UNDONE: &str = "UNDONE";
    /// A multi-step change is still in progress; `extensions.sagaId` names it.
    pub const IN_PROGRESS: &str = "IN_PROGRESS";
}

/// An error with a code.
pub fn coded(message: impl std::fmt::Display, code: &str) -> FieldError {
    FieldError::new(message, graphql_value!({ "code": code }))
}

/// A validation failure, naming the field.
pub fn invalid(error: ValidationError) -> FieldError {
    let field = error.field;
    FieldError::new(
        error.to_string(),
        graphql_value!({ "code": (code::BAD_USER_INPUT), "field": field }),
    )
}

/// A data-layer failure.
pub fn db(error: DbError) -> FieldError {
    match &error {
        DbError::DuplicateEmail { .. } => coded(&error, code::DUPLICATE_EMAIL),
        DbError::UnknownAuthor(_) => coded(&error, code::UNKNOWN_AUTHOR),
        DbError::InvalidCursor(_) | DbError::NotFound { .. } => coded(&error, code::BAD_USER_INPUT),
        DbError::Unavailable(_) => coded(&error, code::UNAVAILABLE),
        DbError::ShardUnavailable { .. } => coded(&error, code::SHARD_UNAVAILABLE),
        DbError::Busy { .. } => coded(&error, code::BUSY),
        DbError::Conflict(_) => coded(&error, code::CONFLICT),
        DbError::Query(_) | DbError::Corrupt(_) => {
            tracing::error!(%error, "database failure in a GraphQL resolver");
            coded("internal database error", code::INTERNAL)
        }
    }
}

/// A failed user deletion.
pub fn deletion(error: crate::actors::saga::delete_user::DeleteError) -> FieldError {
    use crate::actors::saga::delete_user::DeleteError;
    match error {
        DeleteError::NotFound => coded(&error, code::NOT_FOUND),
        DeleteError::Compensated { ref id, .. } => {
            let id = id.clone();
            FieldError::new(
                &error,
                graphql_value!({ "code": (code::UNDONE), "sagaId": id }),
            )
        }
        DeleteError::Pending { ref id } => {
            let id = id.clone();
            FieldError::new(
                &error,
                graphql_value!({ "code": (code::IN_PROGRESS), "sagaId": id }),
            )
        }
        DeleteError::Db(error) => db(error),
    }
}
