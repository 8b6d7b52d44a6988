//! Numbered room messages in Redis, in the style of Centrifugo's stream engine: one Lua
//! script per publish increments the room's offset, appends the message to a capped
//! stream whose entry ids are the offsets, and publishes it — atomically, so every node
//! sees one order per room and offsets never repeat. Each room also has an **epoch**,
//! made when its state is first created in Redis: a client can tell a continuation from
//! a history that was reset (Redis lost its data). A room opened with no state in Redis
//! starts its offsets after the last one stored in the database, so offsets keep rising
//! across a Redis reset and the database never sees one twice.
//!
//! Keys: `<prefix>:room:<id>:meta` (hash: `o` offset, `e` epoch) and
//! `<prefix>:room:<id>:stream`; channel `<prefix>:room:<id>`, messages
//! `<offset>:<epoch>:<payload>`.

use actix::prelude::*;
use chrono::{DateTime, Utc};
use redis::Script;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Broker, ClusterUnavailable};
use crate::{
    chat::SessionId,
    domain::{RoomId, StoredMessage},
};

/// A room message on the wire between nodes (its offset travels beside it).
#[derive(Debug, Serialize, Deserialize)]
pub struct WireMessage {
    /// The sending session (it gets an `ack`, not the message).
    pub o: String,
    /// The message id.
    pub id: String,
    /// The client's `type`.
    pub kind: String,
    /// The sender's user id.
    pub sender: String,
    /// The sender's display name.
    pub name: Option<String>,
    /// The text.
    pub content: String,
    /// The sender's metadata.
    pub metadata: Option<Map<String, Value>>,
    /// When it was relayed.
    pub at: DateTime<Utc>,
}

impl WireMessage {
    /// The wire form of `message`, sent by `origin`.
    pub fn new(origin: SessionId, message: &StoredMessage) -> Self {
        Self {
            o: origin.to_string(),
            id: message.id.clone(),
            kind: message.kind.clone(),
            sender: message.sender.clone(),
            name: message.sender_name.clone(),
            content: message.content.clone(),
            metadata: message.metadata.clone(),
            at: message.created_at,
        }
    }

    /// The message it carries, numbered `offset` in `room`, and its sending session.
    pub fn into_message(self, room: RoomId, offset: u64) -> (StoredMessage, Option<SessionId>) {
        let origin = SessionId::parse(&self.o);
        (
            StoredMessage {
                room,
                offset,
                id: self.id,
                kind: self.kind,
                sender: self.sender,
                sender_name: self.name,
                content: self.content,
                metadata: self.metadata,
                created_at: self.at,
            },
            origin,
        )
    }
}

/// Messages kept in a room's stream for recovery.
pub const STREAM_SIZE: u64 = 1000;
/// A room's state in Redis expires after this long without a publish.
pub const STREAM_TTL_SECONDS: u64 = 24 * 3600;

/// Creates the room's state if Redis has none (offsets continuing after `ARGV[1]`, a new
/// epoch `ARGV[2]`); answers the room's offset and epoch.
const OPEN: &str = r#"
local epoch = redis.call("HGET", KEYS[1], "e")
if not epoch then
  epoch = ARGV[2]
  redis.call("HSET", KEYS[1], "e", epoch, "o", ARGV[1])
  redis.call("EXPIRE", KEYS[1], ARGV[3])
end
local offset = redis.call("HGET", KEYS[1], "o")
return {tonumber(offset), epoch}
"#;

/// Numbers, keeps and publishes one message: KEYS = meta, stream; ARGV = channel,
/// payload, stream size, ttl, epoch (used only if the room has no state yet), seed
/// offset (idem).
const PUBLISH: &str = r#"
local epoch = redis.call("HGET", KEYS[1], "e")
if not epoch then
  epoch = ARGV[5]
  redis.call("HSET", KEYS[1], "e", epoch, "o", ARGV[6])
end
local offset = redis.call("HINCRBY", KEYS[1], "o", 1)
redis.call("XADD", KEYS[2], "MAXLEN", ARGV[3], offset .. "-0", "d", ARGV[2])
redis.call("EXPIRE", KEYS[1], ARGV[4])
redis.call("EXPIRE", KEYS[2], ARGV[4])
redis.call("PUBLISH", ARGV[1], offset .. ":" .. epoch .. ":" .. ARGV[2])
return {offset, epoch}
"#;

/// Where a room stands in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPosition {
    /// The last offset handed out.
    pub offset: u64,
    /// The room's epoch.
    pub epoch: String,
}

/// A new epoch: 8 random hex digits.
fn new_epoch() -> String {
    super::random_node_id()
}

fn unavailable(error: redis::RedisError) -> ClusterUnavailable {
    ClusterUnavailable(error.to_string())
}

impl Broker {
    fn room_key(&self, room: &RoomId, part: &str) -> String {
        self.key(&format!("room:{room}:{part}"))
    }
}

