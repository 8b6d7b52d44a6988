//! The user cache: `GetUser` and GraphQL `user` by id read users through it.
//!
//! An actor owning a bounded LRU map of users, each served for at most a TTL. It is kept
//! correct by forgetting: every committed update or deletion — on this node, or on another
//! node of the cluster, relayed by the broker — removes the user before the write answers
//! its client (see [`Events`](crate::actors::events::Events)). Two races are closed here:
//!
//! - A read that missed, read the database, and brings back a user that was changed
//!   meanwhile would put the old user back. Every miss hands out the cache's *generation*;
//!   any forgetting bumps it, and a fill from an older generation is dropped.
//! - While the cluster link is down, changes on other nodes cannot reach this node, so
//!   the cache does not serve at all; it starts over, empty, once the link is back.

use std::{
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use serde::Serialize;

use crate::domain::{User, UserId};

/// The cache actor. Start one per node.
pub struct UserCache {
    users: lru::LruCache<UserId, (Arc<User>, Instant)>,
    ttl: Duration,
    generation: u64,
    serving: bool,
    stats: CacheStats,
}

/// Counters and gauges, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Lookups answered from memory.
    pub hits: u64,
    /// Lookups that went to the database.
    pub misses: u64,
    /// Users forgotten because they changed (here or on another node).
    pub invalidations: u64,
    /// Users pushed out to make room.
    pub evictions: u64,
    /// Users held now.
    pub size: usize,
    /// Most users held.
    pub capacity: usize,
    /// Whether the cache serves (false while the cluster link is down).
    pub serving: bool,
}

impl UserCache {
    /// A cache of at most `capacity` users (at least 1), each served for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            users: lru::LruCache::new(capacity),
            ttl,
            generation: 0,
            serving: true,
            stats: CacheStats {
                capacity: capacity.get(),
                ..CacheStats::default()
            },
        }
    }

    /// Whether it serves from the start (a cluster node's cache waits for the link).
    pub fn serving(mut self, serving: bool) -> Self {
        self.serving = serving;
        self
    }

    fn forget_all(&mut self) {
        self.users.clear();
        self.generation += 1;
    }
}

impl Actor for UserCache {
    type Context = Context<Self>;
}

/// Look a user up. `Err(generation)`: not held (or stale); read the database and
/// [`Fill`] with that generation.
#[derive(Debug, Message)]
#[rtype(result = "Result<Arc<User>, u64>")]
pub struct Lookup(pub UserId);

impl Handler<Lookup> for UserCache {
    type Result = Result<Arc<User>, u64>;

    fn handle(&mut self, Lookup(id): Lookup, _ctx: &mut Self::Context) -> Self::Result {
        if self.serving {
            match self.users.get(&id) {
                Some((user, stored)) if stored.elapsed() < self.ttl => {
                    self.stats.hits += 1;
                    return Ok(user.clone());
                }
                Some(_) => {
                    self.users.pop(&id);
                }
                None => {}
            }
        }
        self.stats.misses += 1;
        Err(self.generation)
    }
}

/// A user read from the database after a [`Lookup`] missed at `generation`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Fill {
    /// The user as read.
    pub user: Arc<User>,
    /// What the missed lookup answered.
    pub generation: u64,
}

impl Handler<Fill> for UserCache {
    type Result = ();

    fn handle(&mut self, msg: Fill, _ctx: &mut Self::Context) {
        // Something was forgotten since the read began: the user read may be older than
        // that change, so it is not kept.
        if !self.serving || msg.generation != self.generation {
            return;
        }
        if let Some((evicted, _)) = self.users.push(msg.user.id, (msg.user, Instant::now())) {
            if self.users.contains(&evicted) {
                return; // the same user, replaced
            }
            self.stats.evictions += 1;
        }
    }
}

/// Forget these users (they changed). Answers once they are forgotten.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Invalidate(pub Vec<UserId>);

impl Handler<Invalidate> for UserCache {
    type Result = ();

