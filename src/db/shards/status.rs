//! What `switchboard shards status` reports about each shard.

use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use serde::Serialize;

use super::ShardMap;
use crate::{
    config::DatabaseSettings,
    db::{Database, DbError},
};

/// One shard, as `shards status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    /// Its index in the shard map.
    pub index: usize,
    /// Where it is (`host:port/dbname`, never a password).
    pub location: String,
    /// Whether it answered.
    pub reachable: bool,
    /// What went wrong, when it did not.
    pub error: Option<String>,
    /// Slots it owns.
    pub slots: usize,
    /// Rows it holds, by table.
    pub users: i64,
    /// See `users`.
    pub posts: i64,
    /// See `users`.
    pub email_index: i64,
    /// See `users`.
    pub messages: i64,
    /// This deployment's prepared (in-doubt or committing) transactions.
    pub prepared: i64,
}

#[derive(diesel::QueryableByName)]
struct Counts {
    #[diesel(sql_type = BigInt)]
    users: i64,
    #[diesel(sql_type = BigInt)]
    posts: i64,
    #[diesel(sql_type = BigInt)]
    email_index: i64,
    #[diesel(sql_type = BigInt)]
    messages: i64,
    #[diesel(sql_type = BigInt)]
    prepared: i64,
}

/// Reads the shard map from the primary and counts what each shard holds.
pub async fn shard_status(settings: &DatabaseSettings) -> Result<Vec<ShardStatus>, DbError> {
    let mut primary_settings = settings.clone();
    primary_settings.shards = Vec::new();
    let primary = Database::connect(&primary_settings).await?;
    let map = ShardMap::load(&primary).await?;
    let slots = map.as_ref().map(ShardMap::slot_counts).unwrap_or_default();
    let prefix = map
        .as_ref()
        .map(|m| format!("sb_{}_", m.deployment))
        .unwrap_or_else(|| "sb_".into());
    let mut report = Vec::new();
    for (index, url) in settings.shards.iter().enumerate() {
        let mut status = ShardStatus {
            index,
            location: url.location(),
            reachable: false,
            error: None,
            slots: slots.get(index).copied().unwrap_or(0),
            users: 0,
            posts: 0,
            email_index: 0,
            messages: 0,
            prepared: 0,
        };
        let mut shard_settings = primary_settings.clone();
        shard_settings.url = url.clone();
        shard_settings.min_idle = None;
        let counted = async {
            let shard = Database::connect(&shard_settings).await?;
            let mut conn = shard.pg_conn().await?;
            let counts: Counts = diesel::sql_query(
                "SELECT (SELECT count(*) FROM users) AS users, \
                        (SELECT count(*) FROM posts) AS posts, \
                        (SELECT count(*) FROM user_emails) AS email_index, \
                        (SELECT count(*) FROM messages) AS messages, \
                        (SELECT count(*) FROM pg_prepared_xacts \
                          WHERE database = current_database() \
                            AND left(gid, length($1)) = $1) AS prepared",
            )
            .bind::<Text, _>(&prefix)
            .get_result(&mut *conn)
            .await?;
            Ok::<_, DbError>(counts)
        }
        .await;
        match counted {
            Ok(counts) => {
                status.reachable = true;
                status.users = counts.users;
                status.posts = counts.posts;
                status.email_index = counts.email_index;
                status.messages = counts.messages;
                status.prepared = counts.prepared;
            }
            Err(error) => status.error = Some(error.to_string()),
        }
        report.push(status);
    }
    Ok(report)
}
