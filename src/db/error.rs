//! The data layer's error type: typed outcomes callers map to a status once.

use crate::domain::UserId;

/// What can go wrong in a repository call.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The email address belongs to another user.
    #[error("a user with email {email} already exists")]
    DuplicateEmail {
        /// The address that is taken.
        email: String,
    },
    /// No row has that id.
    #[error("{entity} not found")]
    NotFound {
        /// `user` or `post`.
        entity: &'static str,
    },
    /// A post names an author that does not exist.
    #[error("author {0} does not exist")]
    UnknownAuthor(UserId),
    /// A page token that this server did not issue, or issued for another filter.
    #[error("invalid page token: {0}")]
    InvalidCursor(&'static str),
    /// The database could not be reached.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// One shard could not be reached: what needs it fails, the rest keeps working (so it
    /// does not count against the database circuit breaker).
    #[error("shard {shard} unavailable: {reason}")]
    ShardUnavailable {
        /// The shard's index.
        shard: usize,
        /// What went wrong.
        reason: String,
    },
    /// Every pooled connection was lent out for longer than the checkout timeout: the
    /// server is overloaded, the database itself is fine. Callers should retry shortly.
    #[error("the server is busy: all {max_connections} database connections stayed in use for {waited:?}; retry shortly")]
    Busy {
        /// The pool's size.
        max_connections: u32,
        /// How long the checkout waited.
        waited: std::time::Duration,
    },
    /// The write waited too long for a lock held by a concurrent write (on a shard, a
    /// possible cross-shard deadlock): nothing was written; retry.
    #[error("the write conflicted with a concurrent one and was abandoned; retry: {0}")]
    Conflict(String),
    /// The database rejected or failed a statement.
    #[error("database error: {0}")]
    Query(#[source] diesel::result::Error),
    /// A stored row could not be read back into a domain value.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl DbError {
    pub(crate) fn connect(error: diesel::ConnectionError) -> Self {
        Self::Unavailable(error.to_string().trim().to_owned())
    }

    /// Whether the failure says nothing about the request, only about the database's
    /// health (what a circuit breaker should count).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<diesel::result::Error> for DbError {
    fn from(error: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match error {
            Error::NotFound => Self::NotFound { entity: "row" },
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                Self::Unavailable(info.message().to_owned())
            }
            // The server went away under a pooled connection (tokio-postgres says
            // "connection closed"; a shutdown says "terminating connection …").
            Error::DatabaseError(_, info) if info.message().contains("lock timeout") => {
                Self::Conflict(info.message().to_owned())
            }
            Error::DatabaseError(_, info)
                if info.message() == "connection closed"
                    || info.message().starts_with("terminating connection") =>
            {
                Self::Unavailable(info.message().to_owned())
            }
            other => Self::Query(other),
        }
    }
}

/// Whether `error` is a unique-constraint violation (on any column).
pub(crate) fn is_unique_violation(error: &diesel::result::Error) -> bool {
    matches!(
        error,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}
