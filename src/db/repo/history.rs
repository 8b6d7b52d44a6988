//! The chat history repository: room messages numbered by offset, the last offset of each
//! room, and (when switched on) private messages.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::{prelude::*, upsert::excluded};
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::{Map, Value};

use super::INSERT_CHUNK;
use crate::db::{
    schema::{messages, private_messages, rooms},
    with_conn, Conn, Database, DbError,
};
use crate::domain::{RoomId, StoredMessage, StoredPrivate};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = messages)]
struct MessageRow {
    room_id: String,
    room_offset: i64,
    id: String,
    kind: String,
    sender: String,
    content: String,
    metadata: Option<String>,
    created_at: NaiveDateTime,
    sender_name: Option<String>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = rooms)]
struct RoomRow {
    room_id: String,
    last_offset: i64,
    updated_at: NaiveDateTime,
    /// Only for a row that does not exist yet (the hub's reservation normally made it):
    /// nothing above the stored offset can have been handed out by this writer's caller
    /// without a reservation, so the two start equal.
    reserved_offset: i64,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = private_messages)]
struct PrivateRow {
    id: String,
    sender: String,
    recipient: String,
    content: String,
    metadata: Option<String>,
    created_at: NaiveDateTime,
    sender_name: Option<String>,
}

fn metadata_text(metadata: &Option<Map<String, Value>>) -> Option<String> {
    metadata
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "{}".into()))
}

/// Offsets are `u64` in the server and `BIGINT` in the database; both stay far below 2^63.
fn offset_column(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

impl MessageRow {
    fn from_message(message: &StoredMessage) -> Self {
        Self {
            room_id: message.room.as_str().to_owned(),
            room_offset: offset_column(message.offset),
            id: message.id.clone(),
            kind: message.kind.clone(),
            sender: message.sender.clone(),
            content: message.content.clone(),
            metadata: metadata_text(&message.metadata),
            created_at: message.created_at.naive_utc(),
            sender_name: message.sender_name.clone(),
        }
    }
}

impl TryFrom<MessageRow> for StoredMessage {
    type Error = DbError;

    fn try_from(row: MessageRow) -> Result<Self, DbError> {
        let corrupt = |what: String| DbError::Corrupt(format!("message {}: {what}", row.id));
        let metadata = row
            .metadata
            .as_deref()
            .map(serde_json::from_str::<Map<String, Value>>)
            .transpose()
            .map_err(|e| corrupt(format!("metadata: {e}")))?;
        Ok(StoredMessage {
            room: RoomId::parse(&row.room_id).map_err(|e| corrupt(e.to_string()))?,
            offset: u64::try_from(row.room_offset)
                .map_err(|_| corrupt(format!("negative offset {}", row.room_offset)))?,
            id: row.id,
            kind: row.kind,
            sender: row.sender,
            sender_name: row.sender_name,
            content: row.content,
            metadata,
            created_at: DateTime::from_naive_utc_and_offset(row.created_at, Utc),
        })
    }
}

/// Runs one batch's statements — written once — on either backend's connection; `$run`
/// executes one statement (awaiting it on PostgreSQL, blocking on SQLite).
macro_rules! append_batch {
    ($c:ident, $run:ident, $messages:expr, $rooms:expr, $privates:expr) => {{
        for chunk in $messages.chunks(INSERT_CHUNK) {
            $run!($c, diesel::insert_into(messages::table).values(chunk));
        }
        // One row per room in the batch (usually a handful): SQLite takes upserts one
        // row at a time.
        for room in $rooms.iter() {
            $run!(
                $c,
                diesel::insert_into(rooms::table)
                    .values(room)
                    .on_conflict(rooms::room_id)
                    .do_update()
                    .set((
                        // Never lowered: batches of one room may be written out of order
                        // when a refused batch is split.
                        rooms::last_offset.eq(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                            "CASE WHEN excluded.last_offset > rooms.last_offset \
                             THEN excluded.last_offset ELSE rooms.last_offset END",
                        )),
                        rooms::updated_at.eq(excluded(rooms::updated_at)),
                    ))
            );
        }
        for chunk in $privates.chunks(INSERT_CHUNK) {
            $run!(
                $c,
                diesel::insert_into(private_messages::table).values(chunk)
            );
        }
        Ok(())
    }};
}

macro_rules! run_async {
    ($c:ident, $statement:expr) => {
        $statement.execute($c).await?
    };
}

macro_rules! run_blocking {
    ($c:ident, $statement:expr) => {
        diesel::RunQueryDsl::execute($statement, $c)?
    };
}

