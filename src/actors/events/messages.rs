//! Messages the [`Events`](super::Events) actor handles.

use std::sync::Arc;

use actix::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::domain::{Post, User};

/// What happened to some users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Stored by one committed write (one user, or a bulk batch).
    Created,
    /// Changed by a committed update; the users as they are now.
    Updated,
    /// Deleted (the deletion saga passed its point of no return); the users as they were.
    Deleted,
    /// Gone or changed, to be forgotten by every cache, without telling subscribers (the
    /// deletion's pivot: subscribers hear `Deleted` once the clean-up is done).
    Forgotten,
}

/// A committed change to users, from this node's data layer (or the deletion saga).
/// Answers once every node's user cache has forgotten the users (for an update or a
/// deletion) — or the wait for the other nodes timed out; creations answer at once.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct UsersChanged {
    /// What happened.
    pub change: Change,
    /// The users.
    pub users: Arc<[User]>,
}

/// A change committed on another node of the cluster, relayed by the broker. Answers
/// once this node's cache has forgotten the users (the broker then acknowledges).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RemoteUsersChanged {
    /// What happened.
    pub change: Change,
    /// The users.
    pub users: Arc<[User]>,
}

/// The link to the other nodes was lost: changes made there meanwhile may never arrive.
/// Live user subscriptions end with [`Ended::Interrupted`] and the user cache stops
/// serving until [`ClusterLinkRestored`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ClusterLinkLost;

/// The link is back (subscribed again): the user cache starts over, empty.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ClusterLinkRestored;

/// What a user subscription receives.
#[derive(Debug, Clone)]
pub enum UserEvent {
    /// A user was created.
    Created(Arc<User>),
    /// A user was updated (only for subscriptions that asked for updates).
    Updated(Arc<User>),
    /// A user was deleted (only for subscriptions that asked for deletions).
    Deleted(Arc<User>),
}

impl UserEvent {
    /// The user the event is about.
    pub fn user(&self) -> &Arc<User> {
        match self {
            Self::Created(user) | Self::Updated(user) | Self::Deleted(user) => user,
        }
    }
}

/// Why a subscription ended before its subscriber left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// More events waited for the subscriber than its buffer holds.
    TooSlow,
    /// The cluster link was lost: events from other nodes may have been missed.
    Interrupted,
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
pub struct UserEventKinds {
    /// New users.
    pub created: bool,
    /// Updated users.
    pub updated: bool,
    /// Deleted users (matching the filter as the user was).
    pub deleted: bool,
}

impl UserEventKinds {
    /// New users only (the seed's `StreamUsers`).
    pub const CREATED: Self = Self {
        created: true,
        updated: false,
        deleted: false,
    };
    /// Updated users only.
    pub const UPDATED: Self = Self {
        created: false,
        updated: true,
        deleted: false,
    };
    /// Deleted users only.
    pub const DELETED: Self = Self {
        created: false,
        updated: false,
        deleted: true,
    };

    /// Whether subscribers of these kinds hear about `change`.
    pub fn wants(self, change: Change) -> bool {
        match change {
            Change::Created => self.created,
            Change::Updated => self.updated,
            Change::Deleted => self.deleted,
            Change::Forgotten => false,
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
    /// New (and, when asked for, updated and deleted) users, in commit order.
    pub users: mpsc::Receiver<UserEvent>,
    /// Resolves with why the subscription was ended, when the server ended it.
    pub ended: oneshot::Receiver<Ended>,
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
    /// Users created, announced by this node's data layer.
    pub users_created: u64,
    /// User updates announced by this node.
    pub users_updated: u64,
    /// User deletions announced by this node.
    pub users_deleted: u64,
    /// User changes relayed from other nodes.
    pub remote_changes: u64,
    /// Subscriptions ended because the cluster link was lost.
    pub interrupted: u64,
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
    /// New posts stored through this node, in commit order.
    pub posts: mpsc::Receiver<Arc<Post>>,
    /// Resolves with [`Ended::TooSlow`] if the subscription was dropped because its
    /// buffer overflowed.
    pub ended: oneshot::Receiver<Ended>,
}
