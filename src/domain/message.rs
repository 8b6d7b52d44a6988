//! Chat messages as the history keeps them.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::RoomId;

/// A relayed room message, numbered within its room.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// The room.
    pub room: RoomId,
    /// Position in the room: 1 for the first message, rising by one each time.
    pub offset: u64,
    /// Server-assigned message id (the `id` clients saw).
    pub id: String,
    /// The client's `type` (`message`, `reaction`, …).
    pub kind: String,
    /// The sender's user id.
    pub sender: String,
    /// The sender's display name when the message was sent, if it had one.
    pub sender_name: Option<String>,
    /// The text.
    pub content: String,
    /// The sender's metadata.
    pub metadata: Option<Map<String, Value>>,
    /// When the server relayed it (microsecond precision).
    pub created_at: DateTime<Utc>,
}

/// A private message, kept only when private history is switched on.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPrivate {
    /// Server-assigned message id.
    pub id: String,
    /// The sender's user id.
    pub sender: String,
    /// The sender's display name when the message was sent, if it had one.
    pub sender_name: Option<String>,
    /// The addressee's user id.
    pub recipient: String,
    /// The text.
    pub content: String,
    /// The sender's metadata.
    pub metadata: Option<Map<String, Value>>,
    /// When the server relayed it.
    pub created_at: DateTime<Utc>,
}
