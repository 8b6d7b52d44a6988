//! Deleting a user everywhere, as a saga:
//!
//! 0. `mark_deleting` — the user is marked in the primary; tokens whose subject is the
//!    user are refused from then on (new WebSocket sessions, GraphQL, gRPC). Undone by
//!    removing the mark.
//! 1. `close_sessions` — the user's live chat sessions are closed with 4403 "user
//!    deleted". Nothing to undo once the mark is gone.
//! 2. `remove_user` — **pivot**: the user row and its email index row, in one
//!    distributed transaction when they are on different shards. The email is free now.
//! 3. `delete_posts`, 4. `redact_messages`, 5. `delete_private_messages` — in batches,
//!    on every shard holding them; room messages are redacted (see
//!    [`crate::db::REDACTED_SENDER`]), private ones deleted.
//! 6. `announce` — `StreamUsers` calls that asked for deletions and GraphQL
//!    `userDeleted` subscribers are told.
//!
//! Steps 3–6 are retried until they succeed. The mark stays after completion, so tokens
//! of the deleted user stay refused.
//!
//! The [`Deletions`] actor owns the set of marked users: it publishes it to the token
//! verifier, and re-reads the marks from the primary on an interval, so a user marked
//! by another server is refused (and its sessions here closed) within that interval.

use std::{collections::HashSet, sync::Arc, time::Duration};

use actix::prelude::*;
use futures_util::{future::BoxFuture, FutureExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{Definition, Fault, StepContext, StepError, StepSpec};
use crate::{
    actors::{
        events::{Change, Events, UsersChanged},
        hub::{CloseUser, Hub},
    },
    auth::RefusedSubjects,
    db::{Database, UserRow},
    domain::{User, UserId},
};

/// The saga type's name.
pub const SAGA_TYPE: &str = "delete_user";
/// The close code sent to a deleted user's sessions.
pub const CLOSE_CODE: u16 = 4403;
/// Rows per batch of the clean-up steps.
pub const BATCH: i64 = 500;

const STEPS: &[StepSpec] = &[
    StepSpec {
        name: "mark_deleting",
        compensable: true,
    },
    StepSpec {
        name: "close_sessions",
        compensable: false,
    },
    StepSpec {
        name: "remove_user",
        compensable: false,
    },
    StepSpec {
        name: "delete_posts",
        compensable: false,
    },
    StepSpec {
        name: "redact_messages",
        compensable: false,
    },
    StepSpec {
        name: "delete_private_messages",
        compensable: false,
    },
    StepSpec {
        name: "announce",
        compensable: false,
    },
];
const PIVOT: usize = 2;

/// The saga's input: the user as it was when its deletion started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Input {
    /// The user's row.
    pub(crate) user: UserRow,
}

impl Input {
    /// The input for deleting `user`.
    pub fn for_user(user: &User) -> Value {
        serde_json::to_value(Self {
            user: UserRow::from_user(user),
        })
        .unwrap_or(Value::Null)
    }

    fn parse(value: &Value) -> Result<(UserId, User), StepError> {
        let input: Self = serde_json::from_value(value.clone())
            .map_err(|e| StepError::definite(format!("bad saga input: {e}")))?;
        let user = User::try_from(input.user)
            .map_err(|e| StepError::definite(format!("bad saga input: {e}")))?;
        Ok((user.id, user))
    }
}

/// The definition, with what its steps act on.
pub struct DeleteUser {
    db: Database,
    hub: Addr<Hub>,
    events: Addr<Events>,
    deletions: Addr<Deletions>,
    fault: Option<Arc<Fault>>,
    /// In cluster mode: closes the user's sessions on the other nodes at once.
    broker: Option<Addr<crate::actors::broker::Broker>>,
}

impl DeleteUser {
    /// Cluster mode: `close_sessions` reaches the user's sessions on every node at once
    /// (not only when the other nodes next read the marks).
    pub fn with_broker(mut self, broker: Option<Addr<crate::actors::broker::Broker>>) -> Self {
        self.broker = broker;
        self
    }

    /// The definition over these actors and database.
    pub fn new(
        db: Database,
        hub: Addr<Hub>,
        events: Addr<Events>,
        deletions: Addr<Deletions>,
        fault: Option<Arc<Fault>>,
    ) -> Self {
        Self {
            db,
            hub,
            events,
            deletions,
            fault,
            broker: None,
        }
    }
}

/// Runs `batch` until it finds nothing left; pauses at `<step>/batch` after the first
/// batch when a fault asks.
async fn in_batches<F, Fut>(
    step: &str,
    fault: Option<Arc<Fault>>,
    mut batch: F,
) -> Result<Value, StepError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, crate::db::DbError>>,
{
    let mut total = 0u64;
    let mut batches = 0u64;
    loop {
        let done = batch().await?;
        if done == 0 {
            return Ok(json!({ "rows": total, "batches": batches }));
        }
        total += done;
        batches += 1;
        if batches == 1 {
            if let Some(fault) = &fault {
                fault.at(&format!("{step}/batch")).await?;
            }
        }
    }
}

