//! Domain types that parse at the edge.
//!
//! Every value from the network (HTTP, WebSocket, protobuf, GraphQL) is turned into one of
//! these newtypes once; inside the server a `UserName` or an `Email` is already valid.

mod filter;
mod message;
mod post;
mod room;
mod user;

pub use filter::SearchFilter;
pub use message::{StoredMessage, StoredPrivate};
pub use post::{NewPost, Post, PostContent, PostId, PostTitle, Tags};
pub use room::{RoomId, RoomSet};
pub use user::{Age, Email, Metadata, NewUser, User, UserId, UserName, UserPatch};

/// A value from outside that does not fit the domain; `field` names it for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// The offending field, as the client named it (`email`, `name`, …).
    pub field: &'static str,
    /// What is wrong with it, in plain words.
    pub reason: String,
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Trims `raw` and checks it is non-empty, at most `max` characters and free of control
/// characters: the common rule for names and titles.
fn parse_text(field: &'static str, raw: &str, max: usize) -> Result<String, ValidationError> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if text.chars().count() > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(text.to_owned())
}

/// Parses a UUID id (any version; ours are v7) in its canonical text form.
fn parse_uuid(field: &'static str, raw: &str) -> Result<uuid::Uuid, ValidationError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(ValidationError::new(field, "is required"));
    }
    uuid::Uuid::try_parse(raw).map_err(|_| ValidationError::new(field, "is not a valid id"))
}
