//! The data layer over shards: reads and writes routed by key, cross-shard writes through
//! the [`TxCoordinator`], reads that need every shard fanned out and merged.
//!
//! Users and their posts live on the shard of the user id; the email index (normalised
//! email → user id) on the shard of the email, which keeps emails unique across shards.

use std::collections::{HashMap, HashSet};

use actix::Addr;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::{future::join_all, FutureExt};

use super::ShardMap;
use crate::{
    actors::tx::{Execute, Part, TxCoordinator},
    db::{
        error::is_unique_violation,
        models::{now, UserRow},
        repo::{build_user, UserPage, MAX_PAGE_SIZE},
        schema::{user_emails, users},
        Database, DbError, PageCursor,
    },
    domain::{Age, NewUser, Post, PostId, SearchFilter, User, UserId, UserPatch},
};

/// The shards, their map and the coordinator, as the primary's [`Database`] holds them.
pub struct Sharding {
    /// Which shard owns which key.
    pub map: ShardMap,
    /// One pool per shard, by index.
    pub shards: Vec<Database>,
    /// Runs writes that span shards.
    pub coordinator: Addr<TxCoordinator>,
}

impl std::fmt::Debug for Sharding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharding")
            .field("shards", &self.map.locations)
            .finish_non_exhaustive()
    }
}

fn email_taken(email: &str) -> DbError {
    DbError::DuplicateEmail {
        email: email.to_owned(),
    }
}

/// Inserts email index rows; a taken one is [`DbError::DuplicateEmail`] (with an empty
/// address when several were inserted at once: the caller finds which).
async fn insert_emails(
    c: &mut diesel_async::AsyncPgConnection,
    rows: &[(String, String)],
) -> Result<(), DbError> {
    for chunk in rows.chunks(crate::db::repo::INSERT_CHUNK) {
        let values: Vec<_> = chunk
            .iter()
            .map(|(email, id)| (user_emails::email.eq(email), user_emails::user_id.eq(id)))
            .collect();
        diesel::insert_into(user_emails::table)
            .values(&values)
            .execute(c)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    email_taken(if rows.len() == 1 { &rows[0].0 } else { "" })
                } else {
                    e.into()
                }
            })?;
    }
    Ok(())
}

impl Sharding {
    fn user_shard(&self, id: &UserId) -> usize {
        self.map.shard_of(&id.to_string())
    }

    fn email_shard(&self, email: &str) -> usize {
        self.map.shard_of(email)
    }

    /// Runs `parts` through the coordinator.
    pub(crate) async fn execute(&self, parts: Vec<Part>) -> Result<(), DbError> {
        self.coordinator
            .send(Execute { parts })
            .await
            .map_err(|e| DbError::Unavailable(format!("transaction coordinator: {e}")))?
    }

    /// See [`Database::create_user`].
    pub(crate) async fn create_user(&self, new: NewUser) -> Result<User, DbError> {
        let user = build_user(new);
        let row = UserRow::from_user(&user);
        let email = user.email.as_str().to_owned();
        let index = vec![(email.clone(), row.id.clone())];
        let parts = vec![
            Part::new(self.user_shard(&user.id), move |c| {
                async move {
                    diesel::insert_into(users::table)
                        .values(&row)
                        .execute(c)
                        .await
                        .map_err(|e| {
                            if is_unique_violation(&e) {
                                email_taken(&row.email)
                            } else {
                                e.into()
                            }
                        })?;
                    Ok(())
                }
                .boxed()
            }),
            Part::first(self.email_shard(&email), move |c| {
                async move { insert_emails(c, &index).await }.boxed()
            }),
        ];
        self.execute(parts).await?;
        Ok(user)
    }

    /// See [`Database::get_user`].
    pub(crate) async fn get_user(&self, id: UserId) -> Result<User, DbError> {
        {
            let db = &self.shards[self.user_shard(&id)];
            db.local_get_user(id).await.map_err(|e| db.scoped(e))
        }
    }

    /// See [`Database::get_users`].
    pub(crate) async fn get_users(&self, ids: &[UserId]) -> Result<Vec<User>, DbError> {
        let mut by_shard: HashMap<usize, Vec<UserId>> = HashMap::new();
        for id in ids {
            by_shard.entry(self.user_shard(id)).or_default().push(*id);
        }
        let found = join_all(by_shard.iter().map(|(shard, ids)| {
            let db = &self.shards[*shard];
            async move { db.local_get_users(ids).await.map_err(|e| db.scoped(e)) }
        }))
        .await;
        let mut users = Vec::with_capacity(ids.len());
        for part in found {
            users.extend(part?);
        }
        Ok(users)
    }

