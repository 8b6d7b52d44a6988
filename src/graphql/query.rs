//! `Query { user(id), users(limit, offset, filter), post(id) }`. Queries need no token.

use std::sync::Arc;

use juniper::{graphql_object, Executor, FieldResult};

use super::{
    errors::{self, code},
    objects::{PostObject, Prefetch, UserObject},
    Context,
};
use crate::{
    db::DbError,
    domain::{PostId, SearchFilter, UserId},
};

/// Largest `limit` for `users`.
pub const MAX_USERS_LIMIT: i32 = 100;

/// The query root.
pub struct Query;

#[graphql_object(context = Context, scalar = juniper::DefaultScalarValue)]
impl Query {
    /// One user, or `null` when no user has this id.
    async fn user(context: &Context, id: String) -> FieldResult<Option<UserObject>> {
        let id = UserId::parse(&id).map_err(errors::invalid)?;
        match context.db.get_user_cached(id).await {
            Ok(user) => Ok(Some(UserObject::single(user))),
            Err(DbError::NotFound { .. }) => Ok(None),
            Err(error) => Err(errors::db(error)),
        }
    }

    /// Users in creation order; `filter` matches name or email, case-insensitively.
    async fn users(
        context: &Context,
        executor: &Executor<'_, '_, Context>,
        #[graphql(default = 10)] limit: i32,
        #[graphql(default = 0)] offset: i32,
        #[graphql(default = String::new())] filter: String,
    ) -> FieldResult<Vec<UserObject>> {
        if !(1..=MAX_USERS_LIMIT).contains(&limit) {
            return Err(errors::coded(
                format!("limit must be between 1 and {MAX_USERS_LIMIT} (got {limit})"),
                code::BAD_USER_INPUT,
            ));
        }
        if offset < 0 {
            return Err(errors::coded(
                format!("offset must not be negative (got {offset})"),
                code::BAD_USER_INPUT,
            ));
        }
        let filter = SearchFilter::parse(&filter).map_err(errors::invalid)?;
        let users = context
            .db
            .users_at_offset(&filter, limit as u32, offset as u32)
            .await
            .map_err(errors::db)?;
        let wants_posts = executor.look_ahead().children().has_child("posts");
        let posts = if wants_posts {
            let ids: Vec<UserId> = users.iter().map(|u| u.id).collect();
            Some(
                context
                    .db
                    .posts_by_authors(&ids)
                    .await
                    .map_err(errors::db)?,
            )
        } else {
            None
        };
        let prefetch = Arc::new(Prefetch {
            users: users.iter().map(|u| (u.id, u.clone())).collect(),
            posts,
        });
        Ok(UserObject::batch(users, prefetch))
    }

    /// One post, or `null` when no post has this id.
    async fn post(context: &Context, id: String) -> FieldResult<Option<PostObject>> {
        let id = PostId::parse(&id).map_err(errors::invalid)?;
        match context.db.get_post(id).await {
            Ok(post) => Ok(Some(PostObject::single(post))),
            Err(DbError::NotFound { .. }) => Ok(None),
            Err(error) => Err(errors::db(error)),
        }
    }
}
