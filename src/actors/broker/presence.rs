//! Room presence across nodes. Per room, in Redis: how many sessions each user has on
//! each node (`<prefix>:presence:<room>:nodes`, field `<node>|<user>`), the user's total
//! (`…:users`) and display name (`…:names`); per node, the rooms it has presence in
//! (`<prefix>:node:<node>:rooms`). One Lua script applies a change and, when a user's
//! total goes from 0 or to 0, publishes the join or leave event on the room's channel —
//! so an event is announced once in the cluster, however many sessions on however many
//! nodes. When a node dies, a survivor (one, by a lock) takes its sessions out the same
//! way, so the leave events go out (the step Centrifugo skips).

use actix::prelude::*;
use redis::{aio::ConnectionManager, Script};

use super::{envelope_raw, Broker, ClusterUnavailable};
use crate::{chat::SessionId, domain::RoomId};

/// Applies a change of one user's sessions on one node in one room: KEYS = nodes hash,
/// users hash, names hash, node's rooms set; ARGV = `<node>|<user>`, user, delta, name,
/// channel, event payload, presence limit, room.
const CHANGE: &str = r#"
local delta = tonumber(ARGV[3])
local n = redis.call("HINCRBY", KEYS[1], ARGV[1], delta)
if n <= 0 then redis.call("HDEL", KEYS[1], ARGV[1]) end
local total = redis.call("HINCRBY", KEYS[2], ARGV[2], delta)
local announce = false
if delta > 0 then
  if ARGV[4] ~= "" then redis.call("HSET", KEYS[3], ARGV[2], ARGV[4]) end
  redis.call("SADD", KEYS[4], ARGV[8])
  announce = total == delta and redis.call("HLEN", KEYS[2]) <= tonumber(ARGV[7])
elseif total <= 0 then
  redis.call("HDEL", KEYS[2], ARGV[2])
  redis.call("HDEL", KEYS[3], ARGV[2])
  announce = redis.call("HLEN", KEYS[2]) < tonumber(ARGV[7])
end
if announce and ARGV[6] ~= "" then redis.call("PUBLISH", ARGV[5], ARGV[6]) end
return total
"#;

/// A user's sessions on this node in a room changed (first one came, or last one left).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PresenceChange {
    /// The room.
    pub room: RoomId,
    /// The user.
    pub user: String,
    /// Their display name.
    pub name: Option<String>,
    /// +1 (the user's first session here joined) or -1 (the last one left).
    pub delta: i64,
    /// The event other members get if this changes the cluster's view (encoded frame).
    pub event: String,
    /// The session the event is not sent to (the one that joined).
    pub origin: Option<SessionId>,
    /// Rooms with more users announce no joins and leaves.
    pub limit: usize,
}

impl Broker {
    fn presence_keys(&self, room: &RoomId, node: &str) -> [String; 4] {
        [
            self.key(&format!("presence:{room}:nodes")),
            self.key(&format!("presence:{room}:users")),
            self.key(&format!("presence:{room}:names")),
            self.key(&format!("node:{node}:rooms")),
        ]
    }
}

/// Runs the change script.
#[allow(clippy::too_many_arguments)]
pub(super) async fn change(
    mut redis: ConnectionManager,
    keys: [String; 4],
    node: &str,
    room: &RoomId,
    user: &str,
    name: &str,
    delta: i64,
    channel: String,
    event: String,
    limit: usize,
) -> Result<i64, ClusterUnavailable> {
    Script::new(CHANGE)
        .key(&keys[0])
        .key(&keys[1])
        .key(&keys[2])
        .key(&keys[3])
        .arg(format!("{node}|{user}"))
        .arg(user)
        .arg(delta)
        .arg(name)
        .arg(channel)
        .arg(event)
        .arg(limit)
        .arg(room.as_str())
        .invoke_async(&mut redis)
        .await
        .map_err(|e| ClusterUnavailable(e.to_string()))
}

impl Handler<PresenceChange> for Broker {
    type Result = ();

