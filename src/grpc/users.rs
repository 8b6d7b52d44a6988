//! The `userservice.UserService` implementation.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use actix::Addr;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use super::{
    convert::{self, user_id},
    pb::{self, user_service_server::UserService},
};
use crate::{
    actors::{
        events::{Ended, Events, Subscribe, Subscription, Unsubscribe, UserEvent, UserEventKinds},
        rate_limit::{address_key, subject_key},
        saga::{delete_user, Saga},
    },
    auth::Claims,
    db::{Database, DbError, PageCursor, MAX_PAGE_SIZE},
    domain::{NewUser, SearchFilter, User, UserId},
};

/// Default `page_size` when a request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: u32 = 10;
/// Requests of a bulk create stored per transaction.
pub const BULK_BATCH: usize = 500;

/// Users a `StreamUsers` call may have queued for a client that does not read, before
/// the call ends with `RESOURCE_EXHAUSTED`.
pub const DEFAULT_STREAM_BUFFER: usize = 1024;
/// Users handed to tonic ahead of the client (between the feeder task and the wire).
const WIRE_BUFFER: usize = 64;

/// A `StreamUsers` page that finds the pool busy is tried again this many times.
const BUSY_RETRIES: u32 = 8;

/// Response metadata naming the saga a `DeleteUser` started or joined.
pub const SAGA_ID_HEADER: &str = "switchboard-saga-id";

/// A failed deletion as a status (with the saga's id in the metadata when there is one).
fn deletion_status(error: delete_user::DeleteError) -> Status {
    use delete_user::DeleteError;
    let saga = match &error {
        DeleteError::Compensated { id, .. } | DeleteError::Pending { id } => Some(id.clone()),
        DeleteError::NotFound | DeleteError::Db(_) => None,
    };
    let mut status = match error {
        DeleteError::NotFound => Status::not_found(error.to_string()),
        error @ DeleteError::Compensated { .. } => Status::aborted(error.to_string()),
        error @ DeleteError::Pending { .. } => Status::unavailable(error.to_string()),
        DeleteError::Db(error) => error.into(),
    };
    if let Some(value) = saga.and_then(|id| id.parse().ok()) {
        status.metadata_mut().insert(SAGA_ID_HEADER, value);
    }
    status
}

/// The service: thin, turning protobuf into repository calls and back.
#[derive(Clone)]
pub struct Users {
    db: Database,
    events: Addr<Events>,
    sagas: Addr<Saga>,
    stream_buffer: usize,
    /// `StreamUsers` calls one client may hold at once.
    max_streams_per_client: usize,
    /// Snapshot page reads of all `StreamUsers` calls take turns here (first come, first
    /// served), holding at most half the pool, so many streams cannot starve other calls
    /// of connections nor time out waiting for one.
    snapshot_reads: Arc<Semaphore>,
}

impl Users {
    /// A service over `db`, streaming new users from `events`.
    pub fn new(
        db: Database,
        events: Addr<Events>,
        sagas: Addr<Saga>,
        stream_buffer: usize,
        max_streams_per_client: usize,
    ) -> Self {
        let readers = (db.pool_status().max_connections as usize / 2).max(1);
        Self {
            db,
            events,
            sagas,
            stream_buffer,
            max_streams_per_client,
            snapshot_reads: Arc::new(Semaphore::new(readers)),
        }
    }

    /// Stores one batch of a bulk create on a task of its own, so the batch finishes whole
    /// even if the call is dropped meanwhile; when the batch as a whole is refused because
    /// of a taken email, stores its members one by one so only the culprits fail.
    async fn store_batch(
        &self,
        batch: Vec<(usize, NewUser)>,
        response: &mut pb::BulkCreateUsersResponse,
    ) -> Result<(), Status> {
        let db = self.db.clone();
        let stored = tokio::spawn(async move { store_batch(&db, batch).await })
            .await
            .map_err(|e| Status::internal(format!("the batch task failed: {e}")))??;
        response.created_count += stored.users.len() as i32;
        response.users.extend(stored.users);
        response.errors.extend(stored.errors);
        Ok(())
    }
}

