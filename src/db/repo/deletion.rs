//! What deleting a user needs from the data layer, each piece idempotent so a saga can
//! run it again after a crash: the deletion mark (in the primary), the user row with its
//! email index row (the point of no return), and then — in batches, so none is one
//! huge transaction — the user's posts, room messages and private messages.
//!
//! Room messages are **redacted**, not deleted: sender, name, content and metadata are
//! cleared and the row stays, so every room's offsets stay contiguous and a client
//! resuming with `since_offset` sees no gap it would take for lost messages. Private
//! messages sent by or to the user are deleted.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::{
    models::now,
    schema::{messages, posts, private_messages, user_deletions, users},
    with_conn, Database, DbError,
};
use crate::domain::UserId;

/// The sender of a redacted room message.
pub const REDACTED_SENDER: &str = "deleted-user";

impl Database {
    /// Where `id`'s row and posts live: its shard, or this database.
    pub(crate) fn user_db(&self, id: &UserId) -> &Database {
        match &self.sharding {
            Some(sharding) => &sharding.shards[sharding.map.shard_of(&id.to_string())],
            None => self,
        }
    }

    /// Marks `user` as being deleted by `saga` (in this database, the primary). Marking
    /// again for the same saga is a no-op; a mark by another saga is kept.
    pub async fn mark_deleting(&self, user: &str, saga: &str) -> Result<(), DbError> {
        let mut conn = self.conn().await?;
        let row = (
            user_deletions::user_id.eq(user),
            user_deletions::saga_id.eq(saga),
            user_deletions::created_at.eq(now().naive_utc()),
        );
        with_conn!(&mut conn, |c| {
            diesel::insert_into(user_deletions::table)
                .values(row)
                .on_conflict_do_nothing()
                .execute(c)
                .await
        })?;
        Ok(())
    }

    /// Removes `saga`'s mark on `user` (a compensated deletion).
    pub async fn unmark_deleting(&self, user: &str, saga: &str) -> Result<(), DbError> {
        let mut conn = self.conn().await?;
        with_conn!(&mut conn, |c| {
            diesel::delete(
                user_deletions::table
                    .find(user)
                    .filter(user_deletions::saga_id.eq(saga)),
            )
            .execute(c)
            .await
        })?;
        Ok(())
    }

    /// Every marked user: being deleted or deleted.
    pub async fn deletion_marks(&self) -> Result<Vec<String>, DbError> {
        let mut conn = self.conn().await?;
        Ok(with_conn!(&mut conn, |c| {
            user_deletions::table
                .select(user_deletions::user_id)
                .load(c)
                .await
        })?)
    }

    /// Removes the user row and its email index row together (one distributed transaction
    /// when they are on different shards); the email is free once this returns. Removing
    /// a user that is already gone is `Ok`.
    pub async fn remove_user(&self, id: UserId, email: &str) -> Result<(), DbError> {
        if let Some(sharding) = &self.sharding {
            return sharding.remove_user(id, email).await;
        }
        let mut conn = self.conn().await?;
        with_conn!(&mut conn, |c| {
            diesel::delete(users::table.find(id.to_string()))
                .execute(c)
                .await
        })?;
        Ok(())
    }

    /// Deletes up to `batch` of `author`'s posts; returns how many.
    pub async fn delete_posts_batch(&self, author: UserId, batch: i64) -> Result<u64, DbError> {
        let db = self.user_db(&author);
        let key = author.to_string();
        let mut conn = db.conn().await.map_err(|e| db.scoped(e))?;
        let deleted = with_conn!(&mut conn, |c| {
            let ids: Vec<String> = posts::table
                .filter(posts::author_id.eq(&key))
                .select(posts::id)
                .limit(batch)
                .load(c)
                .await?;
            // (No early `return` here: the macro body is not a closure.)
            match ids.is_empty() {
                true => Ok(0),
                false => {
                    diesel::delete(posts::table.filter(posts::id.eq_any(&ids)))
                        .execute(c)
                        .await
                }
            }
        })
        .map_err(|e| db.scoped(e.into()))?;
        Ok(deleted as u64)
    }

    /// Redacts up to `batch` room messages `sender` sent, in every database holding
    /// history; returns how many.
    pub async fn redact_messages_batch(&self, sender: &str, batch: i64) -> Result<u64, DbError> {
        let mut total = 0;
        for db in self.data_dbs() {
            let mut conn = db.conn().await.map_err(|e| db.scoped(e))?;
            // Two statements, no transaction: the update re-checks the sender, so a
            // row redacted meanwhile is not counted twice (and on SQLite a read that
            // turns into a write inside one transaction fails at once when another
            // writer is busy, instead of waiting).
            let redacted = with_conn!(&mut conn, |c| {
                let ids: Vec<String> = messages::table
                    .filter(messages::sender.eq(sender))
                    .select(messages::id)
                    .limit(batch)
                    .load(c)
                    .await?;
                match ids.is_empty() {
                    true => Ok(0),
                    false => {
                        diesel::update(
                            messages::table
                                .filter(messages::sender.eq(sender))
                                .filter(messages::id.eq_any(&ids)),
                        )
                        .set((
                            messages::sender.eq(REDACTED_SENDER),
                            messages::sender_name.eq(None::<String>),
                            messages::content.eq(""),
                            messages::metadata.eq(None::<String>),
                        ))
                        .execute(c)
                        .await
                    }
                }
            })
            .map_err(|e| db.scoped(e.into()))?;
            total += redacted as u64;
        }
        Ok(total)
    }

    /// Deletes up to `batch` private messages sent by or to `user`, in every database
    /// holding history; returns how many.
    pub async fn delete_private_batch(&self, user: &str, batch: i64) -> Result<u64, DbError> {
        let mut total = 0;
        for db in self.data_dbs() {
            let mut conn = db.conn().await.map_err(|e| db.scoped(e))?;
            let deleted = with_conn!(&mut conn, |c| {
                let ids: Vec<String> = private_messages::table
                    .filter(
                        private_messages::sender
                            .eq(user)
                            .or(private_messages::recipient.eq(user)),
                    )
                    .select(private_messages::id)
                    .limit(batch)
                    .load(c)
                    .await?;
                // (No early `return` here: the macro body is not a closure, and a
                // `return` would skip the other shards.)
                match ids.is_empty() {
                    true => Ok(0),
                    false => {
                        diesel::delete(
                            private_messages::table.filter(private_messages::id.eq_any(&ids)),
                        )
                        .execute(c)
                        .await
                    }
                }
            })
            .map_err(|e| db.scoped(e.into()))?;
            total += deleted as u64;
        }
        Ok(total)
    }
}
