//! Messages the [`Events`](super::Events) actor handles.

use std::sync::Arc;

use actix::Message;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::domain::{Post, User};

/// Users stored by one committed write (one user, or a bulk batch). Sent by the data layer.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct UsersCreated {
    /// The stored users.
    pub users: Arc<[User]>,
}

/// A user deleted (its deletion saga passed the point of no return). Sent by the saga.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct UserDeleted {
    /// The user as it was.
    pub user: Arc<User>,
}

/// What a user subscription receives.
#[derive(Debug, Clone)]
pub enum UserEvent {
    /// A user was created.
    Created(Arc<User>),
    /// A user was deleted (only for subscriptions that asked for deletions).
    Deleted(Arc<User>),
}

/// Subscribe to new users whose name or email contains `filter` (case-insensitively).
#[derive(Debug, Message)]
#[rtype(result = "Result<Subscription, TooManySubscriptions>")]
pub struct Subscribe {
    /// Substring filter; empty for every user.
    pub filter: String,
    /// Events that may wait for the subscriber before it counts as too slow.
    pub buffer: usize,
    /// Who asks, with how many live subscriptions they may hold; `None`: no cap.
    pub client: Option<(Arc<str>, usize)>,
    /// Which events: creations, deletions (matching the filter as the user was), or both.
    pub kinds: UserEventKinds,
}

/// Which user events a subscription receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserEventKinds {
    /// New users only.
    Created,
    /// Deleted users only.
    Deleted,
    /// Both.
    All,
}

impl UserEventKinds {
    /// Whether a creation (`false`) or deletion (`true`) is wanted.
    pub fn wants(self, deleted: bool) -> bool {
        match self {
            Self::Created => !deleted,
            Self::Deleted => deleted,
            Self::All => true,
        }
    }
}

/// The client holds as many live subscriptions as it may.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many live streams for this client (at most {limit}); end one first")]
pub struct TooManySubscriptions {
    /// The cap.
    pub limit: usize,
}

/// A live subscription. Dropping `users` (or sending [`Unsubscribe`]) ends it.
#[derive(Debug)]
pub struct Subscription {
    /// Its id, for [`Unsubscribe`].
    pub id: u64,
    /// New (and, when asked for, deleted) users, in commit order.
    pub users: mpsc::Receiver<UserEvent>,
    /// Resolves with `Ok(())` if the subscription was dropped because its buffer overflowed.
    pub overflowed: oneshot::Receiver<()>,
}

/// End a subscription now (the client went away).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    /// The subscription.
    pub id: u64,
}

/// The actor's counters.
#[derive(Debug, Message)]
#[rtype(result = "EventStats")]
pub struct GetEventStats;

/// Gauges and counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventStats {
    /// Live subscriptions.
    pub subscribers: usize,
    /// Users announced by the data layer.
    pub users_created: u64,
    /// User deletions announced.
    pub users_deleted: u64,
    /// Posts announced by the data layer.
    pub posts_created: u64,
    /// Subscriptions ended because the subscriber fell behind.
    pub overflows: u64,
}

/// Drop every subscription (server shutdown), so long-lived streams end.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CloseAll;

/// A post stored and committed. Sent by the data layer.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PostCreated {
    /// The stored post.
    pub post: Arc<Post>,
}

/// Subscribe to new posts.
#[derive(Debug, Message)]
#[rtype(result = "PostSubscription")]
pub struct SubscribePosts {
    /// Events that may wait for the subscriber before it counts as too slow.
    pub buffer: usize,
}

/// A live post subscription; dropping `posts` ends it.
#[derive(Debug)]
pub struct PostSubscription {
    /// New posts, in commit order.
    pub posts: mpsc::Receiver<Arc<Post>>,
    /// Resolves with `Ok(())` if the subscription was dropped because its buffer overflowed.
    pub overflowed: oneshot::Receiver<()>,
}