/// What one batch of a bulk create stored, and the requests it refused.
struct StoredBatch {
    users: Vec<pb::User>,
    errors: Vec<String>,
}

async fn store_batch(db: &Database, batch: Vec<(usize, NewUser)>) -> Result<StoredBatch, Status> {
    let mut stored = StoredBatch {
        users: Vec::new(),
        errors: Vec::new(),
    };
    let (positions, users): (Vec<usize>, Vec<NewUser>) = batch.iter().cloned().unzip();
    match db.bulk_create_users(users).await {
        Ok(created) => {
            stored.users.extend(created.into_iter().map(pb::User::from));
            Ok(stored)
        }
        Err(DbError::DuplicateEmail { .. }) => {
            for (position, user) in positions.into_iter().zip(batch.into_iter().map(|b| b.1)) {
                match db.create_user(user).await {
                    Ok(created) => stored.users.push(created.into()),
                    Err(error @ DbError::DuplicateEmail { .. }) => {
                        stored.errors.push(format!("request {position}: {error}"));
                    }
                    Err(other) => return Err(other.into()),
                }
            }
            Ok(stored)
        }
        Err(other) => Err(other.into()),
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
        Ok(Response::new(self.db.get_user_cached(id).await?.into()))
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
        let started = delete_user::start(&self.db, &self.sagas, id)
            .await
            .map_err(deletion_status)?;
        let mut response = Response::new(());
        if let Ok(value) = started.id.parse() {
            response.metadata_mut().insert(SAGA_ID_HEADER, value);
        }
        Ok(response)
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let req = request.into_inner();
        let filter = SearchFilter::parse(&req.filter)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
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
            token => Some(PageCursor::decode(token, filter.as_str())?),
        };
        let page = self
            .db
            .list_users(&filter, page_size, after.as_ref())
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
        request: Request<pb::StreamUsersRequest>,
    ) -> Result<Response<Self::StreamUsersStream>, Status> {
        let client = client_key(&request);
        let request = request.into_inner();
        let filter = SearchFilter::parse(&request.filter)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        // Subscribe before reading the snapshot: a user committed in between is in both,
        // and the feeder drops the second copy.
        let subscription = self
            .events
            .send(Subscribe {
                filter: filter.as_str().to_owned(),
                buffer: self.stream_buffer,
                client: Some((client, self.max_streams_per_client)),
                kinds: UserEventKinds {
                    created: true,
                    updated: request.include_updates,
                    deleted: request.include_deletions,
                },
            })
            .await
            .map_err(|_| Status::unavailable("the event service is not running"))?
            .map_err(|error| Status::resource_exhausted(error.to_string()))?;
        let (wire, mut out) = mpsc::channel(WIRE_BUFFER);
        let feeder = Feeder {
            db: self.db.clone(),
            snapshot_reads: self.snapshot_reads.clone(),
            events: self.events.clone(),
            filter,
            buffer: self.stream_buffer,
            wire,
        };
        tokio::spawn(feeder.run(subscription));
        let stream = futures_util::stream::poll_fn(move |cx| out.poll_recv(cx));
        Ok(Response::new(Box::pin(stream)))
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
        // The client closed its stream: the tail is stored. hyper reports a stream the
        // client reset (cancelled) right after its last message as a clean end too; one
        // turn lets the connection see the reset and drop this call before the tail is
        // stored (full batches already stored stay).
        tokio::task::yield_now().await;
        if !batch.is_empty() {
            self.store_batch(batch, &mut response).await?;
        }
        Ok(Response::new(response))
    }
}