    /// See [`Database::update_user`]. A changed email moves its index row, atomically
    /// with the user row, across up to three shards.
    pub(crate) async fn update_user(&self, id: UserId, patch: UserPatch) -> Result<User, DbError> {
        let shard = self.user_shard(&id);
        let Some(new_email) = patch.email.as_ref().map(|e| e.as_str().to_owned()) else {
            return {
                let db = &self.shards[shard];
                db.local_update_user(id, patch)
                    .await
                    .map_err(|e| db.scoped(e))
            };
        };
        let current = {
            let db = &self.shards[shard];
            db.local_get_user(id).await.map_err(|e| db.scoped(e))
        }?;
        let old_email = current.email.as_str().to_owned();
        if old_email == new_email {
            return {
                let db = &self.shards[shard];
                db.local_update_user(id, patch)
                    .await
                    .map_err(|e| db.scoped(e))
            };
        }
        let key = id.to_string();
        let changes = (
            patch
                .name
                .as_ref()
                .map(|n| users::name.eq(n.as_str().to_owned())),
            users::email.eq(new_email.clone()),
            patch.age.map(|a| users::age.eq(Age::get(a))),
            patch.metadata.as_ref().map(|m| {
                users::metadata.eq(serde_json::to_string(m).unwrap_or_else(|_| "{}".into()))
            }),
            users::updated_at.eq(now().naive_utc()),
        );
        let (user_key, old_key, index_key) = (key.clone(), old_email.clone(), key.clone());
        let index = vec![(new_email.clone(), key)];
        let new_email_for_user = new_email.clone();
        let parts = vec![
            Part::new(shard, move |c| {
                async move {
                    // Only if nobody changed the email meanwhile.
                    let updated = diesel::update(
                        users::table
                            .find(&user_key)
                            .filter(users::email.eq(&old_email)),
                    )
                    .set(changes)
                    .execute(c)
                    .await
                    .map_err(|e| {
                        if is_unique_violation(&e) {
                            email_taken(&new_email_for_user)
                        } else {
                            e.into()
                        }
                    })?;
                    if updated == 0 {
                        return Err(DbError::NotFound { entity: "user" });
                    }
                    Ok(())
                }
                .boxed()
            }),
            Part::new(self.email_shard(&old_key), move |c| {
                async move {
                    diesel::delete(
                        user_emails::table
                            .find(&old_key)
                            .filter(user_emails::user_id.eq(&index_key)),
                    )
                    .execute(c)
                    .await?;
                    Ok(())
                }
                .boxed()
            }),
            Part::first(self.email_shard(&new_email), move |c| {
                async move { insert_emails(c, &index).await }.boxed()
            }),
        ];
        self.execute(parts).await?;
        {
            let db = &self.shards[shard];
            db.local_get_user(id).await.map_err(|e| db.scoped(e))
        }
    }

    /// See [`Database::remove_user`]: the user row and the email index row go together;
    /// either may already be gone.
    pub(crate) async fn remove_user(&self, id: UserId, email: &str) -> Result<(), DbError> {
        let (key, index_key, index_email) = (id.to_string(), id.to_string(), email.to_owned());
        let parts = vec![
            Part::new(self.user_shard(&id), move |c| {
                async move {
                    diesel::delete(users::table.find(&key)).execute(c).await?;
                    Ok(())
                }
                .boxed()
            }),
            Part::new(self.email_shard(email), move |c| {
                async move {
                    diesel::delete(
                        user_emails::table
                            .find(&index_email)
                            .filter(user_emails::user_id.eq(&index_key)),
                    )
                    .execute(c)
                    .await?;
                    Ok(())
                }
                .boxed()
            }),
        ];
        self.execute(parts).await
    }

    /// See [`Database::list_users`]: the same keyset query on every shard, merged.
    /// `(created_at, id)` is a total order, so one cursor serves every shard.
    pub(crate) async fn list_users(
        &self,
        filter: &SearchFilter,
        page_size: u32,
        after: Option<&PageCursor>,
    ) -> Result<UserPage, DbError> {
        let size = page_size.clamp(1, MAX_PAGE_SIZE) as usize;
        let pages = join_all(self.shards.iter().map(|db| async move {
            db.local_list_users(filter, page_size, after)
                .await
                .map_err(|e| db.scoped(e))
        }))
        .await;
        let mut users = Vec::new();
        let mut total_count = 0;
        let mut more_somewhere = false;
        for page in pages {
            let page = page?;
            total_count += page.total_count;
            more_somewhere |= page.next.is_some();
            users.extend(page.users);
        }
        users.sort_by(|a, b| {
            (a.created_at, a.id.to_string()).cmp(&(b.created_at, b.id.to_string()))
        });
        let has_more = more_somewhere || users.len() > size;
        users.truncate(size);
        let next = match users.last() {
            Some(last) if has_more => Some(PageCursor {
                created_at: last.created_at.naive_utc(),
                id: last.id.to_string(),
                filter: filter.as_str().to_owned(),
            }),
            _ => None,
        };
        Ok(UserPage {
            users,
            next,
            total_count,
        })
    }