impl Database {
    /// Stores a batch of room messages (raising each room's last offset) and private
    /// messages in one transaction: all of them or none.
    #[tracing::instrument(skip_all, fields(messages = messages.len(), private = privates.len()))]
    pub async fn append_history(
        &self,
        messages: &[StoredMessage],
        privates: &[StoredPrivate],
    ) -> Result<(), DbError> {
        let rows: Vec<MessageRow> = messages.iter().map(MessageRow::from_message).collect();
        let mut last: HashMap<&str, (u64, NaiveDateTime)> = HashMap::new();
        for message in messages {
            let entry = last
                .entry(message.room.as_str())
                .or_insert((0, message.created_at.naive_utc()));
            if message.offset >= entry.0 {
                *entry = (message.offset, message.created_at.naive_utc());
            }
        }
        let rooms: Vec<RoomRow> = last
            .into_iter()
            .map(|(room, (offset, at))| RoomRow {
                room_id: room.to_owned(),
                last_offset: offset_column(offset),
                updated_at: at,
                reserved_offset: offset_column(offset),
            })
            .collect();
        let privates: Vec<PrivateRow> = privates
            .iter()
            .map(|p| PrivateRow {
                id: p.id.clone(),
                sender: p.sender.clone(),
                recipient: p.recipient.clone(),
                content: p.content.clone(),
                metadata: metadata_text(&p.metadata),
                created_at: p.created_at.naive_utc(),
                sender_name: p.sender_name.clone(),
            })
            .collect();
        if let Some(sharding) = &self.sharding {
            return append_sharded(sharding, rows, rooms, privates).await;
        }
        let mut conn = self.conn().await?;
        // As in `bulk_create_users`: multi-row INSERTs run on SQLite's sync connection.
        match &mut conn {
            Conn::Postgres(c) => {
                let (rows, rooms, privates) = (&rows, &rooms, &privates);
                c.transaction::<_, diesel::result::Error, _>(async |c| {
                    append_batch!(c, run_async, rows, rooms, privates)
                })
                .await?
            }
            Conn::Sqlite(c) => {
                c.spawn_blocking(move |c| {
                    c.immediate_transaction(|c| {
                        append_batch!(c, run_blocking, rows, rooms, privates)
                    })
                })
                .await?
            }
        }
        Ok(())
    }

    /// Runs an empty write transaction: whether the database takes writes right now (the
    /// history writer's test of whether a refused batch is the data's fault or the
    /// database's).
    pub async fn takes_transactions(&self) -> Result<(), DbError> {
        for db in self.data_dbs() {
            db.local_takes_transactions().await?;
        }
        Ok(())
    }

    async fn local_takes_transactions(&self) -> Result<(), DbError> {
        let mut conn = self.conn().await?;
        match &mut conn {
            Conn::Postgres(c) => {
                c.transaction::<_, diesel::result::Error, _>(async |_| Ok(()))
                    .await?
            }
            Conn::Sqlite(c) => {
                c.spawn_blocking(|c| {
                    c.immediate_transaction(|_| Ok::<_, diesel::result::Error>(()))
                })
                .await?
            }
        }
        Ok(())
    }

    /// The stored messages of `room` with offsets in `after+1..=upto`, oldest first (fewer
    /// when some were pruned or are not written yet).
    #[tracing::instrument(skip(self))]
    pub async fn history_range(
        &self,
        room: &RoomId,
        after: u64,
        upto: u64,
    ) -> Result<Vec<StoredMessage>, DbError> {
        let mut conn = self.room_db(room).conn().await?;
        let rows: Vec<MessageRow> = with_conn!(&mut conn, |c| {
            messages::table
                .filter(messages::room_id.eq(room.as_str()))
                .filter(messages::room_offset.gt(offset_column(after)))
                .filter(messages::room_offset.le(offset_column(upto)))
                .order(messages::room_offset.asc())
                .select(MessageRow::as_select())
                .load(c)
                .await
        })?;
        rows.into_iter().map(StoredMessage::try_from).collect()
    }

