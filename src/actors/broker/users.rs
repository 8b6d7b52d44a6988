//! User changes across nodes: every committed creation, update or deletion is published
//! on `<prefix>:users`; every node hands it to its `Events` actor (its subscribers, its
//! user cache). An update or deletion waits until every node subscribed when it was
//! published has acknowledged that its cache forgot the user — PUBLISH answers how many
//! subscriptions received the message, and each acknowledges on the origin's own
//! channel — so a read on any node after the write answered cannot see the old user.
//! A node that does not acknowledge within `--cluster-invalidation-timeout` is logged
//! and counted, and the write answers anyway.

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{publish, Broker, ClusterUnavailable, Envelope};
use crate::{
    actors::events::{Change, ClusterLinkLost, ClusterLinkRestored, Events, RemoteUsersChanged},
    domain::User,
};

/// Marks an acknowledgement on a node's own channel (the self-probe shares it).
pub(super) const ACK: &str = "ack";

/// A change as it travels between nodes.
#[derive(Debug, Serialize, Deserialize)]
struct Wire<U> {
    /// The node it comes from.
    n: String,
    /// Its number on that node, to acknowledge; 0: no acknowledgement wanted.
    s: u64,
    /// What happened.
    c: Change,
    /// The users.
    u: U,
}

/// An update or deletion published, waiting for the nodes' acknowledgements.
#[derive(Debug, Default)]
pub(super) struct Pending {
    acked: u64,
    /// How many subscriptions received it (known once PUBLISH answers).
    expected: Option<u64>,
    done: Option<oneshot::Sender<()>>,
}

impl Pending {
    fn settle(&mut self) {
        if self.expected.is_some_and(|expected| self.acked >= expected) {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
    }
}

/// Acknowledgement bookkeeping, owned by the broker.
#[derive(Debug, Default)]
pub(super) struct Acks {
    next: u64,
    pending: HashMap<u64, Pending>,
    /// Whether the users channel is being subscribed again.
    relinking: bool,
}

/// Where the broker hands user changes from other nodes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AttachEvents(pub Addr<Events>);

impl Handler<AttachEvents> for Broker {
    type Result = ();

    fn handle(&mut self, msg: AttachEvents, ctx: &mut Self::Context) {
        self.events = Some(msg.0);
        self.relink(ctx);
    }
}

/// Publish a committed change to every other node. For an update or deletion, answers
/// once every node has forgotten the users (or the wait timed out).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ClusterUnavailable>")]
pub struct PublishUsers {
    /// What happened.
    pub change: Change,
    /// The users.
    pub users: Arc<[User]>,
}

/// PUBLISH answered: `receivers` subscriptions got change `seq`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Expect {
    seq: u64,
    receivers: Option<u64>,
}

/// Change `seq`'s wait is over (done or timed out): forget it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Settled {
    seq: u64,
    timed_out: bool,
}

impl Handler<PublishUsers> for Broker {
    type Result = ResponseFuture<Result<(), ClusterUnavailable>>;

    fn handle(&mut self, msg: PublishUsers, ctx: &mut Self::Context) -> Self::Result {
        self.stats.published += 1;
        let wait = msg.change != Change::Created;
        let (done, settled) = oneshot::channel();
        let seq = if wait {
            self.acks.next += 1;
            let seq = self.acks.next;
            // Registered before publishing: acknowledgements may overtake PUBLISH's answer.
            self.acks.pending.insert(
                seq,
                Pending {
                    done: Some(done),
                    ..Pending::default()
                },
            );
            seq
        } else {
            0
        };
        let payload = serde_json::to_string(&Wire {
            n: self.stats.node.clone(),
            s: seq,
            c: msg.change,
            u: &*msg.users,
        })
        .unwrap_or_default();
        let sent = publish(self.commands.clone(), self.key("users"), payload);
        let (me, timeout) = (ctx.address(), self.settings.invalidation_timeout);
        Box::pin(async move {
            let receivers = sent.await;
            if !wait {
                return receivers.map(|_| ());
            }
            me.do_send(Expect {
                seq,
                receivers: receivers.as_ref().ok().copied(),
            });
            receivers?;
            let timed_out = tokio::time::timeout(timeout, settled).await.is_err();
            me.do_send(Settled { seq, timed_out });
            Ok(())
        })
    }
}

impl Handler<Expect> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Expect, _ctx: &mut Self::Context) {
        match msg.receivers {
            Some(receivers) => {
                if let Some(pending) = self.acks.pending.get_mut(&msg.seq) {
                    pending.expected = Some(receivers);
                    pending.settle();
                }
            }
            None => {
                self.acks.pending.remove(&msg.seq);
            }
        }
    }
}

impl Handler<Settled> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Settled, _ctx: &mut Self::Context) {
        let Some(pending) = self.acks.pending.remove(&msg.seq) else {
            return;
        };
        if msg.timed_out {
            self.stats.invalidation_timeouts += 1;
            tracing::warn!(
                acknowledged = pending.acked,
                expected = ?pending.expected,
                timeout = ?self.settings.invalidation_timeout,
                "not every node confirmed it forgot a changed user in time; \
                 answering anyway (a node's cache may serve it until its TTL)"
            );
        }
    }
}

impl Broker {
    /// Counts an acknowledgement of change `seq`.
    pub(super) fn acknowledged(&mut self, seq: u64) {
        if let Some(pending) = self.acks.pending.get_mut(&seq) {
            pending.acked += 1;
            pending.settle();
        }
    }