    /// See [`Database::users_at_offset`]: each shard's first `offset + limit`, merged.
    pub(crate) async fn users_at_offset(
        &self,
        filter: &SearchFilter,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<User>, DbError> {
        let reach = limit.saturating_add(offset);
        let parts = join_all(self.shards.iter().map(|db| async move {
            db.local_users_at_offset(filter, reach, 0)
                .await
                .map_err(|e| db.scoped(e))
        }))
        .await;
        let mut users = Vec::new();
        for part in parts {
            users.extend(part?);
        }
        users.sort_by(|a, b| {
            (a.created_at, a.id.to_string()).cmp(&(b.created_at, b.id.to_string()))
        });
        Ok(users
            .into_iter()
            .skip(offset as usize)
            .take(limit as usize)
            .collect())
    }

    /// See [`Database::bulk_create_users`]: every user row and email index row in one
    /// distributed transaction.
    pub(crate) async fn bulk_create_users(&self, users: Vec<User>) -> Result<Vec<User>, DbError> {
        let mut rows: HashMap<usize, Vec<UserRow>> = HashMap::new();
        let mut index: HashMap<usize, Vec<(String, String)>> = HashMap::new();
        for user in &users {
            rows.entry(self.user_shard(&user.id))
                .or_default()
                .push(UserRow::from_user(user));
            let email = user.email.as_str().to_owned();
            index
                .entry(self.email_shard(&email))
                .or_default()
                .push((email, user.id.to_string()));
        }
        let mut parts = Vec::new();
        for (shard, rows) in rows {
            parts.push(Part::new(shard, move |c| {
                async move {
                    for chunk in rows.chunks(crate::db::repo::INSERT_CHUNK) {
                        diesel::insert_into(users::table)
                            .values(chunk)
                            .execute(c)
                            .await
                            .map_err(|e| {
                                if is_unique_violation(&e) {
                                    email_taken("")
                                } else {
                                    DbError::from(e)
                                }
                            })?;
                    }
                    Ok(())
                }
                .boxed()
            }));
        }
        for (shard, index) in index {
            parts.push(Part::first(shard, move |c| {
                async move { insert_emails(c, &index).await }.boxed()
            }));
        }
        match self.execute(parts).await {
            Ok(()) => Ok(users),
            Err(DbError::DuplicateEmail { email }) if email.is_empty() => {
                let emails: Vec<&str> = users.iter().map(|u| u.email.as_str()).collect();
                let taken = self.first_taken_email(&emails).await?;
                Err(DbError::DuplicateEmail {
                    email: taken.unwrap_or_default(),
                })
            }
            Err(error) => Err(error),
        }
    }

    /// The first of `emails` that the email index holds.
    async fn first_taken_email(&self, emails: &[&str]) -> Result<Option<String>, DbError> {
        let mut by_shard: HashMap<usize, Vec<String>> = HashMap::new();
        for email in emails {
            by_shard
                .entry(self.email_shard(email))
                .or_default()
                .push((*email).to_owned());
        }
        let found = join_all(by_shard.into_iter().map(|(shard, emails)| {
            let db = self.shards[shard].clone();
            async move {
                let mut conn = db.pg_conn().await?;
                let taken: Vec<String> = user_emails::table
                    .filter(user_emails::email.eq_any(&emails))
                    .select(user_emails::email)
                    .load(&mut *conn)
                    .await?;
                Ok::<_, DbError>(taken)
            }
        }))
        .await;
        let mut taken = HashSet::new();
        for part in found {
            taken.extend(part?);
        }
        Ok(emails
            .iter()
            .find(|e| taken.contains(**e))
            .map(|e| (*e).to_owned()))
    }

    /// See [`Database::create_post`]: on the author's shard, where the author's row is.
    pub(crate) async fn create_post(&self, new: crate::domain::NewPost) -> Result<Post, DbError> {
        {
            let db = &self.shards[self.user_shard(&new.author_id)];
            db.local_create_post(new).await.map_err(|e| db.scoped(e))
        }
    }

    /// See [`Database::get_post`]: a post id does not name its shard, so every shard is
    /// asked.
    pub(crate) async fn get_post(&self, id: PostId) -> Result<Post, DbError> {
        let found = join_all(
            self.shards
                .iter()
                .map(|db| async move { db.local_get_post(id).await.map_err(|e| db.scoped(e)) }),
        )
        .await;
        let mut unavailable = None;
        for result in found {
            match result {
                Ok(post) => return Ok(post),
                Err(DbError::NotFound { .. }) => {}
                Err(error) => unavailable = Some(error),
            }
        }
        Err(unavailable.unwrap_or(DbError::NotFound { entity: "post" }))
    }

    /// See [`Database::posts_by_authors`].
    pub(crate) async fn posts_by_authors(
        &self,
        authors: &[UserId],
    ) -> Result<HashMap<UserId, Vec<Post>>, DbError> {
        let mut by_shard: HashMap<usize, Vec<UserId>> = HashMap::new();
        for id in authors {
            by_shard.entry(self.user_shard(id)).or_default().push(*id);
        }
        let found = join_all(by_shard.iter().map(|(shard, ids)| {
            let db = &self.shards[*shard];
            async move {
                db.local_posts_by_authors(ids)
                    .await
                    .map_err(|e| db.scoped(e))
            }
        }))
        .await;
        let mut posts = HashMap::new();
        for part in found {
            posts.extend(part?);
        }
        Ok(posts)
    }
}
