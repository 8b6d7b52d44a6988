//! The user repository.

use std::collections::HashSet;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{lower, substring_pattern, PageCursor, INSERT_CHUNK, LOOKUP_CHUNK};
use crate::actors::events::Change;
use crate::db::{
    error::is_unique_violation,
    models::{now, UserRow},
    schema::users,
    with_conn, Conn, Database, DbError,
};
use crate::domain::{Age, NewUser, SearchFilter, User, UserId, UserPatch};

/// Largest page [`Database::list_users`] returns.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// One page of users in creation order.
#[derive(Debug, Clone)]
pub struct UserPage {
    /// The users on this page.
    pub users: Vec<User>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<PageCursor>,
    /// How many users match the filter in all.
    pub total_count: i64,
}

/// `lower(name) LIKE p OR lower(email) LIKE p`, written once for every query that filters.
macro_rules! name_or_email_like {
    ($pattern:expr) => {
        lower(users::name)
            .like($pattern)
            .escape('\\')
            .or(lower(users::email).like($pattern).escape('\\'))
    };
}

#[derive(AsChangeset)]
#[diesel(table_name = users)]
struct UserChanges {
    name: Option<String>,
    email: Option<String>,
    age: Option<i32>,
    metadata: Option<String>,
    updated_at: chrono::NaiveDateTime,
}

impl Database {
    /// Stores a new user; a taken email is [`DbError::DuplicateEmail`].
    #[tracing::instrument(skip_all)]
    pub async fn create_user(&self, new: NewUser) -> Result<User, DbError> {
        if let Some(sharding) = &self.sharding {
            let user = sharding.create_user(new).await?;
            self.announce(std::slice::from_ref(&user));
            return Ok(user);
        }
        let user = build_user(new);
        let row = UserRow::from_user(&user);
        let mut conn = self.conn().await?;
        with_conn!(&mut conn, |c| {
            diesel::insert_into(users::table)
                .values(&row)
                .execute(c)
                .await
        })
        .map_err(|e| user_write_error(e, user.email.as_str()))?;
        self.announce(std::slice::from_ref(&user));
        Ok(user)
    }

    /// Fetches one user; unknown ids are [`DbError::NotFound`].
    pub async fn get_user(&self, id: UserId) -> Result<User, DbError> {
        match &self.sharding {
            Some(sharding) => sharding.get_user(id).await,
            None => self.local_get_user(id).await,
        }
    }

    /// [`Database::get_user`] through the user cache, when there is one: a hit costs no
    /// query; a miss reads the database and keeps the user unless it changed meanwhile.
    pub async fn get_user_cached(&self, id: UserId) -> Result<User, DbError> {
        use crate::actors::user_cache::{Fill, Lookup};
        let Some(cache) = &self.cache else {
            return self.get_user(id).await;
        };
        let generation = match cache.send(Lookup(id)).await {
            Ok(Ok(user)) => return Ok(User::clone(&user)),
            Ok(Err(generation)) => Some(generation),
            Err(_) => None, // the cache is gone (shutting down): read through
        };
        let user = self.get_user(id).await?;
        if let Some(generation) = generation {
            cache.do_send(Fill {
                user: std::sync::Arc::new(user.clone()),
                generation,
            });
        }
        Ok(user)
    }

    /// [`Database::get_user`] in this database.
    #[tracing::instrument(skip(self))]
    pub(crate) async fn local_get_user(&self, id: UserId) -> Result<User, DbError> {
        let mut conn = self.conn().await?;
        let row = with_conn!(&mut conn, |c| {
            users::table
                .find(id.to_string())
                .select(UserRow::as_select())
                .first(c)
                .await
                .optional()
        })?;
        row.ok_or(DbError::NotFound { entity: "user" })?.try_into()
    }

    /// Fetches many users at once (unknown ids are skipped), in no particular order.
    /// One query per 500 ids, whatever the count: what batch loaders need.
    pub async fn get_users(&self, ids: &[UserId]) -> Result<Vec<User>, DbError> {
        match &self.sharding {
            Some(sharding) => sharding.get_users(ids).await,
            None => self.local_get_users(ids).await,
        }
    }

