//! Room offset reservations: ranges of offsets claimed in the database *before* any of
//! them is handed out, so a crash can skip offsets but never reuse one (as sequence caches
//! do in PostgreSQL and Oracle). `rooms.reserved_offset` is the highest offset that may
//! have been handed out; a clean stop hands back the unused part of a range.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::{models::now, schema::rooms, with_conn, Database, DbError};
use crate::domain::RoomId;

/// Offsets `after+1..=end` of a room, reserved for this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The highest offset reserved before this range (numbering continues after it).
    pub after: u64,
    /// The last offset of the range.
    pub end: u64,
}

fn column(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

impl Database {
    /// Reserves the next `count` offsets of `room` (creating its row on first use) in one
    /// statement, and returns the range.
    #[tracing::instrument(skip(self))]
    pub async fn reserve_offsets(&self, room: &RoomId, count: u64) -> Result<Reservation, DbError> {
        let count = column(count);
        let mut conn = self.room_db(room).conn().await?;
        let end: i64 = with_conn!(&mut conn, |c| {
            diesel::insert_into(rooms::table)
                .values((
                    rooms::room_id.eq(room.as_str()),
                    rooms::last_offset.eq(0),
                    rooms::reserved_offset.eq(count),
                    rooms::updated_at.eq(now().naive_utc()),
                ))
                .on_conflict(rooms::room_id)
                .do_update()
                .set((
                    rooms::reserved_offset.eq(rooms::reserved_offset + count),
                    rooms::updated_at.eq(now().naive_utc()),
                ))
                .returning(rooms::reserved_offset)
                .get_result(c)
                .await
        })?;
        let end = u64::try_from(end)
            .map_err(|_| DbError::Corrupt(format!("room {room}: negative reserved offset")))?;
        Ok(Reservation {
            after: end.saturating_sub(count as u64),
            end,
        })
    }

    /// The highest offset `room` ever reserved (0 for a room never seen): where a
    /// cluster's numbering of the room starts when Redis has no state for it.
    pub async fn room_offset_floor(&self, room: &RoomId) -> Result<u64, DbError> {
        let mut conn = self.room_db(room).conn().await?;
        let reserved: Option<i64> = with_conn!(&mut conn, |c| {
            rooms::table
                .find(room.as_str())
                .select(rooms::reserved_offset)
                .first(c)
                .await
                .optional()
        })?;
        Ok(reserved.map_or(0, |r| u64::try_from(r).unwrap_or(0)))
    }

    /// Hands back the unused end of a reservation: `room`'s numbering will continue after
    /// `used`. Only if nobody reserved more since (`reserved_offset` still `end`); a room
    /// whose row this server created and never used is deleted, so rooms that never saw a
    /// message leave nothing behind.
    #[tracing::instrument(skip(self))]
    pub async fn return_offsets(&self, room: &RoomId, used: u64, end: u64) -> Result<(), DbError> {
        let mut conn = self.room_db(room).conn().await?;
        let ours = rooms::room_id
            .eq(room.as_str())
            .and(rooms::reserved_offset.eq(column(end)));
        let changed = with_conn!(&mut conn, |c| {
            if used == 0 {
                diesel::delete(rooms::table.filter(ours.and(rooms::last_offset.eq(0))))
                    .execute(c)
                    .await
            } else {
                diesel::update(rooms::table.filter(ours))
                    .set(rooms::reserved_offset.eq(column(used)))
                    .execute(c)
                    .await
            }
        })?;
        tracing::debug!(%room, used, end, changed, "offsets handed back");
        Ok(())
    }

    /// How many rooms have a row (numbering that outlives their members).
    pub async fn numbered_rooms(&self) -> Result<u64, DbError> {
        let mut total = 0;
        for db in self.data_dbs() {
            let mut conn = db.conn().await?;
            let count: i64 = with_conn!(&mut conn, |c| rooms::table.count().get_result(c).await)?;
            total += count as u64;
        }
        Ok(total)
    }

    /// `room`'s reserved offset, if it has a row.
    pub async fn reserved_offset(&self, room: &RoomId) -> Result<Option<u64>, DbError> {
        let mut conn = self.room_db(room).conn().await?;
        let reserved: Option<i64> = with_conn!(&mut conn, |c| {
            rooms::table
                .filter(rooms::room_id.eq(room.as_str()))
                .select(rooms::reserved_offset)
                .first(c)
                .await
                .optional()
        })?;
        Ok(reserved.and_then(|r| u64::try_from(r).ok()))
    }
}