impl Definition for DeleteUser {
    fn saga_type(&self) -> &'static str {
        SAGA_TYPE
    }

    fn steps(&self) -> &'static [StepSpec] {
        STEPS
    }

    fn pivot(&self) -> usize {
        PIVOT
    }

    fn run(&self, ctx: StepContext) -> BoxFuture<'static, Result<Value, StepError>> {
        let (db, hub, events, deletions, fault) = (
            self.db.clone(),
            self.hub.clone(),
            self.events.clone(),
            self.deletions.clone(),
            self.fault.clone(),
        );
        let broker = self.broker.clone();
        async move {
            let (id, user) = Input::parse(&ctx.input)?;
            let key = id.to_string();
            match STEPS[ctx.step].name {
                "mark_deleting" => {
                    db.mark_deleting(&key, &ctx.saga_id).await?;
                    deletions
                        .send(Refuse { user: key })
                        .await
                        .map_err(|e| StepError::unknown(e.to_string()))?;
                    Ok(Value::Null)
                }
                "close_sessions" => {
                    if let Some(broker) = &broker {
                        // The other nodes' sessions of the user, at once. Best effort: a
                        // node that misses it closes them when it next reads the marks
                        // (`--saga-resume-interval`), as it refuses the user's tokens.
                        let sent = broker
                            .send(crate::actors::broker::PublishUserControl {
                                user: key.clone(),
                                control: crate::actors::broker::UserControl::Close {
                                    code: CLOSE_CODE,
                                    reason: "user deleted".into(),
                                },
                            })
                            .await;
                        if !matches!(sent, Ok(Ok(_))) {
                            tracing::warn!(
                                user = %key,
                                "could not reach the other nodes; they close the user's \
                                 sessions when they next read the deletion marks"
                            );
                        }
                    }
                    let closed = hub
                        .send(CloseUser {
                            user_id: key,
                            code: CLOSE_CODE,
                            reason: "user deleted".into(),
                        })
                        .await
                        .map_err(|e| StepError::unknown(e.to_string()))?;
                    Ok(json!({ "sessions": closed }))
                }
                "remove_user" => {
                    db.remove_user(id, user.email.as_str()).await?;
                    // Before DeleteUser answers, no node's cache may serve the user.
                    events
                        .send(UsersChanged {
                            change: Change::Forgotten,
                            users: Arc::new([user]),
                        })
                        .await
                        .map_err(|e| StepError::unknown(e.to_string()))?;
                    Ok(Value::Null)
                }
                "delete_posts" => {
                    in_batches("delete_posts", fault, || db.delete_posts_batch(id, BATCH)).await
                }
                "redact_messages" => {
                    in_batches("redact_messages", fault, || {
                        db.redact_messages_batch(&key, BATCH)
                    })
                    .await
                }
                "delete_private_messages" => {
                    in_batches("delete_private_messages", fault, || {
                        db.delete_private_batch(&key, BATCH)
                    })
                    .await
                }
                "announce" => {
                    events
                        .send(UsersChanged {
                            change: Change::Deleted,
                            users: Arc::new([user]),
                        })
                        .await
                        .map_err(|e| StepError::unknown(e.to_string()))?;
                    Ok(Value::Null)
                }
                other => Err(StepError::definite(format!("no step `{other}`"))),
            }
        }
        .boxed()
    }

    fn compensate(&self, ctx: StepContext) -> BoxFuture<'static, Result<(), StepError>> {
        let (db, deletions) = (self.db.clone(), self.deletions.clone());
        async move {
            let (id, _) = Input::parse(&ctx.input)?;
            let key = id.to_string();
            if STEPS[ctx.step].name == "mark_deleting" {
                db.unmark_deleting(&key, &ctx.saga_id).await?;
                deletions
                    .send(Unrefuse { user: key })
                    .await
                    .map_err(|e| StepError::unknown(e.to_string()))?;
            }
            Ok(())
        }
        .boxed()
    }

    fn pivot_took_effect(&self, ctx: StepContext) -> BoxFuture<'static, Result<bool, StepError>> {
        let db = self.db.clone();
        async move {
            let (id, _) = Input::parse(&ctx.input)?;
            match db.get_user(id).await {
                Ok(_) => Ok(false),
                Err(crate::db::DbError::NotFound { .. }) => Ok(true),
                Err(error) => Err(error.into()),
            }
        }
        .boxed()
    }
}

