//! Messages the [`HistoryWriter`](super::HistoryWriter) handles.

use actix::Message;
use serde::Serialize;

use crate::{
    db::DbError,
    domain::{RoomId, StoredMessage, StoredPrivate},
};

/// Store a relayed room message (sent with `try_send`: the hub never waits for history).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Append(pub StoredMessage);

/// Store a private message (only sent when private history is on).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AppendPrivate(pub StoredPrivate);

/// The messages of `room` with offsets in `after+1..=upto`, oldest first, whether written
/// yet or still waiting for their batch. Pruned ones are simply absent.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<StoredMessage>, DbError>")]
pub struct Replay {
    /// The room.
    pub room: RoomId,
    /// The last offset the client has.
    pub after: u64,
    /// The room's last offset when the client joined.
    pub upto: u64,
}

/// The last `limit` messages of `room` up to offset `upto`, oldest first.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<StoredMessage>, DbError>")]
pub struct LastMessages {
    /// The room.
    pub room: RoomId,
    /// The room's last offset when asked.
    pub upto: u64,
    /// How many at most.
    pub limit: usize,
}

/// Write everything waiting now (at shutdown); answers with how many messages were written.
#[derive(Debug, Message)]
#[rtype(result = "Result<usize, DbError>")]
pub struct Flush;

/// The writer's counters.
#[derive(Debug, Message)]
#[rtype(result = "HistoryStats")]
pub struct GetHistoryStats;

/// Counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HistoryStats {
    /// Messages waiting for their batch.
    pub pending: usize,
    /// Messages (room and private) written.
    pub written: u64,
    /// Messages not stored because too many were waiting for the database.
    pub dropped: u64,
    /// Batches whose write failed (and were retried).
    pub failed_writes: u64,
    /// Rows the database refused for their data (dropped, logged as errors).
    pub rejected: u64,
    /// Messages deleted by retention.
    pub pruned: u64,
    /// What is wrong now (writes failing, far behind, a recent refusal); empty when well.
    pub problems: Vec<String>,
}