/// Open `room`: create its state in Redis if there is none (offsets continuing after
/// `seed`, the last offset the database holds), and answer where it stands.
#[derive(Debug, Message)]
#[rtype(result = "Result<RoomPosition, ClusterUnavailable>")]
pub struct OpenRoom {
    /// The room.
    pub room: RoomId,
    /// The last offset stored for it elsewhere (0: none).
    pub seed: u64,
}

impl Handler<OpenRoom> for Broker {
    type Result = ResponseFuture<Result<RoomPosition, ClusterUnavailable>>;

    fn handle(&mut self, msg: OpenRoom, _ctx: &mut Self::Context) -> Self::Result {
        let mut redis = self.commands.clone();
        let meta = self.room_key(&msg.room, "meta");
        Box::pin(async move {
            let (offset, epoch): (u64, String) = Script::new(OPEN)
                .key(meta)
                .arg(msg.seed)
                .arg(new_epoch())
                .arg(STREAM_TTL_SECONDS)
                .invoke_async(&mut redis)
                .await
                .map_err(unavailable)?;
            Ok(RoomPosition { offset, epoch })
        })
    }
}

/// Number, keep and publish one room message (its JSON without the offset); answers
/// the offset it got and the room's epoch.
#[derive(Debug, Message)]
#[rtype(result = "Result<RoomPosition, ClusterUnavailable>")]
pub struct PublishRoomMessage {
    /// The room.
    pub room: RoomId,
    /// What every node receives after `<offset>:<epoch>:`.
    pub payload: String,
    /// Where offsets continue if Redis has no state for the room (see [`OpenRoom`]).
    pub seed: u64,
}

impl Handler<PublishRoomMessage> for Broker {
    type Result = ResponseFuture<Result<RoomPosition, ClusterUnavailable>>;

    fn handle(&mut self, msg: PublishRoomMessage, _ctx: &mut Self::Context) -> Self::Result {
        self.stats.published += 1;
        let mut redis = self.commands.clone();
        let (meta, stream, channel) = (
            self.room_key(&msg.room, "meta"),
            self.room_key(&msg.room, "stream"),
            self.room_channel(&msg.room),
        );
        Box::pin(async move {
            let (offset, epoch): (u64, String) = Script::new(PUBLISH)
                .key(meta)
                .key(stream)
                .arg(channel)
                .arg(msg.payload)
                .arg(STREAM_SIZE)
                .arg(STREAM_TTL_SECONDS)
                .arg(new_epoch())
                .arg(msg.seed)
                .invoke_async(&mut redis)
                .await
                .map_err(unavailable)?;
            Ok(RoomPosition { offset, epoch })
        })
    }
}

/// The messages of `room` with offsets in `after+1..=upto` that its stream still holds,
/// oldest first, as `(offset, payload)`.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<(u64, String)>, ClusterUnavailable>")]
pub struct ReadRoom {
    /// The room.
    pub room: RoomId,
    /// Messages after this offset.
    pub after: u64,
    /// Up to this offset.
    pub upto: u64,
}

impl Handler<ReadRoom> for Broker {
    type Result = ResponseFuture<Result<Vec<(u64, String)>, ClusterUnavailable>>;

    fn handle(&mut self, msg: ReadRoom, _ctx: &mut Self::Context) -> Self::Result {
        let mut redis = self.commands.clone();
        let stream = self.room_key(&msg.room, "stream");
        Box::pin(async move {
            if msg.upto <= msg.after {
                return Ok(Vec::new());
            }
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(stream)
                .arg(format!("{}-0", msg.after + 1))
                .arg(format!("{}-0", msg.upto))
                .query_async(&mut redis)
                .await
                .map_err(unavailable)?;
            Ok(entries
                .into_iter()
                .filter_map(|(id, fields)| {
                    let offset = id.split('-').next()?.parse().ok()?;
                    let payload = fields.into_iter().find(|(k, _)| k == "d")?.1;
                    Some((offset, payload))
                })
                .collect())
        })
    }
}

/// Splits a room channel message into offset, epoch and payload.
pub fn parse_room_message(raw: &str) -> Option<(u64, &str, &str)> {
    let (offset, rest) = raw.split_once(':')?;
    let (epoch, payload) = rest.split_once(':')?;
    Some((offset.parse().ok()?, epoch, payload))
}

#[cfg(test)]
mod tests {
    use super::parse_room_message;

    #[test]
    fn room_messages_split_into_offset_epoch_and_payload() {
        assert_eq!(
            parse_room_message(r#"12:ab12cd34:{"a":"b:c"}"#),
            Some((12, "ab12cd34", r#"{"a":"b:c"}"#))
        );
        assert_eq!(parse_room_message("x:e:p"), None);
        assert_eq!(parse_room_message("12"), None);
    }
}
