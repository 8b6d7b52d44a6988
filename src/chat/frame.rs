//! Frames the server sends, each serialised once into shared bytes: a message relayed to
//! ten thousand members is encoded once and every delivery is a reference-count bump.

use bytestring::ByteString;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::{RoomId, StoredMessage};

/// `from` of frames the server itself originates.
pub const SYSTEM: &str = "system";

/// One outbound JSON object in the seed's shape.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    /// Server-assigned id of a relayed message (and of its ack).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `join`, `leave`, `message`, `typing`, `private`, `broadcast`, `presence`, `ack`, `error`…
    #[serde(rename = "type")]
    pub kind: String,
    /// The sender's user id, or `system`.
    pub from: String,
    /// The sender's display name, on what members send (messages, typing, private,
    /// broadcast) when the sender has one — also in replayed history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The addressee, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The text.
    pub content: String,
    /// The room, for room traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<RoomId>,
    /// A relayed room message's position in its room: 1, 2, 3, … with no gaps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// When the server handled it, RFC 3339 with milliseconds.
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
    /// Free-form data: the sender's, or the server's details (members, session id…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

impl Frame {
    /// A frame of `kind` from `from`, stamped now, with empty content.
    pub fn new(kind: impl Into<String>, from: impl Into<String>) -> Self {
        Self {
            id: None,
            kind: kind.into(),
            from: from.into(),
            name: None,
            to: None,
            content: String::new(),
            room_id: None,
            offset: None,
            timestamp: Utc::now(),
            metadata: None,
        }
    }

    /// A frame from the server.
    pub fn system(kind: &str) -> Self {
        Self::new(kind, SYSTEM)
    }

    /// An `error` frame saying what was wrong.
    pub fn error(content: impl Into<String>) -> Self {
        Self::system("error").content(content)
    }

    /// Sets the id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the sender's display name.
    pub fn name(mut self, name: Option<&str>) -> Self {
        self.name = name.map(str::to_owned);
        self
    }

    /// Sets the addressee.
    pub fn to(mut self, to: impl Into<String>) -> Self {
        self.to = Some(to.into());
        self
    }

    /// Sets the text.
    pub fn content(mut self, content: impl Into<String>) -> Self {
        self.content = content.into();
        self
    }

    /// Sets the room.
    pub fn room(mut self, room: RoomId) -> Self {
        self.room_id = Some(room);
        self
    }

    /// Sets the room offset.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Sets the timestamp.
    pub fn at(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The frame a stored room message was relayed as.
    pub fn stored(message: &StoredMessage) -> Self {
        Self::new(message.kind.as_str(), message.sender.as_str())
            .name(message.sender_name.as_deref())
            .id(message.id.clone())
            .room(message.room.clone())
            .content(message.content.clone())
            .metadata(message.metadata.clone())
            .offset(message.offset)
            .at(message.created_at)
    }

    /// Sets the metadata (an absent map stays absent).
    pub fn metadata(mut self, metadata: Option<Map<String, Value>>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the metadata from a `json!({...})` object.
    pub fn details(self, details: Value) -> Self {
        match details {
            Value::Object(map) => self.metadata(Some(map)),
            _ => self,
        }
    }

    /// Serialises the frame once, into bytes that can be shared by many deliveries.
    pub fn encode(&self) -> ByteString {
        // Serialising plain strings, maps and JSON values cannot fail.
        serde_json::to_string(self)
            .expect("a frame always serialises")
            .into()
    }
}

/// A new message id: a UUIDv7, unique across restarts and ordered by time.
pub fn message_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn frames_have_the_seed_shape() {
        let room = RoomId::parse("lobby").unwrap();
        let text = Frame::new("message", "alice")
            .id("m1")
            .room(room)
            .content("hi")
            .details(json!({"k": 1}))
            .encode();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["type"], "message");
        assert_eq!(value["from"], "alice");
        assert_eq!(value["id"], "m1");
        assert_eq!(value["room_id"], "lobby");
        assert_eq!(value["content"], "hi");
        assert_eq!(value["metadata"]["k"], 1);
        assert!(value.get("to").is_none(), "absent fields are omitted");
        let stamp = value["timestamp"].as_str().unwrap();
        assert!(DateTime::parse_from_rfc3339(stamp).is_ok(), "{stamp}");
    }
}