    /// [`Database::get_users`] in this database.
    #[tracing::instrument(skip_all, fields(ids = ids.len()))]
    pub(crate) async fn local_get_users(&self, ids: &[UserId]) -> Result<Vec<User>, DbError> {
        let mut users = Vec::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(users);
        }
        let mut conn = self.conn().await?;
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            let rows = with_conn!(&mut conn, |c| {
                users::table
                    .filter(users::id.eq_any(&keys))
                    .select(UserRow::as_select())
                    .load(c)
                    .await
            })?;
            for row in rows {
                users.push(row.try_into()?);
            }
        }
        Ok(users)
    }

    /// Applies a partial update and returns the stored result. An empty patch changes
    /// nothing (not even `updated_at`).
    pub async fn update_user(&self, id: UserId, patch: UserPatch) -> Result<User, DbError> {
        if patch.is_empty() {
            return self.get_user(id).await;
        }
        let user = match &self.sharding {
            Some(sharding) => sharding.update_user(id, patch).await,
            None => self.local_update_user(id, patch).await,
        }?;
        self.announce_change(Change::Updated, std::slice::from_ref(&user))
            .await;
        Ok(user)
    }

    /// [`Database::update_user`] in this database (a non-empty patch).
    #[tracing::instrument(skip(self, patch))]
    pub(crate) async fn local_update_user(
        &self,
        id: UserId,
        patch: UserPatch,
    ) -> Result<User, DbError> {
        let email = patch.email.as_ref().map(|e| e.as_str().to_owned());
        let changes = UserChanges {
            name: patch.name.map(|n| n.as_str().to_owned()),
            email: email.clone(),
            age: patch.age.map(Age::get),
            metadata: patch
                .metadata
                .map(|m| serde_json::to_string(&m).unwrap_or_else(|_| "{}".into())),
            updated_at: now().naive_utc(),
        };
        let mut conn = self.conn().await?;
        let row = with_conn!(&mut conn, |c| {
            diesel::update(users::table.find(id.to_string()))
                .set(&changes)
                .returning(UserRow::as_returning())
                .get_result(c)
                .await
                .optional()
        })
        .map_err(|e| user_write_error(e, email.as_deref().unwrap_or_default()))?;
        row.ok_or(DbError::NotFound { entity: "user" })?.try_into()
    }

    /// Lists users whose name or email contains `filter` (case-insensitively), in creation
    /// order, `page_size` at a time (clamped to 1..=[`MAX_PAGE_SIZE`]), starting after
    /// `after` when given.
    pub async fn list_users(
        &self,
        filter: &SearchFilter,
        page_size: u32,
        after: Option<&PageCursor>,
    ) -> Result<UserPage, DbError> {
        match &self.sharding {
            Some(sharding) => {
                check_cursor(filter, after)?;
                sharding.list_users(filter, page_size, after).await
            }
            None => self.local_list_users(filter, page_size, after).await,
        }
    }

    /// [`Database::list_users`] in this database.
    #[tracing::instrument(skip(self, after))]
    pub(crate) async fn local_list_users(
        &self,
        filter: &SearchFilter,
        page_size: u32,
        after: Option<&PageCursor>,
    ) -> Result<UserPage, DbError> {
        check_cursor(filter, after)?;
        let limit = i64::from(page_size.clamp(1, MAX_PAGE_SIZE));
        let pattern = substring_pattern(filter.as_str());
        let mut conn = self.conn().await?;
        let (mut rows, total_count) = with_conn!(&mut conn, |c| {
            let mut page = users::table
                .select(UserRow::as_select())
                .order((users::created_at.asc(), users::id.asc()))
                .limit(limit + 1)
                .into_boxed();
            let mut count = users::table.count().into_boxed();
            if let Some(pattern) = &pattern {
                page = page.filter(name_or_email_like!(pattern));
                count = count.filter(name_or_email_like!(pattern));
            }
            if let Some(after) = after {
                page = page.filter(
                    users::created_at.gt(after.created_at).or(users::created_at
                        .eq(after.created_at)
                        .and(users::id.gt(&after.id))),
                );
            }
            let rows: Vec<UserRow> = page.load(c).await?;
            let total: i64 = count.get_result(c).await?;
            Ok::<_, diesel::result::Error>((rows, total))
        })?;

        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next = match rows.last() {
            Some(last) if has_more => Some(PageCursor {
                created_at: last.created_at,
                id: last.id.clone(),
                filter: filter.as_str().to_owned(),
            }),
            _ => None,
        };
        let users = rows
            .into_iter()
            .map(User::try_from)
            .collect::<Result<_, _>>()?;
        Ok(UserPage {
            users,
            next,
            total_count,
        })
    }

    /// Users whose name or email contains `filter` (case-insensitively), in creation
    /// order, skipping `offset` and returning at most `limit` (for GraphQL's
    /// `users(limit, offset, filter)`; gRPC pages with keyset cursors instead).
    pub async fn users_at_offset(
        &self,
        filter: &SearchFilter,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<User>, DbError> {
        match &self.sharding {
            Some(sharding) => sharding.users_at_offset(filter, limit, offset).await,
            None => self.local_users_at_offset(filter, limit, offset).await,
        }
    }

    /// [`Database::users_at_offset`] in this database.
    #[tracing::instrument(skip(self))]
    pub(crate) async fn local_users_at_offset(
        &self,
        filter: &SearchFilter,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<User>, DbError> {
        let pattern = substring_pattern(filter.as_str());
        let mut conn = self.conn().await?;
        let rows: Vec<UserRow> = with_conn!(&mut conn, |c| {
            let mut page = users::table
                .select(UserRow::as_select())
                .order((users::created_at.asc(), users::id.asc()))
                .limit(i64::from(limit))
                .offset(i64::from(offset))
                .into_boxed();
            if let Some(pattern) = &pattern {
                page = page.filter(name_or_email_like!(pattern));
            }
            page.load(c).await
        })?;
        rows.into_iter().map(User::try_from).collect()
    }

    /// Stores all of `new_users` in one transaction, or none of them: a taken or repeated
    /// email anywhere rejects the whole batch with [`DbError::DuplicateEmail`].
    #[tracing::instrument(skip_all, fields(count = new_users.len()))]
    pub async fn bulk_create_users(&self, new_users: Vec<NewUser>) -> Result<Vec<User>, DbError> {
        let mut seen = HashSet::with_capacity(new_users.len());
        if let Some(repeated) = new_users.iter().find(|u| !seen.insert(u.email.as_str())) {
            return Err(DbError::DuplicateEmail {
                email: repeated.email.as_str().to_owned(),
            });
        }
        let users: Vec<User> = new_users.into_iter().map(build_user).collect();
        if let Some(sharding) = &self.sharding {
            let users = sharding.bulk_create_users(users).await?;
            self.announce(&users);
            return Ok(users);
        }
        let rows: Vec<UserRow> = users.iter().map(UserRow::from_user).collect();
        let mut conn = self.conn().await?;
        // diesel-async runs multi-row INSERTs on PostgreSQL only; SQLite runs the same
        // statement on its sync connection inside one blocking task, in an IMMEDIATE
        // transaction so the write lock is taken (or waited for) up front.
        let result = match &mut conn {
            Conn::Postgres(c) => {
                let rows = &rows;
                c.transaction::<_, diesel::result::Error, _>(async |c| {
                    for chunk in rows.chunks(INSERT_CHUNK) {
                        insert_users(chunk).execute(c).await?;
                    }
                    Ok(())
                })
                .await
            }
            Conn::Sqlite(c) => {
                c.spawn_blocking(move |c| {
                    c.immediate_transaction(|c| {
                        for chunk in rows.chunks(INSERT_CHUNK) {
                            diesel::RunQueryDsl::execute(insert_users(chunk), c)?;
                        }
                        Ok(())
                    })
                })
                .await
            }
        };
        match result {
            Ok(()) => {
                self.announce(&users);
                Ok(users)
            }
            Err(e) if is_unique_violation(&e) => {
                let emails: Vec<&str> = users.iter().map(|u| u.email.as_str()).collect();
                let taken = self.first_taken_email(&emails).await?;
                Err(DbError::DuplicateEmail {
                    email: taken.unwrap_or_default(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The first of `emails` that some stored user already has.
    async fn first_taken_email(&self, emails: &[&str]) -> Result<Option<String>, DbError> {
        let mut conn = self.conn().await?;
        for chunk in emails.chunks(LOOKUP_CHUNK) {
            let taken = with_conn!(&mut conn, |c| {
                users::table
                    .filter(users::email.eq_any(chunk))
                    .select(users::email)
                    .first::<String>(c)
                    .await
                    .optional()
            })?;
            if taken.is_some() {
                return Ok(taken);
            }
        }
        Ok(None)
    }
}

/// A page token must have been issued for the same filter.
fn check_cursor(filter: &SearchFilter, after: Option<&PageCursor>) -> Result<(), DbError> {
    match after {
        Some(cursor) if cursor.filter != filter.as_str() => Err(DbError::InvalidCursor(
            "it was issued for a different filter",
        )),
        _ => Ok(()),
    }
}

/// The multi-row INSERT for one chunk of users, shared by both backends.
fn insert_users(
    rows: &[UserRow],
) -> diesel::dsl::Values<diesel::dsl::insert_into<users::table>, &[UserRow]> {
    diesel::insert_into(users::table).values(rows)
}

pub(crate) fn build_user(new: NewUser) -> User {
    let created_at = now();
    User {
        id: UserId::generate(),
        name: new.name,
        email: new.email,
        age: new.age,
        metadata: new.metadata,
        created_at,
        updated_at: created_at,
    }
}

fn user_write_error(error: diesel::result::Error, email: &str) -> DbError {
    if is_unique_violation(&error) {
        DbError::DuplicateEmail {
            email: email.to_owned(),
        }
    } else {
        error.into()
    }
}
