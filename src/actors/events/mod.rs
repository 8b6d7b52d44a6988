//! Domain events: the data layer tells this actor about users after they are committed,
//! and it hands each one to every matching live subscription (gRPC `StreamUsers`, GraphQL
//! subscriptions). Each subscription has a bounded buffer; one that overflows is dropped
//! and told so — a subscriber never silently misses an event.
//!
//! It also keeps the user cache right: an update or deletion is forgotten by this node's
//! cache and, in cluster mode, published through the broker to every other node (whose
//! `Events` deliver it to their subscribers and forget it in their caches) before the
//! write answers its client.

pub mod messages;

use std::{collections::HashMap, sync::Arc};

use actix::{Actor, Addr, Context, Handler, MessageResult, ResponseActFuture, WrapFuture};
use tokio::sync::{
    mpsc::{self, error::TrySendError},
    oneshot,
};

pub use messages::*;

use crate::{
    actors::{
        broker::{Broker, PublishUsers},
        user_cache::{Invalidate, SetServing, UserCache},
    },
    domain::User,
};

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
    /// This node's user cache, kept right.
    cache: Option<Addr<UserCache>>,
    /// The other nodes, in cluster mode.
    broker: Option<Addr<Broker>>,
}

struct PostSubscriber {
    posts: mpsc::Sender<Arc<crate::domain::Post>>,
    ended: oneshot::Sender<Ended>,
}

struct Subscriber {
    /// Lower-cased substring of name or email; empty matches everyone.
    filter: String,
    /// The client it counts against, when capped.
    client: Option<Arc<str>>,
    /// Which events it is told about.
    kinds: UserEventKinds,
    users: mpsc::Sender<UserEvent>,
    ended: oneshot::Sender<Ended>,
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

    /// Keeps `cache` right: changed users are forgotten before the change answers.
    pub fn with_cache(mut self, cache: Addr<UserCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Cluster mode: changes are published to the other nodes through `broker`.
    pub fn with_broker(mut self, broker: Addr<Broker>) -> Self {
        self.broker = Some(broker);
        self
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
        let (ended, ended_rx) = oneshot::channel();
        self.next_id += 1;
        let id = self.next_id;
        self.subscribers.insert(
            id,
            Subscriber {
                filter: msg.filter.trim().to_lowercase(),
                client,
                kinds: msg.kinds,
                users,
                ended,
            },
        );
        Ok(Subscription {
            id,
            users: receiver,
            ended: ended_rx,
        })
    }
}

impl Handler<Unsubscribe> for Events {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) {
        self.remove(msg.id);
    }
}

impl Handler<UsersChanged> for Events {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: UsersChanged, _ctx: &mut Self::Context) -> Self::Result {
        let count = msg.users.len() as u64;
        match msg.change {
            Change::Created => self.stats.users_created += count,
            Change::Updated => self.stats.users_updated += count,
            Change::Deleted => self.stats.users_deleted += count,
            Change::Forgotten => {}
        }
        self.deliver_all(msg.change, &msg.users);
        let forget = self.forget(msg.change, &msg.users);
        let publish = self.broker.clone().map(|broker| {
            broker.send(PublishUsers {
                change: msg.change,
                users: msg.users,
            })
        });
        Box::pin(
            async move {
                forget.await;
                if let Some(publish) = publish {
                    match publish.await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::warn!(
                            %error,
                            "a user change was not published: other nodes do not hear of it"
                        ),
                        Err(error) => tracing::warn!(%error, "the broker did not answer"),
                    }
                }
            }
            .into_actor(self),
        )
    }
}

impl Handler<RemoteUsersChanged> for Events {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: RemoteUsersChanged, _ctx: &mut Self::Context) -> Self::Result {
        self.stats.remote_changes += 1;
        self.deliver_all(msg.change, &msg.users);
        Box::pin(self.forget(msg.change, &msg.users).into_actor(self))
    }
}

impl Handler<ClusterLinkLost> for Events {
    type Result = ();

    fn handle(&mut self, _msg: ClusterLinkLost, _ctx: &mut Self::Context) {
        if let Some(cache) = &self.cache {
            cache.do_send(SetServing(false));
        }
        let ids: Vec<u64> = self.subscribers.keys().copied().collect();
        for id in ids {
            if let Some(subscriber) = self.remove(id) {
                self.stats.interrupted += 1;
                let _ = subscriber.ended.send(Ended::Interrupted);
            }
        }
    }
}

impl Handler<ClusterLinkRestored> for Events {
    type Result = ();

    fn handle(&mut self, _msg: ClusterLinkRestored, _ctx: &mut Self::Context) {
        if let Some(cache) = &self.cache {
            cache.do_send(SetServing(true));
        }
    }
}

impl Events {
    /// Hands `users` to every subscription that wants `change`.
    fn deliver_all(&mut self, change: Change, users: &[User]) {
        if self.subscribers.is_empty() || change == Change::Forgotten {
            return; // nothing to copy the users for (bulk creates announce thousands)
        }
        let mut ended = Vec::new();
        for user in users {
            let user = Arc::new(user.clone());
            self.deliver(&user, change, &mut ended);
        }
        self.end(ended);
    }

    /// Forgets changed `users` in this node's cache; resolves once they are forgotten.
    fn forget(
        &self,
        change: Change,
        users: &[User],
    ) -> impl std::future::Future<Output = ()> + 'static {
        let invalidate = match (&self.cache, change) {
            (Some(cache), Change::Updated | Change::Deleted | Change::Forgotten) => {
                Some(cache.send(Invalidate(users.iter().map(|u| u.id).collect())))
            }
            _ => None,
        };
        async move {
            if let Some(invalidate) = invalidate {
                let _ = invalidate.await;
            }
        }
    }

    /// Hands `user` to every matching subscription that wants `change`; those that are
    /// full or gone go to `ended`.
    fn deliver(&mut self, user: &Arc<User>, change: Change, ended: &mut Vec<u64>) {
        for (id, subscriber) in &self.subscribers {
            if ended.contains(id)
                || !subscriber.kinds.wants(change)
                || !matches(user, &subscriber.filter)
            {
                continue;
            }
            let event = match change {
                Change::Created => UserEvent::Created(user.clone()),
                Change::Updated => UserEvent::Updated(user.clone()),
                Change::Deleted | Change::Forgotten => UserEvent::Deleted(user.clone()),
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
                    let _ = subscriber.ended.send(Ended::TooSlow);
                }
            }
        }
    }
}

impl Handler<SubscribePosts> for Events {
    type Result = MessageResult<SubscribePosts>;

    fn handle(&mut self, msg: SubscribePosts, _ctx: &mut Self::Context) -> Self::Result {
        let (posts, receiver) = mpsc::channel(msg.buffer.max(1));
        let (ended, ended_rx) = oneshot::channel();
        self.post_subscribers.push(PostSubscriber { posts, ended });
        MessageResult(PostSubscription {
            posts: receiver,
            ended: ended_rx,
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
                    let _ = subscriber.ended.send(Ended::TooSlow);
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