    /// The last `limit` stored messages of `room` up to offset `upto`, oldest first.
    #[tracing::instrument(skip(self))]
    pub async fn history_last(
        &self,
        room: &RoomId,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, DbError> {
        let mut conn = self.room_db(room).conn().await?;
        let rows: Vec<MessageRow> = with_conn!(&mut conn, |c| {
            messages::table
                .filter(messages::room_id.eq(room.as_str()))
                .filter(messages::room_offset.le(offset_column(upto)))
                .order(messages::room_offset.desc())
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .select(MessageRow::as_select())
                .load(c)
                .await
        })?;
        let mut messages = rows
            .into_iter()
            .map(StoredMessage::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        messages.reverse();
        Ok(messages)
    }

    /// Deletes room messages beyond the newest `keep_per_room` of each room and messages
    /// (room and private) created before `older_than`; returns how many went.
    #[tracing::instrument(skip(self))]
    pub async fn prune_history(
        &self,
        keep_per_room: Option<u64>,
        older_than: Option<DateTime<Utc>>,
    ) -> Result<u64, DbError> {
        let mut deleted = 0;
        for db in self.data_dbs() {
            deleted += db.local_prune_history(keep_per_room, older_than).await?;
        }
        Ok(deleted)
    }

    async fn local_prune_history(
        &self,
        keep_per_room: Option<u64>,
        older_than: Option<DateTime<Utc>>,
    ) -> Result<u64, DbError> {
        let mut conn = self.conn().await?;
        let mut deleted = 0;
        if let Some(keep) = keep_per_room {
            // A correlated subquery both engines accept; `keep` is a number from the
            // configuration, formatted in, so no placeholder syntax differs.
            let statement = format!(
                "DELETE FROM messages WHERE room_offset <= \
                 (SELECT r.last_offset FROM rooms r WHERE r.room_id = messages.room_id) - {keep}"
            );
            deleted += with_conn!(&mut conn, |c| diesel::sql_query(&statement)
                .execute(c)
                .await)?;
        }
        if let Some(cutoff) = older_than {
            let cutoff = cutoff.naive_utc();
            deleted += with_conn!(&mut conn, |c| {
                diesel::delete(messages::table.filter(messages::created_at.lt(cutoff)))
                    .execute(c)
                    .await
            })?;
            deleted += with_conn!(&mut conn, |c| {
                diesel::delete(
                    private_messages::table.filter(private_messages::created_at.lt(cutoff)),
                )
                .execute(c)
                .await
            })?;
        }
        Ok(deleted as u64)
    }

    /// How many room messages are stored for `room`.
    pub async fn stored_messages(&self, room: &RoomId) -> Result<u64, DbError> {
        let mut conn = self.room_db(room).conn().await?;
        let count: i64 = with_conn!(&mut conn, |c| {
            messages::table
                .filter(messages::room_id.eq(room.as_str()))
                .count()
                .get_result(c)
                .await
        })?;
        Ok(count as u64)
    }

    /// How many private messages are stored.
    pub async fn stored_private_messages(&self) -> Result<u64, DbError> {
        let mut total = 0;
        for db in self.data_dbs() {
            let mut conn = db.conn().await?;
            let count: i64 = with_conn!(&mut conn, |c| {
                private_messages::table.count().get_result(c).await
            })?;
            total += count as u64;
        }
        Ok(total)
    }
}

/// [`Database::append_history`] over shards: room messages and offsets on the room's
/// shard, private messages on the recipient's, all in one distributed transaction (one
/// phase when the batch lands on one shard), so a batch stays all or nothing.
async fn append_sharded(
    sharding: &crate::db::shards::Sharding,
    rows: Vec<MessageRow>,
    rooms: Vec<RoomRow>,
    privates: Vec<PrivateRow>,
) -> Result<(), DbError> {
    use futures_util::FutureExt;

    type Batch = (Vec<MessageRow>, Vec<RoomRow>, Vec<PrivateRow>);
    let mut by_shard: HashMap<usize, Batch> = HashMap::new();
    for row in rows {
        by_shard
            .entry(sharding.map.shard_of(&row.room_id))
            .or_default()
            .0
            .push(row);
    }
    for room in rooms {
        by_shard
            .entry(sharding.map.shard_of(&room.room_id))
            .or_default()
            .1
            .push(room);
    }
    for private in privates {
        by_shard
            .entry(sharding.map.shard_of(&private.recipient))
            .or_default()
            .2
            .push(private);
    }
    let parts = by_shard
        .into_iter()
        .map(|(shard, (rows, rooms, privates))| {
            crate::actors::tx::Part::new(shard, move |c| {
                async move {
                    let written: Result<(), diesel::result::Error> =
                        async { append_batch!(c, run_async, rows, rooms, privates) }.await;
                    written.map_err(DbError::from)
                }
                .boxed()
            })
        })
        .collect();
    sharding.execute(parts).await
}
