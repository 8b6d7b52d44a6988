//! What a client asks for, parsed from one JSON text frame.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::domain::RoomId;

/// Longest `type` a client may send.
const MAX_KIND_LEN: usize = 64;
/// Longest user id accepted in `to`.
const MAX_USER_ID_LEN: usize = 256;
/// Most messages one `history` request returns.
pub const MAX_HISTORY_LIMIT: usize = 1_000;
/// Messages a `history` request returns when it names no limit.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
/// Types only the server sends; a client using them could pass for the server.
const RESERVED_KINDS: [&str; 3] = ["ack", "error", "system"];

/// One client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `join`: subscribe to a room (creating it if needed), first replaying what came after
    /// `metadata.since_offset` when it is given.
    Join {
        /// The room.
        room: RoomId,
        /// The last offset the client saw in this room.
        since: Option<u64>,
    },
    /// `history`: the last `metadata.limit` messages of a room the client is in.
    History {
        /// The room.
        room: RoomId,
        /// How many (1–[`MAX_HISTORY_LIMIT`]).
        limit: usize,
    },
    /// `leave`: unsubscribe from a room.
    Leave(RoomId),
    /// Any other type with a `room_id` (e.g. `message`): relay to the room's other members.
    Post(Post),
    /// `typing`: relay to the room's other members; never stored.
    Typing {
        /// The room.
        room: RoomId,
        /// The sender's metadata, relayed as is.
        metadata: Option<Map<String, Value>>,
    },
    /// `private`: deliver to every session of the user `to`.
    Private {
        /// The addressee's user id.
        to: String,
        /// The text.
        content: String,
        /// The sender's metadata.
        metadata: Option<Map<String, Value>>,
    },
    /// `broadcast`: deliver to every connected session (admins only).
    Broadcast {
        /// The text.
        content: String,
        /// The sender's metadata.
        metadata: Option<Map<String, Value>>,
    },
    /// `presence`: list the room's members.
    Presence(RoomId),
}

/// A message for a room.
#[derive(Debug, Clone, PartialEq)]
pub struct Post {
    /// The client's `type`, relayed unchanged (`message`, `reaction`, …).
    pub kind: String,
    /// The room.
    pub room: RoomId,
    /// The text.
    pub content: String,
    /// The sender's metadata.
    pub metadata: Option<Map<String, Value>>,
}

/// Why a frame was refused; the text goes back to the client in an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not a JSON object of the expected shape.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A field the type needs is absent or empty.
    #[error("missing field `{field}`: a `{kind}` message needs it")]
    Missing {
        /// The field.
        field: &'static str,
        /// The message type.
        kind: String,
    },
    /// A field is present but unusable.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// The fields a client may send; `from` and `timestamp` are accepted and ignored (the
/// server sets both), as are unknown fields.
#[derive(Deserialize)]
struct Inbound {
    #[serde(rename = "type")]
    kind: Option<String>,
    to: Option<String>,
    content: Option<String>,
    room_id: Option<String>,
    metadata: Option<Map<String, Value>>,
}

impl Command {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Self, CommandError> {
        let inbound: Inbound = serde_json::from_str(text).map_err(|e| {
            CommandError::Malformed(match e.classify() {
                serde_json::error::Category::Data => e.to_string(),
                _ => format!("not a JSON object ({e})"),
            })
        })?;
        let kind = inbound
            .kind
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| CommandError::Missing {
                field: "type",
                kind: "chat".into(),
            })?;
        let room = |inbound_room: Option<String>| -> Result<RoomId, CommandError> {
            let raw =
                inbound_room
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| CommandError::Missing {
                        field: "room_id",
                        kind: kind.clone(),
                    })?;
            RoomId::parse(&raw).map_err(|e| CommandError::Invalid {
                field: "room_id",
                reason: e.reason,
            })
        };
        let content = inbound.content.unwrap_or_default();
        if content.contains('\0') {
            // PostgreSQL cannot store NUL in text; a message that can never be stored is
            // refused here rather than relayed and then lost from history.
            return Err(CommandError::Invalid {
                field: "content",
                reason: "it must not contain NUL (U+0000)".into(),
            });
        }
        Ok(match kind.as_str() {
            "join" => Self::Join {
                room: room(inbound.room_id)?,
                since: number(inbound.metadata.as_ref(), "since_offset", u64::MAX)?,
            },
            "history" => Self::History {
                room: room(inbound.room_id)?,
                limit: number(inbound.metadata.as_ref(), "limit", MAX_HISTORY_LIMIT as u64)?
                    .map_or(DEFAULT_HISTORY_LIMIT, |n| n as usize),
            },
            "leave" => Self::Leave(room(inbound.room_id)?),
            "presence" => Self::Presence(room(inbound.room_id)?),
            "typing" => Self::Typing {
                room: room(inbound.room_id)?,
                metadata: inbound.metadata,
            },
            "private" => Self::Private {
                to: recipient(inbound.to)?,
                content,
                metadata: inbound.metadata,
            },
            "broadcast" => Self::Broadcast {
                content,
                metadata: inbound.metadata,
            },
            other => {
                check_kind(other)?;
                Self::Post(Post {
                    kind: other.to_owned(),
                    room: room(inbound.room_id)?,
                    content,
                    metadata: inbound.metadata,
                })
            }
        })
    }
}

