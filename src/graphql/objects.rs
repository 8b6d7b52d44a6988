//! `User` and `Post`.
//!
//! A list resolver looks ahead at the selection and, when `posts` is asked for, loads the
//! posts of every listed user in one query and shares them, with the users, through a
//! [`Prefetch`]. A post's `author` is then one of those users, whose `posts` come from the
//! same prefetch, so `users { posts { author { posts { … } } } }` costs the same few queries
//! at any list size and depth. Objects reached one by one fall back to single lookups.

use std::{collections::HashMap, sync::Arc};

use chrono::SecondsFormat;
use juniper::{graphql_object, FieldResult};

use super::{errors, Context};
use crate::domain::{Post, User, UserId};

/// Users and their posts loaded together for one resolver call.
#[derive(Debug, Default)]
pub struct Prefetch {
    /// The users, by id.
    pub users: HashMap<UserId, User>,
    /// Their posts by author (an absent author has none); `None` when not loaded.
    pub posts: Option<HashMap<UserId, Vec<Post>>>,
}

/// A user in a response.
#[derive(Debug, Clone)]
pub struct UserObject {
    user: User,
    prefetch: Option<Arc<Prefetch>>,
}

impl UserObject {
    /// A user resolved on its own.
    pub fn single(user: User) -> Self {
        Self {
            user,
            prefetch: None,
        }
    }

    /// Users sharing one prefetch.
    pub fn batch(users: Vec<User>, prefetch: Arc<Prefetch>) -> Vec<Self> {
        users
            .into_iter()
            .map(|user| Self {
                user,
                prefetch: Some(prefetch.clone()),
            })
            .collect()
    }
}

/// A post in a response.
#[derive(Debug, Clone)]
pub struct PostObject {
    post: Post,
    prefetch: Option<Arc<Prefetch>>,
}

impl PostObject {
    /// A post resolved on its own.
    pub fn single(post: Post) -> Self {
        Self {
            post,
            prefetch: None,
        }
    }
}

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A person who can post.
#[graphql_object(name = "User", context = Context)]
impl UserObject {
    fn id(&self) -> String {
        self.user.id.to_string()
    }

    fn name(&self) -> &str {
        self.user.name.as_str()
    }

    fn email(&self) -> &str {
        self.user.email.as_str()
    }

    fn age(&self) -> Option<i32> {
        self.user.age.map(|a| a.get())
    }

    /// RFC 3339.
    fn created_at(&self) -> String {
        rfc3339(self.user.created_at)
    }

    /// The user's posts, oldest first.
    async fn posts(&self, context: &Context) -> FieldResult<Vec<PostObject>> {
        if let Some(prefetch) = &self.prefetch {
            if let Some(posts) = &prefetch.posts {
                let mine = posts.get(&self.user.id).cloned().unwrap_or_default();
                return Ok(mine
                    .into_iter()
                    .map(|post| PostObject {
                        post,
                        prefetch: Some(prefetch.clone()),
                    })
                    .collect());
            }
        }
        let mut by_author = context
            .db
            .posts_by_authors(&[self.user.id])
            .await
            .map_err(errors::db)?;
        let posts = by_author.remove(&self.user.id).unwrap_or_default();
        Ok(posts.into_iter().map(PostObject::single).collect())
    }
}

/// Something a user wrote.
#[graphql_object(name = "Post", context = Context)]
impl PostObject {
    fn id(&self) -> String {
        self.post.id.to_string()
    }

    fn title(&self) -> &str {
        self.post.title.as_str()
    }

    fn content(&self) -> &str {
        self.post.content.as_str()
    }

    fn tags(&self) -> Vec<String> {
        self.post.tags.as_slice().to_vec()
    }

    fn published(&self) -> bool {
        self.post.published
    }

    /// RFC 3339.
    fn created_at(&self) -> String {
        rfc3339(self.post.created_at)
    }

    /// Who wrote it.
    async fn author(&self, context: &Context) -> FieldResult<Option<UserObject>> {
        if let Some(prefetch) = &self.prefetch {
            if let Some(user) = prefetch.users.get(&self.post.author_id) {
                return Ok(Some(UserObject {
                    user: user.clone(),
                    prefetch: Some(prefetch.clone()),
                }));
            }
        }
        match context.db.get_user(self.post.author_id).await {
            Ok(user) => Ok(Some(UserObject::single(user))),
            Err(crate::db::DbError::NotFound { .. }) => Ok(None),
            Err(error) => Err(errors::db(error)),
        }
    }
}
