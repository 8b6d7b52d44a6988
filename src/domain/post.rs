//! Posts: what users write (served over GraphQL).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{parse_text, parse_uuid, UserId, ValidationError};

/// A post's id: a UUIDv7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PostId(uuid::Uuid);

impl PostId {
    /// Wraps an id read back from the database.
    pub(crate) fn from_uuid(id: uuid::Uuid) -> Self {
        Self(id)
    }

    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// Parses an id from a client.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        parse_uuid("id", raw).map(Self)
    }
}

impl fmt::Display for PostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A title: 1–200 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PostTitle(String);

impl PostTitle {
    /// Parses a title from a client.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        parse_text("title", raw, 200).map(Self)
    }

    /// The title as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a title read back from the database.
    pub(crate) fn trusted(raw: String) -> Self {
        Self(raw)
    }
}

/// A post body: up to 64 KiB, may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PostContent(String);

impl PostContent {
    /// Largest accepted body, in bytes.
    pub const MAX_BYTES: usize = 64 * 1024;

    /// Parses a body from a client.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.len() > Self::MAX_BYTES {
            return Err(ValidationError::new(
                "content",
                format!("must be at most {} bytes", Self::MAX_BYTES),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The body as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a body read back from the database.
    pub(crate) fn trusted(raw: String) -> Self {
        Self(raw)
    }
}

/// Up to 20 distinct tags of 1–50 characters, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tags(Vec<String>);

impl Tags {
    /// Parses tags from a client, dropping exact duplicates.
    pub fn parse(raw: impl IntoIterator<Item = String>) -> Result<Self, ValidationError> {
        let mut tags: Vec<String> = Vec::new();
        for tag in raw {
            let tag = parse_text("tags", &tag, 50)?;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        if tags.len() > 20 {
            return Err(ValidationError::new("tags", "at most 20 tags"));
        }
        Ok(Self(tags))
    }

    /// The tags.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// A stored post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Post {
    /// Primary key.
    pub id: PostId,
    /// Who wrote it.
    pub author_id: UserId,
    /// Title.
    pub title: PostTitle,
    /// Body.
    pub content: PostContent,
    /// Tags.
    pub tags: Tags,
    /// Whether it is visible to readers.
    pub published: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A validated request to create a post.
#[derive(Debug, Clone)]
pub struct NewPost {
    /// Author; must exist.
    pub author_id: UserId,
    /// Title.
    pub title: PostTitle,
    /// Body.
    pub content: PostContent,
    /// Tags.
    pub tags: Tags,
    /// Published right away?
    pub published: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_must_not_be_empty() {
        assert_eq!(PostTitle::parse("  ").unwrap_err().field, "title");
        assert_eq!(PostTitle::parse(" Hi ").unwrap().as_str(), "Hi");
    }

    #[test]
    fn tags_are_deduplicated_and_bounded() {
        let tags = Tags::parse(["a".to_owned(), "b".into(), "a".into()]).unwrap();
        assert_eq!(tags.as_slice(), ["a", "b"]);
        assert!(Tags::parse((0..21).map(|i| i.to_string())).is_err());
        assert!(Tags::parse(["".to_owned()]).is_err());
    }

    #[test]
    fn content_is_bounded() {
        assert!(PostContent::parse("").is_ok());
        assert!(PostContent::parse(&"x".repeat(PostContent::MAX_BYTES + 1)).is_err());
    }
}