/// `metadata.<key>` as a whole number in `0..=max` (`limit` also above 0), if present.
fn number(
    metadata: Option<&Map<String, Value>>,
    key: &'static str,
    max: u64,
) -> Result<Option<u64>, CommandError> {
    let Some(value) = metadata.and_then(|m| m.get(key)) else {
        return Ok(None);
    };
    let min = u64::from(key == "limit");
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(CommandError::Invalid {
            field: key,
            reason: if max == u64::MAX {
                "it must be a whole number, 0 or more".into()
            } else {
                format!("it must be a whole number from {min} to {max}")
            },
        }),
    }
}

fn recipient(to: Option<String>) -> Result<String, CommandError> {
    let to = to
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| CommandError::Missing {
            field: "to",
            kind: "private".into(),
        })?;
    if to.len() > MAX_USER_ID_LEN || to.chars().any(char::is_control) {
        return Err(CommandError::Invalid {
            field: "to",
            reason: format!(
                "a user id is at most {MAX_USER_ID_LEN} bytes without control characters"
            ),
        });
    }
    Ok(to)
}

fn check_kind(kind: &str) -> Result<(), CommandError> {
    let invalid = |reason: String| CommandError::Invalid {
        field: "type",
        reason,
    };
    if RESERVED_KINDS.contains(&kind) {
        return Err(invalid(format!("`{kind}` is reserved for the server")));
    }
    if kind.len() > MAX_KIND_LEN || kind.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(format!(
            "a type is at most {MAX_KIND_LEN} bytes without spaces or control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomId {
        RoomId::parse(name).unwrap()
    }

    #[test]
    fn seed_messages_parse() {
        let cases = [
            (
                r#"{"type":"join","room_id":"r"}"#,
                Command::Join {
                    room: room("r"),
                    since: None,
                },
            ),
            (
                r#"{"type":"join","room_id":"r","metadata":{"since_offset":7}}"#,
                Command::Join {
                    room: room("r"),
                    since: Some(7),
                },
            ),
            (
                r#"{"type":"history","room_id":"r"}"#,
                Command::History {
                    room: room("r"),
                    limit: DEFAULT_HISTORY_LIMIT,
                },
            ),
            (
                r#"{"type":"history","room_id":"r","metadata":{"limit":3}}"#,
                Command::History {
                    room: room("r"),
                    limit: 3,
                },
            ),
            (
                r#"{"type":"leave","room_id":"r"}"#,
                Command::Leave(room("r")),
            ),
            (
                r#"{"type":"presence","room_id":"r"}"#,
                Command::Presence(room("r")),
            ),
            (
                r#"{"type":"message","room_id":"r","content":"hi","from":"x","timestamp":"2020-01-01T00:00:00Z"}"#,
                Command::Post(Post {
                    kind: "message".into(),
                    room: room("r"),
                    content: "hi".into(),
                    metadata: None,
                }),
            ),
            (
                r#"{"type":"private","to":"bob","content":"psst"}"#,
                Command::Private {
                    to: "bob".into(),
                    content: "psst".into(),
                    metadata: None,
                },
            ),
            (
                r#"{"type":"broadcast","content":"all"}"#,
                Command::Broadcast {
                    content: "all".into(),
                    metadata: None,
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(Command::parse(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        let cases = [
            ("not json", "malformed message"),
            ("[1,2]", "malformed message"),
            (r#"{"type":5}"#, "malformed message: invalid type"),
            (r#"{"room_id":"r"}"#, "missing field `type`"),
            (r#"{"type":"join"}"#, "missing field `room_id`"),
            (
                r#"{"type":"message","content":"x"}"#,
                "missing field `room_id`",
            ),
            (r#"{"type":"private","content":"x"}"#, "missing field `to`"),
            (
                r#"{"type":"join","room_id":"r","metadata":{"since_offset":-1}}"#,
                "invalid since_offset",
            ),
            (
                r#"{"type":"join","room_id":"r","metadata":{"since_offset":"3"}}"#,
                "invalid since_offset",
            ),
            (
                r#"{"type":"history","room_id":"r","metadata":{"limit":0}}"#,
                "invalid limit: it must be a whole number from 1 to 1000",
            ),
            (
                r#"{"type":"history","room_id":"r","metadata":{"limit":5000}}"#,
                "invalid limit",
            ),
            (r#"{"type":"error","room_id":"r"}"#, "reserved"),
            (r#"{"type":"join","room_id":"a\u0007"}"#, "invalid room_id"),
            (
                r#"{"type":"message","room_id":"r","content":"a\u0000b"}"#,
                "invalid content: it must not contain NUL",
            ),
            (
                r#"{"type":"private","to":"bob\u0000","content":"x"}"#,
                "invalid to",
            ),
            (
                r#"{"type":"message","room_id":"r","metadata":3}"#,
                "malformed message",
            ),
        ];
        for (text, expected) in cases {
            let error = Command::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: got `{error}`");
        }
    }
}