    fn handle(&mut self, msg: PresenceChange, ctx: &mut Self::Context) {
        let node = self.stats.node.clone();
        let keys = self.presence_keys(&msg.room, &node);
        let channel = self.room_channel(&msg.room);
        let event = envelope_raw(msg.origin, msg.event);
        let redis = self.commands.clone();
        self.begin_change();
        ctx.spawn(
            async move {
                let name = msg.name.unwrap_or_default();
                if let Err(error) = change(
                    redis, keys, &node, &msg.room, &msg.user, &name, msg.delta, channel, event,
                    msg.limit,
                )
                .await
                {
                    tracing::warn!(%error, room = %msg.room, "could not record presence");
                }
            }
            .into_actor(self)
            .map(|(), this, _ctx| this.end_change()),
        );
    }
}

/// Who is in `room` across the cluster: `(user, name, sessions)`, sorted by user id.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<(String, Option<String>, u64)>, ClusterUnavailable>")]
pub struct ReadPresence(pub RoomId);

impl Handler<ReadPresence> for Broker {
    type Result = ResponseFuture<Result<Vec<(String, Option<String>, u64)>, ClusterUnavailable>>;

    fn handle(&mut self, msg: ReadPresence, _ctx: &mut Self::Context) -> Self::Result {
        let [_, users, names, _] = self.presence_keys(&msg.0, "");
        let mut redis = self.commands.clone();
        Box::pin(async move {
            let unavailable = |e: redis::RedisError| ClusterUnavailable(e.to_string());
            let totals: Vec<(String, i64)> = redis::cmd("HGETALL")
                .arg(&users)
                .query_async(&mut redis)
                .await
                .map_err(unavailable)?;
            let names: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                .arg(&names)
                .query_async(&mut redis)
                .await
                .map_err(unavailable)?;
            let mut present: Vec<_> = totals
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(user, n)| {
                    let name = names.get(&user).cloned();
                    (user, name, n as u64)
                })
                .collect();
            present.sort();
            Ok(present)
        })
    }
}

/// Takes a dead node's sessions out of every room it had presence in, publishing the
/// leave events; `leave` builds a leave event for (room, user, name).
pub(super) async fn reap(
    redis: ConnectionManager,
    prefix: String,
    dead: String,
    limit: usize,
    leave: impl Fn(&RoomId, &str, Option<&str>) -> String,
) -> Result<usize, ClusterUnavailable> {
    let mut conn = redis.clone();
    let unavailable = |e: redis::RedisError| ClusterUnavailable(e.to_string());
    let rooms_key = format!("{prefix}:node:{dead}:rooms");
    let rooms: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&rooms_key)
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
    let mut removed = 0;
    for room in rooms {
        let Ok(room) = RoomId::parse(&room) else {
            continue;
        };
        let keys = [
            format!("{prefix}:presence:{room}:nodes"),
            format!("{prefix}:presence:{room}:users"),
            format!("{prefix}:presence:{room}:names"),
            rooms_key.clone(),
        ];
        let entries: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(&keys[0])
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let names: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&keys[2])
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        for (field, sessions) in entries {
            let Some((node, user)) = field.split_once('|') else {
                continue;
            };
            if node != dead || sessions <= 0 {
                continue;
            }
            let name = names.get(user).cloned();
            let event = envelope_raw(None, leave(&room, user, name.as_deref()));
            change(
                redis.clone(),
                keys.clone(),
                &dead,
                &room,
                user,
                "",
                -sessions,
                format!("{prefix}:room:{room}"),
                event,
                limit,
            )
            .await?;
            removed += 1;
        }
    }
    let _: i64 = redis::cmd("DEL")
        .arg(&rooms_key)
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
    Ok(removed)
}

/// Takes one of the user's places in the cluster if fewer than `ARGV[2]` are taken:
/// KEYS = the user's sessions per node, the node's users; ARGV = node, limit, user.
const RESERVE: &str = r#"
local total = 0
for _, n in ipairs(redis.call("HVALS", KEYS[1])) do total = total + tonumber(n) end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call("HINCRBY", KEYS[1], ARGV[1], 1)
redis.call("SADD", KEYS[2], ARGV[3])
return 1
"#;

/// Gives one place back: KEYS = the user's sessions per node; ARGV = node.
const RELEASE: &str = r#"
local n = redis.call("HINCRBY", KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call("HDEL", KEYS[1], ARGV[1]) end
return n
"#;

/// Take one of `user`'s session places in the cluster: `Ok(false)` when they hold
/// `limit` sessions on all nodes together.
#[derive(Debug, Message)]
#[rtype(result = "Result<bool, ClusterUnavailable>")]
pub struct ReserveSession {
    /// The user.
    pub user: String,
    /// Sessions one user may hold in the cluster.
    pub limit: usize,
}

/// Give back a place taken by [`ReserveSession`] (the session ended).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReleaseSession {
    /// The user.
    pub user: String,
}

