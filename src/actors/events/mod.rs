//! Domain events: the data layer tells this actor about users after they are committed,
//! and it hands each one to every matching live subscription (gRPC `StreamUsers`, later
//! GraphQL subscriptions). Each subscription has a bounded buffer; one that overflows is
//! dropped and told so — a subscriber never silently misses an event.

pub mod messages;

use std::{collections::HashMap, sync::Arc};

use actix::{Actor, Context, Handler, MessageResult};
use tokio::sync::{
    mpsc::{self, error::TrySendError},
    oneshot,
};

pub use messages::*;

use crate::domain::User;

/// Owns the live subscriptions. Start one per server.
#[derive(Default)]
pub struct Events {
    /// Live user subscriptions by id.
    subscribers: HashMap<u64, Subscriber>,
    /// Live post subscriptions.
    post_subscribers: Vec<PostSubscriber>,
    /// The next subscription id.
    next_id: u64,
    /// Live capped subscriptions per client.
    per_client: HashMap<Arc<str>, usize>,
    /// Counters.
    stats: EventStats,
}

struct PostSubscriber {
    posts: mpsc::Sender<Arc<crate::domain::Post>>,
    overflowed: oneshot::Sender<()>,
}

struct Subscriber {
    /// Lower-cased substring of name or email; empty matches everyone.
    filter: String,
    /// The client it counts against, when capped.
    client: Option<Arc<str>>,
    /// Which events it is told about.
    kinds: UserEventKinds,
    users: mpsc::Sender<UserEvent>,
    overflowed: oneshot::Sender<()>,
}

/// Whether `user` matches a lower-cased `filter`, as `ListUsers` filters.
pub fn matches(user: &User, filter: &str) -> bool {
    filter.is_empty()
        || user.name.as_str().to_lowercase().contains(filter)
        || user.email.as_str().to_lowercase().contains(filter)
}

impl Events {
    /// An actor with no subscriptions.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Actor for Events {
    type Context = Context<Self>;
}

impl Events {
    /// Ends a user subscription, freeing its client's place.
    fn remove(&mut self, id: u64) -> Option<Subscriber> {
        let subscriber = self.subscribers.remove(&id)?;
        if let Some(client) = &subscriber.client {
            if let Some(count) = self.per_client.get_mut(client) {
                *count -= 1;
                if *count == 0 {
                    self.per_client.remove(client);
                }
            }
        }
        Some(subscriber)
    }

    /// Forgets `client`'s subscriptions whose receiver is gone (ended without
    /// `Unsubscribe`), so they stop counting against it.
    fn sweep_closed(&mut self, client: &str) {
        let closed: Vec<u64> = self
            .subscribers
            .iter()
            .filter(|(_, s)| s.client.as_deref() == Some(client) && s.users.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in closed {
            self.remove(id);
        }
    }
}

impl Handler<Subscribe> for Events {
    type Result = Result<Subscription, TooManySubscriptions>;

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) -> Self::Result {
        let client = match msg.client {
            Some((client, limit)) => {
                if self.per_client.get(&client).copied().unwrap_or(0) >= limit {
                    self.sweep_closed(&client);
                    if self.per_client.get(&client).copied().unwrap_or(0) >= limit {
                        return Err(TooManySubscriptions { limit });
                    }
                }
                *self.per_client.entry(client.clone()).or_insert(0) += 1;
                Some(client)
            }
            None => None,
        };
        let (users, receiver) = mpsc::channel(msg.buffer.max(1));
        let (overflowed, overflow_rx) = oneshot::channel();
        self.next_id += 1;
        let id = self.next_id;
        self.subscribers.insert(
            id,
            Subscriber {
                filter: msg.filter.trim().to_lowercase(),
                client,
                kinds: msg.kinds,
                users,
                overflowed,
            },
        );
        Ok(Subscription {
            id,
            users: receiver,
            overflowed: overflow_rx,
        })
    }
}

impl Handler<Unsubscribe> for Events {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) {
        self.remove(msg.id);
    }
}