/// Feeds one `StreamUsers` call: the snapshot page by page, then live users.
struct Feeder {
    db: Database,
    snapshot_reads: Arc<Semaphore>,
    events: Addr<Events>,
    filter: SearchFilter,
    buffer: usize,
    wire: mpsc::Sender<Result<pb::User, Status>>,
}

impl Feeder {
    async fn run(self, subscription: Subscription) {
        let id = subscription.id;
        // `Err` means the client went away; either way the subscription is released now.
        let _ = self.feed(subscription).await;
        self.events.do_send(Unsubscribe { id });
    }

    async fn feed(&self, mut subscription: Subscription) -> Result<(), ()> {
        // What the snapshot held of each user: a live event it already covers is skipped.
        let mut seen: HashMap<UserId, chrono::DateTime<chrono::Utc>> = HashMap::new();
        let mut cursor: Option<PageCursor> = None;
        loop {
            let page = match self.read_page(cursor.as_ref()).await? {
                Ok(page) => page,
                Err(error) => return self.send(Err(error.into())).await,
            };
            for user in page.users {
                seen.insert(user.id, user.updated_at);
                self.send(Ok(user.into())).await?;
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        loop {
            let event = tokio::select! {
                () = self.wire.closed() => return Err(()),
                event = subscription.users.recv() => event,
            };
            let Some(event) = event else { break };
            let user = event.user();
            let covered = match &event {
                // Committed before the snapshot read it.
                UserEvent::Created(_) => seen.contains_key(&user.id),
                UserEvent::Updated(_) => seen
                    .get(&user.id)
                    .is_some_and(|shown| *shown >= user.updated_at),
                UserEvent::Deleted(_) => {
                    seen.remove(&user.id);
                    false
                }
            };
            if covered {
                continue;
            }
            let mut wire = pb::User::from(User::clone(user));
            wire.updated = matches!(event, UserEvent::Updated(_));
            wire.deleted = matches!(event, UserEvent::Deleted(_));
            self.send(Ok(wire)).await?;
        }
        let status = match subscription.ended.try_recv() {
            Ok(Ended::TooSlow) => Status::resource_exhausted(format!(
                "stream consumer too slow: more than {} events waited for it; \
                 call StreamUsers again to resume from a fresh snapshot",
                self.buffer
            )),
            Ok(Ended::Interrupted) => Status::unavailable(
                "the link to the other cluster nodes was lost, so changes made there may \
                 be missing; call StreamUsers again for a fresh snapshot",
            ),
            Err(_) => Status::unavailable("the server is shutting down"),
        };
        self.send(Err(status)).await
    }

    async fn send(&self, item: Result<pb::User, Status>) -> Result<(), ()> {
        self.wire.send(item).await.map_err(|_| ())
    }

    /// One snapshot page, read in turn with the other streams' pages; a busy pool is
    /// waited out with growing pauses. `Err(())`: the client went away meanwhile.
    async fn read_page(
        &self,
        after: Option<&PageCursor>,
    ) -> Result<Result<crate::db::UserPage, DbError>, ()> {
        let mut pause = Duration::from_millis(25);
        let mut retries = 0;
        loop {
            let permit = tokio::select! {
                () = self.wire.closed() => return Err(()),
                permit = self.snapshot_reads.acquire() => permit,
            };
            let page = self.db.list_users(&self.filter, MAX_PAGE_SIZE, after).await;
            drop(permit);
            match page {
                Err(DbError::Busy { .. }) if retries < BUSY_RETRIES => {
                    retries += 1;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                page => return Ok(page),
            }
        }
    }
}

/// Who a call counts against: its token's subject (the layer left the claims), else the
/// peer's IP — the same keys as rate limiting.
fn client_key<T>(request: &Request<T>) -> Arc<str> {
    let key = match request.extensions().get::<Claims>() {
        Some(claims) => subject_key(&claims.sub),
        None => address_key(
            request
                .remote_addr()
                .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string()),
        ),
    };
    key.into()
}
