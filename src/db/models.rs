//! Rows as stored, and their conversion to and from domain values.
//!
//! The schema is portable: ids are text, metadata and tags are JSON text, timestamps are
//! naive UTC with microsecond precision (what both engines store exactly).

use chrono::{DateTime, NaiveDateTime, Timelike, Utc};
use diesel::prelude::*;

use super::{
    schema::{posts, users},
    DbError,
};
use crate::domain::{
    Age, Email, Metadata, Post, PostContent, PostId, PostTitle, Tags, User, UserId, UserName,
};

/// The current time truncated to microseconds, so a value reads back exactly as written.
pub(crate) fn now() -> DateTime<Utc> {
    let now = Utc::now();
    now.with_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, serde::Serialize, serde::Deserialize)]
#[diesel(table_name = users)]
pub(crate) struct UserRow {
    pub id: String,
    pub name: String,
    pub email: String,
    pub age: Option<i32>,
    pub metadata: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl UserRow {
    pub(crate) fn from_user(user: &User) -> Self {
        Self {
            id: user.id.to_string(),
            name: user.name.as_str().to_owned(),
            email: user.email.as_str().to_owned(),
            age: user.age.map(Age::get),
            metadata: serde_json::to_string(&user.metadata).unwrap_or_else(|_| "{}".into()),
            created_at: user.created_at.naive_utc(),
            updated_at: user.updated_at.naive_utc(),
        }
    }
}

impl TryFrom<UserRow> for User {
    type Error = DbError;

    fn try_from(row: UserRow) -> Result<Self, Self::Error> {
        Ok(User {
            id: UserId::from_uuid(parse_id(&row.id)?),
            name: UserName::trusted(row.name),
            email: Email::trusted(row.email),
            age: row.age.map(Age::trusted),
            metadata: serde_json::from_str::<Metadata>(&row.metadata)
                .map_err(|e| DbError::Corrupt(format!("metadata of user {}: {e}", row.id)))?,
            created_at: row.created_at.and_utc(),
            updated_at: row.updated_at.and_utc(),
        })
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = posts)]
pub(crate) struct PostRow {
    pub id: String,
    pub author_id: String,
    pub title: String,
    pub content: String,
    pub tags: String,
    pub published: bool,
    pub created_at: NaiveDateTime,
}

impl PostRow {
    pub(crate) fn from_post(post: &Post) -> Self {
        Self {
            id: post.id.to_string(),
            author_id: post.author_id.to_string(),
            title: post.title.as_str().to_owned(),
            content: post.content.as_str().to_owned(),
            tags: serde_json::to_string(&post.tags).unwrap_or_else(|_| "[]".into()),
            published: post.published,
            created_at: post.created_at.naive_utc(),
        }
    }
}

impl TryFrom<PostRow> for Post {
    type Error = DbError;

    fn try_from(row: PostRow) -> Result<Self, Self::Error> {
        Ok(Post {
            id: PostId::from_uuid(parse_id(&row.id)?),
            author_id: UserId::from_uuid(parse_id(&row.author_id)?),
            title: PostTitle::trusted(row.title),
            content: PostContent::trusted(row.content),
            tags: serde_json::from_str::<Tags>(&row.tags)
                .map_err(|e| DbError::Corrupt(format!("tags of post {}: {e}", row.id)))?,
            published: row.published,
            created_at: row.created_at.and_utc(),
        })
    }
}

fn parse_id(raw: &str) -> Result<uuid::Uuid, DbError> {
    uuid::Uuid::try_parse(raw).map_err(|_| DbError::Corrupt(format!("`{raw}` is not a uuid")))
}
