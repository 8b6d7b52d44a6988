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

/// The rooms one session is in: few, so an exact-size slice (16 bytes a room, no hash
/// table, no spare capacity field) — kept per connection, where every byte counts ×10,000.
/// Joins and leaves are rare next to messages, so they rebuild the slice.
#[derive(Debug, Default)]
pub struct RoomSet(Box<[RoomId]>);

impl RoomSet {
    /// Adds `room`; `false` when it was already there.
    pub fn insert(&mut self, room: &RoomId) -> bool {
        if self.contains(room) {
            return false;
        }
        let mut rooms = Vec::with_capacity(self.0.len() + 1);
        rooms.extend(self.0.iter().cloned());
        rooms.push(room.clone());
        self.0 = rooms.into_boxed_slice();
        true
    }

    /// Removes `room`; `false` when it was not there.
    pub fn remove(&mut self, room: &RoomId) -> bool {
        if !self.contains(room) {
            return false;
        }
        self.0 = self.0.iter().filter(|r| *r != room).cloned().collect();
        true
    }

    /// Whether `room` is in the set.
    pub fn contains(&self, room: &RoomId) -> bool {
        self.0.contains(room)
    }

    /// How many rooms.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for RoomSet {
    type Item = RoomId;
    type IntoIter = std::vec::IntoIter<RoomId>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_vec().into_iter()
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

    #[test]
    fn a_room_set_holds_each_room_once() {
        let (a, b) = (RoomId::parse("a").unwrap(), RoomId::parse("b").unwrap());
        let mut set = super::RoomSet::default();
        assert!(set.is_empty());
        assert!(set.insert(&a));
        assert!(!set.insert(&a));
        assert!(set.insert(&b));
        assert_eq!(set.len(), 2);
        assert!(set.remove(&a));
        assert!(!set.remove(&a));
        assert!(!set.contains(&a) && set.contains(&b));
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec![b]);
    }
}