    /// A message on the users channel: this node's own change coming back (it counts as
    /// this node's acknowledgement) or another node's, handed to `Events` and then
    /// acknowledged when asked.
    pub(super) fn users_message(&mut self, payload: &str, ctx: &mut Context<Self>) {
        let wire: Wire<Vec<User>> = match serde_json::from_str(payload) {
            Ok(wire) => wire,
            Err(error) => {
                tracing::warn!(%error, "a user change from another node could not be read");
                return;
            }
        };
        if wire.n == self.stats.node {
            if wire.s > 0 {
                self.acknowledged(wire.s);
            }
            return;
        }
        let Some(events) = &self.events else {
            return;
        };
        let change = RemoteUsersChanged {
            change: wire.c,
            users: wire.u.into(),
        };
        if wire.s == 0 {
            // (A `send` whose answer is dropped is never handled: actix skips it.)
            events.do_send(change);
            return;
        }
        // Sent now, so changes reach `Events` in the order they arrived.
        let applied = events.send(change);
        let ack = serde_json::to_string(&Envelope {
            o: ACK.into(),
            f: wire.s.to_string(),
        })
        .unwrap_or_default();
        let (redis, channel) = (self.commands.clone(), self.node_channel(&wire.n));
        ctx.spawn(
            async move {
                if applied.await.is_ok() {
                    let _ = publish(redis, channel, ack).await;
                }
            }
            .into_actor(self),
        );
    }

    /// The subscription connection was lost or replaced: subscribers are told events
    /// may be missing and the cache stops serving; once the users channel is
    /// subscribed again, the cache starts over.
    pub(super) fn link_lost(&mut self, ctx: &mut Context<Self>) {
        if let Some(events) = &self.events {
            events.do_send(ClusterLinkLost);
        }
        self.relink(ctx);
    }

    /// Subscribes to the users channel (again, trying every second), then tells
    /// `Events` the link is up.
    pub(super) fn relink(&mut self, ctx: &mut Context<Self>) {
        if self.acks.relinking {
            return;
        }
        self.acks.relinking = true;
        self.try_relink(ctx);
    }

    fn try_relink(&mut self, ctx: &mut Context<Self>) {
        let mut subscriber = self.subscriber.clone();
        let channel = self.key("users");
        ctx.spawn(
            async move { subscriber.subscribe(&channel).await }
                .into_actor(self)
                .map(|result, this, ctx| match result {
                    Ok(()) => {
                        this.acks.relinking = false;
                        if let Some(events) = &this.events {
                            events.do_send(ClusterLinkRestored);
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "subscribing to user changes failed; retrying");
                        ctx.run_later(Duration::from_secs(1), |this, ctx| this.try_relink(ctx));
                    }
                }),
        );
    }
}

/// How long a cluster-wide idempotency key is remembered.
const KEY_WINDOW: Duration = Duration::from_secs(600);

/// Claim an idempotency key for the whole cluster: `Ok(None)` — go ahead, then
/// [`SettleKey`]; `Ok(Some((offset, epoch)))` — the first call's result (waited for while
/// it is under way, up to ten seconds).
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<(u64, String)>, ClusterUnavailable>")]
pub struct ClaimKey(pub String);

/// The claimed call finished: its result, or `None` to free the key.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SettleKey {
    /// The claimed key.
    pub key: String,
    /// The result to answer retries with.
    pub result: Option<(u64, String)>,
}

impl Broker {
    fn idempotency_key(&self, key: &str) -> String {
        // Hashed: keys carry the caller's subject and room, which may be long.
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        self.key(&format!("idem:{:016x}:{}", hasher.finish(), key.len()))
    }
}

impl Handler<ClaimKey> for Broker {
    type Result = ResponseFuture<Result<Option<(u64, String)>, ClusterUnavailable>>;

    fn handle(&mut self, msg: ClaimKey, _ctx: &mut Self::Context) -> Self::Result {
        let key = self.idempotency_key(&msg.0);
        let mut redis = self.commands.clone();
        Box::pin(async move {
            let unavailable = |e: redis::RedisError| ClusterUnavailable(e.to_string());
            let claimed: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg("pending")
                .arg("NX")
                .arg("PX")
                .arg(KEY_WINDOW.as_millis() as u64)
                .query_async(&mut redis)
                .await
                .map_err(unavailable)?;
            if claimed.is_some() {
                return Ok(None);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let value: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await
                    .map_err(unavailable)?;
                match value.as_deref() {
                    Some("pending") if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Some(done) => {
                        let parsed = done.split_once(':').and_then(|(offset, epoch)| {
                            Some((offset.parse().ok()?, epoch.to_owned()))
                        });
                        return parsed.map(Some).ok_or_else(|| {
                            ClusterUnavailable(
                                "the first call with this key is still running".into(),
                            )
                        });
                    }
                    // The first call failed and freed the key.
                    None => {
                        return Err(ClusterUnavailable(
                            "the first call with this key failed; retry".into(),
                        ))
                    }
                }
            }
        })
    }
}

impl Handler<SettleKey> for Broker {
    type Result = ();

    fn handle(&mut self, msg: SettleKey, ctx: &mut Self::Context) {
        let key = self.idempotency_key(&msg.key);
        let mut redis = self.commands.clone();
        ctx.spawn(
            async move {
                let done: Result<(), redis::RedisError> = match msg.result {
                    Some((offset, epoch)) => {
                        redis::cmd("SET")
                            .arg(&key)
                            .arg(format!("{offset}:{epoch}"))
                            .arg("PX")
                            .arg(KEY_WINDOW.as_millis() as u64)
                            .query_async(&mut redis)
                            .await
                    }
                    None => redis::cmd("DEL").arg(&key).query_async(&mut redis).await,
                };
                if let Err(error) = done {
                    tracing::warn!(%error, "could not record an idempotency key's result");
                }
            }
            .into_actor(self),
        );
    }
}
