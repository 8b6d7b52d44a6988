//! `Mutation { createUser, updateUser, deleteUser, createPost }`. All need a bearer token.

use juniper::{graphql_object, FieldResult, GraphQLInputObject};

use super::{
    errors::{self, code},
    objects::{PostObject, UserObject},
    Context,
};
use crate::domain::{
    Age, Email, Metadata, NewPost, NewUser, PostContent, PostTitle, Tags, UserId, UserName,
    UserPatch,
};

/// A new user.
#[derive(Debug, GraphQLInputObject)]
pub struct UserInput {
    /// 1–100 characters.
    pub name: String,
    /// A valid address; unique.
    pub email: String,
    /// 0–150.
    pub age: Option<i32>,
}

/// Changes to a user; fields left out stay as they are.
#[derive(Debug, GraphQLInputObject)]
pub struct UserUpdate {
    /// 1–100 characters.
    pub name: Option<String>,
    /// A valid address; unique.
    pub email: Option<String>,
    /// 0–150.
    pub age: Option<i32>,
}

/// A new post.
#[derive(Debug, GraphQLInputObject)]
pub struct PostInput {
    /// The author's user id.
    pub author_id: String,
    /// Not empty.
    pub title: String,
    /// The body.
    pub content: String,
    /// Tags (none when omitted).
    pub tags: Option<Vec<String>>,
    /// Visible right away (false when omitted).
    pub published: Option<bool>,
}

/// The mutation root.
pub struct Mutation;

fn require_token(context: &Context) -> FieldResult<()> {
    match &context.identity {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(errors::coded(
            "mutations need an `Authorization: Bearer <token>` header",
            code::UNAUTHENTICATED,
        )),
        Err(reason) => Err(errors::coded(reason, code::UNAUTHENTICATED)),
    }
}

#[graphql_object(context = Context)]
impl Mutation {
    /// Stores a new user.
    async fn create_user(context: &Context, input: UserInput) -> FieldResult<UserObject> {
        require_token(context)?;
        let new = NewUser {
            name: UserName::parse(&input.name).map_err(errors::invalid)?,
            email: Email::parse(&input.email).map_err(errors::invalid)?,
            age: input
                .age
                .map(Age::parse)
                .transpose()
                .map_err(errors::invalid)?,
            metadata: Metadata::default(),
        };
        let user = context.db.create_user(new).await.map_err(errors::db)?;
        Ok(UserObject::single(user))
    }

    /// Changes a user (on every node: subscribers hear `userUpdated`, caches forget it).
    async fn update_user(
        context: &Context,
        id: juniper::ID,
        input: UserUpdate,
    ) -> FieldResult<UserObject> {
        require_token(context)?;
        let id = UserId::parse(&id)
            .map_err(|e| errors::invalid(crate::domain::ValidationError::new("id", e.reason)))?;
        let patch = UserPatch {
            name: input
                .name
                .as_deref()
                .map(UserName::parse)
                .transpose()
                .map_err(errors::invalid)?,
            email: input
                .email
                .as_deref()
                .map(Email::parse)
                .transpose()
                .map_err(errors::invalid)?,
            age: input
                .age
                .map(Age::parse)
                .transpose()
                .map_err(errors::invalid)?,
            metadata: None,
        };
        let user = context
            .db
            .update_user(id, patch)
            .await
            .map_err(errors::db)?;
        Ok(UserObject::single(user))
    }

    /// Stores a new post by an existing user.
    async fn create_post(context: &Context, input: PostInput) -> FieldResult<PostObject> {
        require_token(context)?;
        let new = NewPost {
            author_id: UserId::parse(&input.author_id).map_err(|e| {
                errors::invalid(crate::domain::ValidationError::new("authorId", e.reason))
            })?,
            title: PostTitle::parse(&input.title).map_err(errors::invalid)?,
            content: PostContent::parse(&input.content).map_err(errors::invalid)?,
            tags: Tags::parse(input.tags.unwrap_or_default()).map_err(errors::invalid)?,
            published: input.published.unwrap_or(false),
        };
        let post = context.db.create_post(new).await.map_err(errors::db)?;
        Ok(PostObject::single(post))
    }

    /// Deletes a user everywhere: its row and email at once, then its posts and stored
    /// messages (a saga; see `/admin/sagas/{sagaId}`). Answers once the user row is
    /// gone; deleting a user whose deletion is running or done answers with that saga.
    async fn delete_user(context: &Context, id: juniper::ID) -> FieldResult<UserDeletion> {
        require_token(context)?;
        let user = UserId::parse(&id)
            .map_err(|e| errors::invalid(crate::domain::ValidationError::new("id", e.reason)))?;
        let started = crate::actors::saga::delete_user::start(&context.db, &context.sagas, user)
            .await
            .map_err(errors::deletion)?;
        Ok(UserDeletion {
            user_id: id,
            saga_id: started.id,
            completed: started.completed,
        })
    }
}

/// A user's deletion, past its point of no return.
#[derive(Debug, juniper::GraphQLObject)]
pub struct UserDeletion {
    /// The deleted user.
    pub user_id: juniper::ID,
    /// The saga doing it (`GET /admin/sagas/{sagaId}`).
    pub saga_id: String,
    /// Whether the clean-up after the user row (posts, messages) has finished too.
    pub completed: bool,
}