    fn handle(&mut self, Invalidate(ids): Invalidate, _ctx: &mut Self::Context) {
        self.generation += 1;
        for id in ids {
            if self.users.pop(&id).is_some() {
                self.stats.invalidations += 1;
            }
        }
    }
}

/// Serve (`true`, starting empty) or stop serving (`false`: the cluster link is down).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SetServing(pub bool);

impl Handler<SetServing> for UserCache {
    type Result = ();

    fn handle(&mut self, SetServing(serving): SetServing, _ctx: &mut Self::Context) {
        self.forget_all();
        if self.serving != serving {
            if serving {
                tracing::info!("the user cache serves again (emptied)");
            } else {
                tracing::warn!("the cluster link is down: the user cache stops serving");
            }
        }
        self.serving = serving;
    }
}

/// The cache's counters.
#[derive(Debug, Message)]
#[rtype(result = "CacheStats")]
pub struct GetCacheStats;

impl Handler<GetCacheStats> for UserCache {
    type Result = MessageResult<GetCacheStats>;

    fn handle(&mut self, _msg: GetCacheStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(CacheStats {
            size: self.users.len(),
            serving: self.serving,
            ..self.stats.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Email, Metadata, UserName};

    fn user(name: &str) -> Arc<User> {
        Arc::new(User {
            id: UserId::generate(),
            name: UserName::parse(name).unwrap(),
            email: Email::parse(&format!("{name}@example.com")).unwrap(),
            age: None,
            metadata: Metadata::default(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        })
    }

    /// Looks `user` up and fills it as a read-through miss does.
    async fn read_through(cache: &Addr<UserCache>, user: &Arc<User>) {
        let generation = cache.send(Lookup(user.id)).await.unwrap().unwrap_err();
        cache
            .send(Fill {
                user: user.clone(),
                generation,
            })
            .await
            .unwrap();
    }

    #[actix_rt::test]
    async fn a_fill_after_a_change_is_dropped_and_invalidation_forgets() {
        let cache = UserCache::new(10, Duration::from_secs(60)).start();
        let ada = user("ada");
        let generation = cache.send(Lookup(ada.id)).await.unwrap().unwrap_err();
        // The user changes while the database read is under way.
        cache.send(Invalidate(vec![ada.id])).await.unwrap();
        cache
            .send(Fill {
                user: ada.clone(),
                generation,
            })
            .await
            .unwrap();
        read_through(&cache, &ada).await;
        assert_eq!(cache.send(Lookup(ada.id)).await.unwrap().unwrap(), ada);
        cache.send(Invalidate(vec![ada.id])).await.unwrap();
        assert!(cache.send(Lookup(ada.id)).await.unwrap().is_err());
        let stats = cache.send(GetCacheStats).await.unwrap();
        assert_eq!((stats.hits, stats.misses, stats.invalidations), (1, 3, 1));
    }

    #[actix_rt::test]
    async fn it_is_bounded_expires_and_does_not_serve_while_the_link_is_down() {
        let cache = UserCache::new(2, Duration::from_millis(1)).start();
        let users = [user("a"), user("b"), user("c")];
        for user in &users {
            read_through(&cache, user).await;
        }
        let stats = cache.send(GetCacheStats).await.unwrap();
        assert_eq!((stats.size, stats.evictions), (2, 1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            cache.send(Lookup(users[2].id)).await.unwrap().is_err(),
            "expired"
        );

        let cache = UserCache::new(2, Duration::from_secs(60)).start();
        let generation = cache.send(Lookup(users[0].id)).await.unwrap().unwrap_err();
        cache.send(SetServing(false)).await.unwrap();
        cache
            .send(Fill {
                user: users[0].clone(),
                generation: generation + 1,
            })
            .await
            .unwrap();
        assert!(cache.send(Lookup(users[0].id)).await.unwrap().is_err());
        cache.send(SetServing(true)).await.unwrap();
        let stats = cache.send(GetCacheStats).await.unwrap();
        assert_eq!((stats.size, stats.serving), (0, true));
    }
}
