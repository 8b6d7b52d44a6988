//! Room ids: the names clients join and post to.

use std::{fmt, sync::Arc};

use super::{parse_text, ValidationError};

/// A room name: 1–128 characters after trimming, no control characters. Cheap to clone
/// (the hub keeps one per room and hands copies to every member).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(Arc<str>);

impl RoomId {
    /// Longest room id accepted, in characters.
    pub const MAX_LEN: usize = 128;

    /// Parses a room id from a client.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        parse_text("room_id", raw, Self::MAX_LEN).map(|s| Self(s.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for RoomId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_are_trimmed_bounded_and_printable() {
        assert_eq!(RoomId::parse("  lobby ").unwrap().as_str(), "lobby");
        assert!(RoomId::parse("").is_err());
        assert!(RoomId::parse("   ").is_err());
        assert!(RoomId::parse("a\u{7}b").is_err());
        assert!(RoomId::parse(&"r".repeat(128)).is_ok());
        assert!(RoomId::parse(&"r".repeat(129)).is_err());
    }
}