/// Owns the set of users being deleted or deleted, and publishes it.
pub struct Deletions {
    db: Database,
    hub: Addr<Hub>,
    marked: HashSet<String>,
    refused: watch::Sender<RefusedSubjects>,
    refresh: Duration,
    /// Bumped on every local change: a refresh read before one is stale.
    version: u64,
}

impl Deletions {
    /// An actor publishing to `refused`, re-reading the marks every `refresh`.
    pub fn new(
        db: Database,
        hub: Addr<Hub>,
        refused: watch::Sender<RefusedSubjects>,
        refresh: Duration,
    ) -> Self {
        Self {
            db,
            hub,
            marked: HashSet::new(),
            refused,
            refresh,
            version: 0,
        }
    }

    fn publish(&mut self) {
        self.version += 1;
        self.refused.send_replace(Arc::new(self.marked.clone()));
    }
}

impl Actor for Deletions {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(Refresh);
        ctx.run_interval(self.refresh, |_, ctx| ctx.notify(Refresh));
    }
}

/// Refuse `user`'s tokens from now on.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Refuse {
    /// The user id.
    pub user: String,
}

/// Accept `user`'s tokens again (a compensated deletion).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unrefuse {
    /// The user id.
    pub user: String,
}

/// Re-read the marks from the primary.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Refresh;

impl Handler<Refuse> for Deletions {
    type Result = ();

    fn handle(&mut self, msg: Refuse, _ctx: &mut Self::Context) {
        if self.marked.insert(msg.user) {
            self.publish();
        }
    }
}

impl Handler<Unrefuse> for Deletions {
    type Result = ();

    fn handle(&mut self, msg: Unrefuse, _ctx: &mut Self::Context) {
        if self.marked.remove(&msg.user) {
            self.publish();
        }
    }
}

impl Handler<Refresh> for Deletions {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Refresh, _ctx: &mut Self::Context) -> Self::Result {
        let (db, version) = (self.db.clone(), self.version);
        Box::pin(
            async move { db.deletion_marks().await }
                .into_actor(self)
                .map(move |marks, this, _ctx| {
                    let marks: HashSet<String> = match marks {
                        Ok(marks) => marks.into_iter().collect(),
                        Err(error) => {
                            tracing::debug!(%error, "could not read deletion marks");
                            return;
                        }
                    };
                    if this.version != version || marks == this.marked {
                        return;
                    }
                    // Users another server marked: their sessions here go too.
                    for user in marks.difference(&this.marked) {
                        this.hub.do_send(CloseUser {
                            user_id: user.clone(),
                            code: CLOSE_CODE,
                            reason: "user deleted".into(),
                        });
                    }
                    this.marked = marks;
                    this.publish();
                }),
        )
    }
}

/// Why [`start`] did not delete a user.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// No such user, and no deletion of it on record.
    #[error("user not found")]
    NotFound,
    /// The deletion failed before its point of no return and was undone: the user is
    /// as it was.
    #[error("deleting the user failed and was undone (saga {id}): {error}")]
    Compensated {
        /// The saga.
        id: String,
        /// Why it failed.
        error: String,
    },
    /// The deletion is still before its point of no return after a long wait (another
    /// server runs it); it goes on.
    #[error("the user's deletion (saga {id}) is still in progress; ask again")]
    Pending {
        /// The saga.
        id: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

/// Deletes user `id` through a [`SAGA_TYPE`] saga; answers once the user row is gone
/// (the rest of the clean-up may still be running). Deleting a user whose deletion is
/// running or done answers with that saga; one that never existed is
/// [`DeleteError::NotFound`].
pub async fn start(
    db: &Database,
    sagas: &Addr<super::Saga>,
    id: UserId,
) -> Result<super::Started, DeleteError> {
    let user = match db.get_user(id).await {
        Ok(user) => user,
        Err(crate::db::DbError::NotFound { .. }) => {
            let log = super::SagaLog::new(db.clone());
            return match log.find(SAGA_TYPE, &id.to_string()).await? {
                Some(saga) if saga.state != super::log::state::COMPENSATED => Ok(super::Started {
                    completed: saga.state == super::log::state::COMPLETED,
                    id: saga.id,
                    joined: true,
                }),
                _ => Err(DeleteError::NotFound),
            };
        }
        Err(error) => return Err(error.into()),
    };
    let started = sagas
        .send(super::Start {
            saga_type: SAGA_TYPE,
            key: id.to_string(),
            input: Input::for_user(&user),
        })
        .await
        .map_err(|e| crate::db::DbError::Unavailable(format!("saga supervisor: {e}")))?;
    match started {
        Ok(started) => Ok(started),
        Err(super::StartError::Compensated { id, error }) => {
            Err(DeleteError::Compensated { id, error })
        }
        Err(super::StartError::Pending { id }) => Err(DeleteError::Pending { id }),
        Err(super::StartError::Db(error)) => Err(error.into()),
    }
}