impl Handler<ReserveSession> for Broker {
    type Result = ResponseFuture<Result<bool, ClusterUnavailable>>;

    fn handle(&mut self, msg: ReserveSession, _ctx: &mut Self::Context) -> Self::Result {
        let node = self.stats.node.clone();
        let sessions = self.key(&format!("sessions:{}", msg.user));
        let users = self.key(&format!("node:{node}:users"));
        let mut redis = self.commands.clone();
        Box::pin(async move {
            let taken: i64 = Script::new(RESERVE)
                .key(sessions)
                .key(users)
                .arg(&node)
                .arg(msg.limit)
                .arg(&msg.user)
                .invoke_async(&mut redis)
                .await
                .map_err(|e| ClusterUnavailable(e.to_string()))?;
            Ok(taken == 1)
        })
    }
}

impl Handler<ReleaseSession> for Broker {
    type Result = ();

    fn handle(&mut self, msg: ReleaseSession, ctx: &mut Self::Context) {
        let node = self.stats.node.clone();
        let sessions = self.key(&format!("sessions:{}", msg.user));
        let mut redis = self.commands.clone();
        self.begin_change();
        ctx.spawn(
            async move {
                let released: Result<i64, _> = Script::new(RELEASE)
                    .key(sessions)
                    .arg(&node)
                    .invoke_async(&mut redis)
                    .await;
                if let Err(error) = released {
                    tracing::warn!(%error, "could not give a session place back");
                }
            }
            .into_actor(self)
            .map(|(), this, _ctx| this.end_change()),
        );
    }
}

/// Gives back every session place a dead node held.
pub(super) async fn reap_sessions(
    mut redis: ConnectionManager,
    prefix: &str,
    dead: &str,
) -> Result<(), ClusterUnavailable> {
    let unavailable = |e: redis::RedisError| ClusterUnavailable(e.to_string());
    let users_key = format!("{prefix}:node:{dead}:users");
    let users: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&users_key)
        .query_async(&mut redis)
        .await
        .map_err(unavailable)?;
    for user in users {
        let _: i64 = redis::cmd("HDEL")
            .arg(format!("{prefix}:sessions:{user}"))
            .arg(dead)
            .query_async(&mut redis)
            .await
            .map_err(unavailable)?;
    }
    let _: i64 = redis::cmd("DEL")
        .arg(&users_key)
        .query_async(&mut redis)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// The rooms with presence anywhere in the cluster whose id starts with `prefix`:
/// `(room, users, sessions)`, sorted by room.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<(String, u64, u64)>, ClusterUnavailable>")]
pub struct ReadRooms {
    /// Only rooms whose id starts with this.
    pub prefix: String,
}

/// `text` with Redis glob characters escaped, for a `MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

impl Handler<ReadRooms> for Broker {
    type Result = ResponseFuture<Result<Vec<(String, u64, u64)>, ClusterUnavailable>>;

    fn handle(&mut self, msg: ReadRooms, _ctx: &mut Self::Context) -> Self::Result {
        let head = self.key("presence:");
        let pattern = format!("{}{}*:users", glob_escape(&head), glob_escape(&msg.prefix));
        let mut redis = self.commands.clone();
        Box::pin(async move {
            let unavailable = |e: redis::RedisError| ClusterUnavailable(e.to_string());
            let mut rooms = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut redis)
                    .await
                    .map_err(unavailable)?;
                for key in keys {
                    let Some(room) = key
                        .strip_prefix(head.as_str())
                        .and_then(|rest| rest.strip_suffix(":users"))
                    else {
                        continue;
                    };
                    let counts: Vec<i64> = redis::cmd("HVALS")
                        .arg(&key)
                        .query_async(&mut redis)
                        .await
                        .map_err(unavailable)?;
                    let present: Vec<u64> = counts
                        .into_iter()
                        .filter(|n| *n > 0)
                        .map(|n| n as u64)
                        .collect();
                    if !present.is_empty() {
                        rooms.push((room.to_owned(), present.len() as u64, present.iter().sum()));
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            rooms.sort();
            rooms.dedup_by(|a, b| a.0 == b.0);
            Ok(rooms)
        })
    }
}