impl Handler<UsersCreated> for Events {
    type Result = ();

    fn handle(&mut self, msg: UsersCreated, _ctx: &mut Self::Context) {
        self.stats.users_created += msg.users.len() as u64;
        if self.subscribers.is_empty() {
            return; // nothing to copy the users for (bulk creates announce thousands)
        }
        let mut ended = Vec::new();
        for user in msg.users.iter() {
            let user = Arc::new(user.clone());
            self.deliver(&user, false, &mut ended);
        }
        self.end(ended);
    }
}

impl Handler<UserDeleted> for Events {
    type Result = ();

    fn handle(&mut self, msg: UserDeleted, _ctx: &mut Self::Context) {
        self.stats.users_deleted += 1;
        let mut ended = Vec::new();
        self.deliver(&msg.user, true, &mut ended);
        self.end(ended);
    }
}

impl Events {
    /// Hands `user` to every matching subscription (that wants deletions, for a
    /// deletion); those that are full or gone go to `ended`.
    fn deliver(&mut self, user: &Arc<User>, deleted: bool, ended: &mut Vec<u64>) {
        for (id, subscriber) in &self.subscribers {
            if ended.contains(id)
                || !subscriber.kinds.wants(deleted)
                || !matches(user, &subscriber.filter)
            {
                continue;
            }
            let event = if deleted {
                UserEvent::Deleted(user.clone())
            } else {
                UserEvent::Created(user.clone())
            };
            match subscriber.users.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.stats.overflows += 1;
                    ended.push(*id);
                }
                Err(TrySendError::Closed(_)) => ended.push(*id),
            }
        }
    }

    /// Drops the subscriptions in `ended`, telling those that overflowed.
    fn end(&mut self, ended: Vec<u64>) {
        for id in ended {
            if let Some(subscriber) = self.remove(id) {
                // Only an overflow is reported; a closed receiver has nobody to tell.
                if !subscriber.users.is_closed() {
                    let _ = subscriber.overflowed.send(());
                }
            }
        }
    }
}

impl Handler<SubscribePosts> for Events {
    type Result = MessageResult<SubscribePosts>;

    fn handle(&mut self, msg: SubscribePosts, _ctx: &mut Self::Context) -> Self::Result {
        let (posts, receiver) = mpsc::channel(msg.buffer.max(1));
        let (overflowed, overflow_rx) = oneshot::channel();
        self.post_subscribers
            .push(PostSubscriber { posts, overflowed });
        MessageResult(PostSubscription {
            posts: receiver,
            overflowed: overflow_rx,
        })
    }
}

impl Handler<PostCreated> for Events {
    type Result = ();

    fn handle(&mut self, msg: PostCreated, _ctx: &mut Self::Context) {
        self.stats.posts_created += 1;
        let mut kept = Vec::with_capacity(self.post_subscribers.len());
        for subscriber in self.post_subscribers.drain(..) {
            match subscriber.posts.try_send(msg.post.clone()) {
                Ok(()) => kept.push(subscriber),
                Err(TrySendError::Full(_)) => {
                    self.stats.overflows += 1;
                    let _ = subscriber.overflowed.send(());
                }
                Err(TrySendError::Closed(_)) => {}
            }
        }
        self.post_subscribers = kept;
    }
}

impl Handler<GetEventStats> for Events {
    type Result = MessageResult<GetEventStats>;

    fn handle(&mut self, _msg: GetEventStats, _ctx: &mut Self::Context) -> Self::Result {
        self.post_subscribers.retain(|s| !s.posts.is_closed());
        MessageResult(EventStats {
            subscribers: self.subscribers.len() + self.post_subscribers.len(),
            ..self.stats.clone()
        })
    }
}

impl Handler<CloseAll> for Events {
    type Result = ();

    fn handle(&mut self, _msg: CloseAll, _ctx: &mut Self::Context) {
        self.subscribers.clear();
        self.per_client.clear();
        self.post_subscribers.clear();
    }
}
