//! The post repository.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::LOOKUP_CHUNK;
use crate::db::{
    error::is_foreign_key_violation,
    models::{now, PostRow},
    schema::posts,
    with_conn, Database, DbError,
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
        let mut conn = self.conn().await?;
        with_conn!(&mut conn, |c| {
            diesel::insert_into(posts::table)
                .values(&row)
                .execute(c)
                .await
        })
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                DbError::UnknownAuthor(post.author_id)
            } else {
                e.into()
            }
        })?;
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
