//! The post repository.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::LOOKUP_CHUNK;
use crate::db::{
    models::{now, PostRow},
    schema::{posts, users},
    with_conn, Conn, Database, DbError,
};
use crate::domain::{NewPost, Post, PostId, UserId};

impl Database {
    /// Stores a new post; an author that does not exist is [`DbError::UnknownAuthor`].
    pub async fn create_post(&self, new: NewPost) -> Result<Post, DbError> {
        let post = match &self.sharding {
            Some(sharding) => sharding.create_post(new).await?,
            None => self.local_create_post(new).await?,
        };
        self.announce_post(&post);
        Ok(post)
    }

    /// [`Database::create_post`] in this database, unannounced.
    #[tracing::instrument(skip_all, fields(author = %new.author_id))]
    pub(crate) async fn local_create_post(&self, new: NewPost) -> Result<Post, DbError> {
        let post = Post {
            id: PostId::generate(),
            author_id: new.author_id,
            title: new.title,
            content: new.content,
            tags: new.tags,
            published: new.published,
            created_at: now(),
        };
        let row = PostRow::from_post(&post);
        let author = post.author_id.to_string();
        let mut conn = self.conn().await?;
        // Posts do not cascade with their author (a user's deletion removes them after
        // the user row), so the author is checked here, in the insert's transaction:
        // under a key-share lock on PostgreSQL (a concurrent delete of the author waits,
        // or this insert sees the row gone), under SQLite's write lock on SQLite.
        let stored = match &mut conn {
            Conn::Postgres(c) => {
                c.transaction::<_, diesel::result::Error, _>(async |c| {
                    let found: Option<String> = users::table
                        .find(&author)
                        .select(users::id)
                        .for_key_share()
                        .first(c)
                        .await
                        .optional()?;
                    if found.is_none() {
                        return Ok(false);
                    }
                    diesel::insert_into(posts::table)
                        .values(&row)
                        .execute(c)
                        .await?;
                    Ok(true)
                })
                .await
            }
            Conn::Sqlite(c) => {
                c.spawn_blocking(move |c| {
                    c.immediate_transaction(|c| {
                        let found: Option<String> = diesel::RunQueryDsl::first(
                            users::table.find(&author).select(users::id),
                            c,
                        )
                        .optional()?;
                        if found.is_none() {
                            return Ok(false);
                        }
                        diesel::RunQueryDsl::execute(
                            diesel::insert_into(posts::table).values(&row),
                            c,
                        )?;
                        Ok(true)
                    })
                })
                .await
            }
        }?;
        if !stored {
            return Err(DbError::UnknownAuthor(post.author_id));
        }
        Ok(post)
    }

    /// Fetches one post; unknown ids are [`DbError::NotFound`].
    pub async fn get_post(&self, id: PostId) -> Result<Post, DbError> {
        match &self.sharding {
            Some(sharding) => sharding.get_post(id).await,
            None => self.local_get_post(id).await,
        }
    }

    /// [`Database::get_post`] in this database.
    #[tracing::instrument(skip(self))]
    pub(crate) async fn local_get_post(&self, id: PostId) -> Result<Post, DbError> {
        let mut conn = self.conn().await?;
        let row = with_conn!(&mut conn, |c| {
            posts::table
                .find(id.to_string())
                .select(PostRow::as_select())
                .first(c)
                .await
                .optional()
        })?;
        row.ok_or(DbError::NotFound { entity: "post" })?.try_into()
    }

    /// The posts of many authors at once, each author's in creation order. Authors without
    /// posts are absent from the map. One query per 500 authors, whatever the count.
    pub async fn posts_by_authors(
        &self,
        authors: &[UserId],
    ) -> Result<HashMap<UserId, Vec<Post>>, DbError> {
        match &self.sharding {
            Some(sharding) => sharding.posts_by_authors(authors).await,
            None => self.local_posts_by_authors(authors).await,
        }
    }

    /// [`Database::posts_by_authors`] in this database.
    #[tracing::instrument(skip_all, fields(authors = authors.len()))]
    pub(crate) async fn local_posts_by_authors(
        &self,
        authors: &[UserId],
    ) -> Result<HashMap<UserId, Vec<Post>>, DbError> {
        let mut by_author: HashMap<UserId, Vec<Post>> = HashMap::new();
        if authors.is_empty() {
            return Ok(by_author);
        }
        let mut conn = self.conn().await?;
        for chunk in authors.chunks(LOOKUP_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            let rows = with_conn!(&mut conn, |c| {
                posts::table
                    .filter(posts::author_id.eq_any(&keys))
                    .order((posts::author_id, posts::created_at, posts::id))
                    .select(PostRow::as_select())
                    .load(c)
                    .await
            })?;
            for row in rows {
                let post = Post::try_from(row)?;
                by_author.entry(post.author_id).or_default().push(post);
            }
        }
        Ok(by_author)
    }
}
