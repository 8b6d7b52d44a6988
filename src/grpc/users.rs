//! The `userservice.UserService` implementation.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{
    convert::{self, user_id},
    pb::{self, user_service_server::UserService},
};
use crate::{
    db::{Database, DbError, PageCursor},
    domain::NewUser,
};

/// Default `page_size` when a request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: u32 = 10;
/// Requests of a bulk create stored per transaction.
pub const BULK_BATCH: usize = 500;

/// The service: thin, turning protobuf into repository calls and back.
#[derive(Clone)]
pub struct Users {
    db: Database,
}

impl Users {
    /// A service over `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Stores one batch of a bulk create; when the batch as a whole is refused because
    /// of a taken email, stores its members one by one so only the culprits fail.
    async fn store_batch(
        &self,
        batch: Vec<(usize, NewUser)>,
        response: &mut pb::BulkCreateUsersResponse,
    ) -> Result<(), Status> {
        let (positions, users): (Vec<usize>, Vec<NewUser>) = batch.iter().cloned().unzip();
        match self.db.bulk_create_users(users).await {
            Ok(stored) => {
                response.created_count += stored.len() as i32;
                response
                    .users
                    .extend(stored.into_iter().map(pb::User::from));
                Ok(())
            }
            Err(DbError::DuplicateEmail { .. }) => {
                for (position, user) in positions.into_iter().zip(batch.into_iter().map(|b| b.1)) {
                    match self.db.create_user(user).await {
                        Ok(stored) => {
                            response.created_count += 1;
                            response.users.push(stored.into());
                        }
                        Err(error @ DbError::DuplicateEmail { .. }) => {
                            response.errors.push(format!("request {position}: {error}"));
                        }
                        Err(other) => return Err(other.into()),
                    }
                }
                Ok(())
            }
            Err(other) => Err(other.into()),
        }
    }
}

type UserStream = Pin<Box<dyn Stream<Item = Result<pb::User, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl UserService for Users {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let new = NewUser::try_from(request.into_inner())?;
        let user = self.db.create_user(new).await?;
        Ok(Response::new(user.into()))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let id = user_id(&request.into_inner().id)?;
        Ok(Response::new(self.db.get_user(id).await?.into()))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let (id, patch) = convert::patch(request.into_inner())?;
        Ok(Response::new(self.db.update_user(id, patch).await?.into()))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<()>, Status> {
        let id = user_id(&request.into_inner().id)?;
        self.db.delete_user(id).await?;
        Ok(Response::new(()))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let req = request.into_inner();
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                return Err(Status::invalid_argument(
                    "invalid page_size: must not be negative",
                ))
            }
            n => n as u32,
        };
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(PageCursor::decode(token, &req.filter)?),
        };
        let page = self
            .db
            .list_users(&req.filter, page_size, after.as_ref())
            .await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: page.users.into_iter().map(pb::User::from).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
            total_count: i32::try_from(page.total_count).unwrap_or(i32::MAX),
        }))
    }

    type StreamUsersStream = UserStream;

    async fn stream_users(
        &self,
        _request: Request<pb::StreamUsersRequest>,
    ) -> Result<Response<Self::StreamUsersStream>, Status> {
        Err(Status::unimplemented(
            "StreamUsers is not available yet in this build",
        ))
    }

    async fn bulk_create_users(
        &self,
        request: Request<Streaming<pb::CreateUserRequest>>,
    ) -> Result<Response<pb::BulkCreateUsersResponse>, Status> {
        let mut stream = request.into_inner();
        let mut response = pb::BulkCreateUsersResponse::default();
        let mut batch = Vec::with_capacity(BULK_BATCH);
        let mut position = 0;
        while let Some(item) = stream.next().await {
            let req = item?;
            match NewUser::try_from(req) {
                Ok(user) => batch.push((position, user)),
                Err(status) => response
                    .errors
                    .push(format!("request {position}: {}", status.message())),
            }
            position += 1;
            if batch.len() == BULK_BATCH {
                self.store_batch(std::mem::take(&mut batch), &mut response)
                    .await?;
            }
        }
        if !batch.is_empty() {
            self.store_batch(batch, &mut response).await?;
        }
        Ok(Response::new(response))
    }
}
