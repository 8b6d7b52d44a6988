//! Messages the [`Hub`](super::Hub) handles, and the one it sends to sessions.

use actix::Message;
use actix_web_actors::ws::CloseReason;
use bytestring::ByteString;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    chat::{command::Post, Identity, SessionId},
    domain::RoomId,
};

/// What the hub tells a session.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum ToSession {
    /// Write this (already serialised) text frame.
    Frame(ByteString),
    /// Write these frames in order (a replay: one mailbox slot however long).
    Frames(Vec<ByteString>),
    /// Send this close frame and end the connection.
    Close(CloseReason),
    /// Time to check the client's liveness (and maybe ping it). One hub timer drives
    /// every session's heartbeat, instead of a timer per connection.
    Pulse,
}

/// A new session wants to be registered; refused past the per-user session limit.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ConnectError>")]
pub struct Connect {
    /// The session.
    pub session: SessionId,
    /// Who it is.
    pub identity: Identity,
    /// Where its frames go (the session keeps the same outbox, to take off what it
    /// writes).
    pub addr: std::sync::Arc<super::outbox::Outbox>,
}

/// Why a session was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The user already holds the maximum number of sessions.
    #[error("too many sessions for this user (at most {limit})")]
    TooManySessions {
        /// The limit.
        limit: usize,
    },
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The user is being deleted (or was): its tokens are refused.
    #[error("user deleted")]
    UserDeleted,
}

/// A session ended; forget it and leave its rooms.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    /// The session.
    pub session: SessionId,
}

/// Subscribe a session to a room (created on first join); confirmed with a `join` frame.
/// With `since`, the messages after that offset are replayed first (the confirmation says
/// whether all of them could be: `recovered`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Join {
    /// The session.
    pub session: SessionId,
    /// The room.
    pub room: RoomId,
    /// The last offset the client saw in this room.
    pub since: Option<u64>,
}

/// Reply to a member with the room's last `limit` messages (a `history` frame).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct History {
    /// The asking session.
    pub session: SessionId,
    /// The room.
    pub room: RoomId,
    /// How many at most.
    pub limit: usize,
}

/// Unsubscribe a session from a room; confirmed with a `leave` frame.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The session.
    pub session: SessionId,
    /// The room.
    pub room: RoomId,
}

/// Relay a message to a room's other members; the sender gets an `ack` with its id.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RoomMessage {
    /// The sender.
    pub session: SessionId,
    /// What to relay.
    pub post: Post,
    /// When the session sent it (how long it waited tells whether the hub is behind).
    pub sent: std::time::Instant,
}

/// Relay a typing indicator to a room's other members (no ack, never stored).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Typing {
    /// The sender.
    pub session: SessionId,
    /// The room.
    pub room: RoomId,
    /// The sender's metadata.
    pub metadata: Option<Map<String, Value>>,
}

/// Deliver a message to every session of one user.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Private {
    /// The sender.
    pub session: SessionId,
    /// The addressee's user id.
    pub to: String,
    /// The text.
    pub content: String,
    /// The sender's metadata.
    pub metadata: Option<Map<String, Value>>,
}

/// Deliver a message to every connected session. The session has checked the admin role.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Broadcast {
    /// The sender.
    pub session: SessionId,
    /// The text.
    pub content: String,
    /// The sender's metadata.
    pub metadata: Option<Map<String, Value>>,
}

/// Reply to the session with the room's members.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ListMembers {
    /// The asking session.
    pub session: SessionId,
    /// The room.
    pub room: RoomId,
}

/// Every room with its member counts, sorted by id (for `GET /rooms`).
#[derive(Debug, Message)]
#[rtype(result = "Vec<RoomSummary>")]
pub struct ListRooms;

/// One room in [`ListRooms`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomSummary {
    /// The room.
    pub room_id: RoomId,
    /// Sessions subscribed.
    pub sessions: usize,
    /// Distinct users subscribed.
    pub users: usize,
}

/// The hub's counters.
#[derive(Debug, Message)]
#[rtype(result = "HubStats")]
pub struct GetStats;

/// Gauges and counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HubStats {
    /// Connected sessions.
    pub sessions: usize,
    /// Distinct connected users.
    pub users: usize,
    /// Rooms with at least one member.
    pub rooms: usize,
    /// Rooms whose numbering is kept (those with members, and idle ones for a while).
    pub numbered_rooms: usize,
    /// Client messages routed (room messages, typing, private, broadcast).
    pub messages_in: u64,
    /// Frames handed to sessions (relays, acks, confirmations, presence, errors).
    pub frames_out: u64,
    /// Sessions disconnected because their outbound queue overflowed.
    pub slow_consumer_disconnects: u64,
    /// Sessions refused at connect (per-user limit or shutdown).
    pub refused_sessions: u64,
    /// Room messages not stored because the history writer was too far behind.
    pub history_dropped: u64,
    /// Rooms refusing publishes because most of their members are behind.
    pub overloaded_rooms: usize,
    /// Whether the hub itself is behind (publishes refused everywhere).
    pub lagging: bool,
    /// How long the last publish waited for the hub, in microseconds.
    pub lag_us: u64,
    /// Publishes refused (overloaded), each answered with an `overloaded` error.
    pub publishes_refused: u64,
    /// Joins with `since_offset`, and how many of them recovered every missed message.
    pub recoveries: u64,
    /// See `recoveries`.
    pub recovered: u64,
    /// In cluster mode: offset jumps on a room's channel (messages Redis lost on the
    /// way), each filled from the room's stream before anything later was relayed.
    pub gaps: u64,
}

/// Take every session of a user on this node out of a room (the server API's
/// `Unsubscribe`); each gets a `leave` frame with `metadata.removed: true`. Answers how many.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct RemoveFromRoom {
    /// The user.
    pub user_id: String,
    /// The room.
    pub room: RoomId,
}

/// Close every session with 1001 (going away; 1012 "service restart" on a cluster node,
/// whose clients can reconnect to another node) and refuse new ones; answers with how many
/// sessions were told.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct Shutdown;

/// Answers once every message sent to the hub before it has been handled — and so every
/// relay before it has been handed to the history writer — and every room's unused
/// offsets have been handed back to the database. The last step of a clean stop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Close every session of `user_id` (a user being deleted); answers how many.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct CloseUser {
    /// The user (a token's subject).
    pub user_id: String,
    /// The close code.
    pub code: u16,
    /// The close reason.
    pub reason: String,
}

/// A private message published on another node (or on this one, through Redis), for
/// this node's sessions of `to`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RemotePrivate {
    /// The addressee.
    pub to: String,
    /// The sending session, which does not get it back.
    pub origin: Option<SessionId>,
    /// The encoded frame.
    pub frame: ByteString,
}

/// A frame for a room published on some node (this one too), for this node's members.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RemoteRoomFrame {
    /// The room.
    pub room: RoomId,
    /// The sending session, which does not get it back.
    pub origin: Option<SessionId>,
    /// The encoded frame.
    pub frame: ByteString,
}

/// The subscription connection came back: look for messages missed meanwhile.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CheckRooms;

/// A broadcast published on some node, for every session of this one.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RemoteBroadcast {
    /// The sending session, which does not get it back.
    pub origin: Option<SessionId>,
    /// The encoded frame.
    pub frame: ByteString,
}

/// A numbered room message published through Redis (by any node, this one too).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RemoteRoomMessage {
    /// The room.
    pub room: RoomId,
    /// Its offset.
    pub offset: u64,
    /// The room's epoch.
    pub epoch: String,
    /// The message on the wire (`broker::rooms::WireMessage`, JSON).
    pub payload: String,
}
