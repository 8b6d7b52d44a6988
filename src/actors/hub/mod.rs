//! The chat hub: the one registry of connected sessions, users and rooms.
//!
//! Sessions ask it to join, leave and route by message; it answers with frames sent to
//! the sessions' mailboxes. A relayed message is serialised once and each delivery is a
//! `try_send` of shared bytes into the member's bounded mailbox. A member whose mailbox is
//! full is a slow consumer: it gets nothing more, is removed from every room, and is told
//! to close with 1008 — after the frames already queued, so it can tell where its stream
//! ended. Nobody else waits for it.

mod history;
pub mod messages;
pub mod outbox;
mod overload;
mod relay;
mod requests;
mod sequence;

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix::{
    Actor, Addr, AsyncContext, Context, Handler, MessageResult, ResponseActFuture, WrapFuture,
};
use actix_web_actors::ws::{CloseCode, CloseReason};
use bytestring::ByteString;
use serde_json::json;

use history::Recovering;
pub use messages::*;
use outbox::Refused;
pub use outbox::{Limits, Outbox};
use sequence::Numbering;
pub use sequence::{FIRST_RESERVATION, MAX_IDLE_ROOMS};

use crate::{
    actors::history::{Append, AppendPrivate, HistoryWriter},
    chat::{command::Post, frame::message_id, Frame, Identity, SessionId},
    db::Database,
    domain::{RoomId, RoomSet, StoredMessage, StoredPrivate},
};

/// Live frames held for a session while its missed messages are read, by default.
pub const DEFAULT_RECOVERY_BUFFER: usize = 1024;
/// Rooms with more users than this announce no joins and leaves (`--ws-presence-limit`).
pub const DEFAULT_PRESENCE_LIMIT: usize = 1000;

/// Owns every session, user and room. Start one per server.
pub struct Hub {
    /// Concurrent sessions one user may hold.
    max_sessions_per_user: usize,
    /// Connected sessions.
    /// Connected sessions (boxed: the table has ~1.6 buckets per session, each a pointer).
    sessions: HashMap<SessionId, Box<Member>>,
    /// Sessions of each connected user.
    users: HashMap<Arc<str>, UserSessions>,
    /// Rooms with at least one member.
    rooms: HashMap<RoomId, Room>,
    /// Counters (the gauges are computed when asked).
    stats: HubStats,
    /// Sessions whose last delivery failed, settled after each handler.
    failed: Vec<(SessionId, Failure)>,
    /// Set by [`Shutdown`]: new sessions are refused.
    shutting_down: bool,
    /// Each room's numbering (kept a while after its last member leaves).
    numbering: Numbering,
    /// Tells one recovery's replay from another's.
    next_join: u64,
    /// Requests of sessions whose join waits for a room's numbering to open, in order.
    waiting: HashMap<SessionId, std::collections::VecDeque<requests::Request>>,
    /// Where relayed messages are stored; `None` when history is off.
    history: Option<Addr<HistoryWriter>>,
    /// Store private messages too.
    persist_private: bool,
    /// Live frames held for a recovering session before it counts as slow.
    recovery_buffer: usize,
    /// How often every session gets a [`ToSession::Pulse`]; `None`: never.
    pulse: Option<Duration>,
    /// How much may wait for one session.
    limits: Limits,
    /// How far behind the hub itself is (see [`overload`]).
    lag: overload::Lag,
    /// A member behind that takes nothing for this long is a slow consumer.
    stall_timeout: Duration,
    /// Rooms with more users than this announce no joins and leaves, and list this many.
    presence_limit: usize,
    /// Users being deleted: their sessions are not registered (a token verified just
    /// before the user was marked must not slip past the closing of its sessions).
    refused: Option<tokio::sync::watch::Receiver<crate::auth::RefusedSubjects>>,
    /// In cluster mode: the link to the other nodes (private messages and broadcasts
    /// go through it).
    cluster: Option<Addr<crate::actors::broker::Broker>>,
    /// In cluster mode: rooms whose messages wait while a gap is read from Redis.
    gaps: HashMap<RoomId, Vec<(u64, String)>>,
}

/// The sessions of one connected user: almost always one, kept inline (no allocation).
#[derive(Debug)]
enum UserSessions {
    One(SessionId),
    Many(Vec<SessionId>),
}

impl UserSessions {
    fn len(&self) -> usize {
        match self {
            UserSessions::One(_) => 1,
            UserSessions::Many(sessions) => sessions.len(),
        }
    }

    fn as_slice(&self) -> &[SessionId] {
        match self {
            UserSessions::One(session) => std::slice::from_ref(session),
            UserSessions::Many(sessions) => sessions,
        }
    }

    fn push(&mut self, session: SessionId) {
        match self {
            UserSessions::One(first) => *self = UserSessions::Many(vec![*first, session]),
            UserSessions::Many(sessions) => sessions.push(session),
        }
    }

    /// Forgets `session`; `true` when none is left.
    fn remove(&mut self, session: SessionId) -> bool {
        match self {
            UserSessions::One(only) => *only == session,
            UserSessions::Many(sessions) => {
                sessions.retain(|s| *s != session);
                match sessions.as_slice() {
                    [] => true,
                    [last] => {
                        *self = UserSessions::One(*last);
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

/// A session's outbound queue, shared by its entry and every room it is in (a `Recipient`
/// clone costs three allocations, this one none).
type Mailbox = Arc<Outbox>;

struct Member {
    identity: Identity,
    addr: Mailbox,
    rooms: RoomSet,
    /// It holds a place in the cluster's per-user session count.
    counted: bool,
}

#[derive(Default)]
struct Room {
    /// Subscribed sessions and where their frames go.
    members: HashMap<SessionId, Mailbox>,
    /// Sessions joined with `since_offset` whose missed messages are being read: live
    /// frames wait here and follow the replay, so nothing is missed or repeated.
    recovering: HashMap<SessionId, Recovering>,
    /// Users present, with how many of their sessions are subscribed (their names are
    /// in their sessions' identities, not repeated here).
    users: HashMap<Arc<str>, u32>,
    /// How far behind its members are (see [`overload`]).
    load: overload::Load,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The mailbox is full: the client is not reading.
    Slow,
    /// The session is gone.
    Closed,
}

impl Hub {
    /// A hub allowing each user `max_sessions_per_user` concurrent sessions.
    pub fn new(max_sessions_per_user: usize) -> Self {
        Self {
            max_sessions_per_user,
            sessions: HashMap::new(),
            users: HashMap::new(),
            rooms: HashMap::new(),
            stats: HubStats::default(),
            failed: Vec::new(),
            shutting_down: false,
            numbering: Numbering::volatile(),
            next_join: 0,
            waiting: HashMap::new(),
            history: None,
            persist_private: false,
            recovery_buffer: DEFAULT_RECOVERY_BUFFER,
            pulse: None,
            limits: Limits::NONE,
            lag: overload::Lag::default(),
            stall_timeout: Duration::from_secs(5),
            presence_limit: DEFAULT_PRESENCE_LIMIT,
            refused: None,
            cluster: None,
            gaps: HashMap::new(),
        }
    }

    /// Bounds what may wait for one session, in frames (its mailbox's capacity) and in
    /// bytes; a session past either is a slow consumer.
    pub fn with_outbound_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Announces joins and leaves only in rooms of at most `limit` users, and lists at
    /// most `limit` users in a `presence` answer (`metadata.truncated` when cut).
    pub fn with_presence_limit(mut self, limit: usize) -> Self {
        self.presence_limit = limit;
        self
    }

    /// Joins a cluster through `broker`.
    pub fn with_cluster(mut self, broker: Addr<crate::actors::broker::Broker>) -> Self {
        self.numbering.cluster = Some(broker.clone());
        self.cluster = Some(broker);
        self
    }

    /// Refuses to register sessions of the users `refused` holds.
    pub fn with_refused(
        mut self,
        refused: tokio::sync::watch::Receiver<crate::auth::RefusedSubjects>,
    ) -> Self {
        self.refused = Some(refused);
        self
    }

    /// Closes a member that is behind and takes no frame for `timeout`.
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Refuses publishes everywhere while messages reach the hub later than `lag` after
    /// their session sent them (see [`overload`]).
    pub fn with_overload_lag(mut self, lag: Duration) -> Self {
        self.lag = overload::Lag::new(lag);
        self
    }

    /// Sends every session a [`ToSession::Pulse`] this often, driving their heartbeats.
    pub fn with_pulse(mut self, every: Duration) -> Self {
        self.pulse = Some(every);
        self
    }

    /// Stores relayed messages through `writer` (and private ones when `private`).
    pub fn with_history(mut self, writer: Addr<HistoryWriter>, private: bool) -> Self {
        self.history = Some(writer);
        self.persist_private = private;
        self
    }

    /// Numbers room messages with offsets reserved in `db` ahead of use, so no offset is
    /// handed out twice even across a crash; a room without members keeps its numbering
    /// for `room_idle` (see [`sequence`]). Without this, numbering is in memory only.
    pub fn with_numbering(mut self, db: Database, room_idle: Duration) -> Self {
        self.numbering = Numbering::durable(db, room_idle);
        self
    }

    /// Live frames held for a session while its missed messages are read.
    pub fn with_recovery_buffer(mut self, frames: usize) -> Self {
        self.recovery_buffer = frames.max(1);
        self
    }

    /// Sends one frame to one session.
    fn reply(&mut self, session: SessionId, frame: &Frame) {
        if let Some(member) = self.sessions.get(&session) {
            let targets = [(session, &*member.addr)];
            self.stats.frames_out +=
                push_all(targets, &frame.encode(), self.limits, &mut self.failed);
        }
    }

    /// Sends an `error` frame to one session.
    fn error(&mut self, session: SessionId, content: String) {
        self.reply(session, &Frame::error(content));
    }

    /// Sends `frame` to every member of `room` except `except`.
    fn fanout(&mut self, room: &RoomId, except: Option<SessionId>, frame: &ByteString) {
        let Some(room) = self.rooms.get_mut(room) else {
            return;
        };
        self.stats.frames_out +=
            Hub::fanout_counted(room, except, frame, self.limits, &mut self.failed);
        for (session, recovering) in &mut room.recovering {
            if Some(*session) != except && !recovering.hold(frame, self.recovery_buffer) {
                self.failed.push((*session, Failure::Slow));
            }
        }
    }

    /// Disconnects every session whose delivery failed, until no failure is left (removing
    /// one can trigger presence events that fail in turn).
    fn settle(&mut self) {
        while let Some((session, failure)) = self.failed.pop() {
            let Some(member) = self.sessions.get(&session) else {
                continue;
            };
            if failure == Failure::Slow {
                self.stats.slow_consumer_disconnects += 1;
                tracing::warn!(
                    %session,
                    user = %member.identity.user_id,
                    "slow consumer: outbound queue full, disconnecting"
                );
                // `do_send` ignores the mailbox bound: the close goes after the queued frames.
                member.addr.push_control(ToSession::Close(CloseReason {
                    code: CloseCode::Policy,
                    description: Some("slow consumer: outbound queue overflowed".into()),
                }));
            }
            self.remove(session);
        }
    }

    /// Forgets a session: leaves its rooms (with presence events) and its user entry.
    fn remove(&mut self, session: SessionId) {
        let Some(member) = self.sessions.remove(&session) else {
            return;
        };
        if let (Some(broker), true) = (&self.cluster, member.counted) {
            broker.do_send(crate::actors::broker::presence::ReleaseSession {
                user: member.identity.user_id.to_string(),
            });
        }
        for room in member.rooms {
            self.unsubscribe(session, &member.identity, &room);
        }
        if let Some(sessions) = self.users.get_mut(&member.identity.user_id) {
            if sessions.remove(session) {
                self.users.remove(&member.identity.user_id);
                if let Some(broker) = &self.cluster {
                    broker.do_send(crate::actors::broker::UnsubscribeUser(
                        member.identity.user_id.clone(),
                    ));
                }
            }
        }
    }

    /// Removes `session` from `room`; tells the others when the user's last session left,
    /// and drops the room when it is empty.
    fn unsubscribe(&mut self, session: SessionId, who: &Identity, room_id: &RoomId) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        room.members.remove(&session);
        room.recovering.remove(&session);
        let user = &who.user_id;
        let mut user_left = false;
        if who.hidden {
            // Never counted in presence.
        } else if let Some(sessions) = room.users.get_mut(user) {
            *sessions -= 1;
            if *sessions == 0 {
                room.users.remove(user);
                user_left = true;
            }
        }
        if let (Some(broker), true) = (&self.cluster, user_left) {
            // The cluster's view changes; the leave goes out if it was the user's last
            // session anywhere.
            broker.do_send(crate::actors::broker::presence::PresenceChange {
                room: room_id.clone(),
                user: user.to_string(),
                name: who.name.as_deref().map(str::to_owned),
                delta: -1,
                event: presence_event(room_id, "leave", user, who.name.as_deref())
                    .encode()
                    .to_string(),
                origin: None,
                limit: self.presence_limit,
            });
            user_left = false;
        }
        if room.members.is_empty() && room.recovering.is_empty() {
            self.rooms.remove(room_id);
            if let Some(broker) = &self.cluster {
                broker.do_send(crate::actors::broker::UnsubscribeRoom(room_id.clone()));
            }
            self.went_idle(room_id);
            return;
        }
        // Announced if the room had at most the presence limit's users before the leave.
        if user_left && room.users.len() < self.presence_limit {
            let event = presence_event(room_id, "leave", user, who.name.as_deref());
            self.fanout(room_id, None, &event.encode());
        }
    }

    /// Looks up a session that may post to `room`, or tells it why not.
    /// The sender's user id and display name, if the session is a member of `room` (an
    /// error frame tells it otherwise).
    fn member_of(
        &mut self,
        session: SessionId,
        room: &RoomId,
    ) -> Option<(Arc<str>, Option<Arc<str>>)> {
        let identity = &self.sessions.get(&session)?.identity;
        let user = (identity.user_id.clone(), identity.name.clone());
        match self.rooms.get(room) {
            None => self.error(session, format!("unknown room `{room}`")),
            Some(r)
                if !r.members.contains_key(&session) && !r.recovering.contains_key(&session) =>
            {
                self.error(
                    session,
                    format!("not a member of room `{room}`; join it first"),
                )
            }
            Some(_) => return Some(user),
        }
        None
    }

    fn ack(&mut self, session: SessionId, id: String, kind: &str, room: Option<RoomId>) {
        self.reply(session, &ack(id, kind, room));
    }
}

fn ack(id: String, kind: &str, room: Option<RoomId>) -> Frame {
    let mut ack = Frame::system("ack").id(id).content(kind);
    ack.room_id = room;
    ack
}

/// Hands `frame` to each target's bounded queue; returns how many took it and records
/// the rest in `failed`, to be settled once the handler is done.
fn push_all<'a>(
    targets: impl IntoIterator<Item = (SessionId, &'a Outbox)>,
    frame: &ByteString,
    limits: Limits,
    failed: &mut Vec<(SessionId, Failure)>,
) -> u64 {
    let mut sent = 0;
    for (session, outbox) in targets {
        match outbox.push_frame(frame, limits) {
            Ok(()) => sent += 1,
            Err(Refused::Full) => failed.push((session, Failure::Slow)),
            Err(Refused::Closed) => failed.push((session, Failure::Closed)),
        }
    }
    sent
}

/// A presence `join` or `leave` event.
pub(crate) fn presence_event(room: &RoomId, event: &str, user: &str, name: Option<&str>) -> Frame {
    Frame::system("presence")
        .room(room.clone())
        .content(event)
        .details(json!({ "event": event, "user_id": user, "name": name }))
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!("hub started");
        ctx.run_interval(self.numbering.sweep_every(), Self::sweep);
        ctx.run_interval(overload::PROGRESS_EVERY, |hub, _| hub.check_progress());
        if let Some(every) = self.pulse {
            ctx.run_interval(every, |hub, _| {
                for member in hub.sessions.values() {
                    // `do_send`: a full mailbox is a slow consumer, dealt with on delivery.
                    member.addr.push_control(ToSession::Pulse);
                }
            });
        }
    }
}

impl Hub {
    /// Why `msg` may not connect at all, if anything.
    fn refusal(&mut self, msg: &Connect) -> Option<ConnectError> {
        if self.shutting_down {
            self.stats.refused_sessions += 1;
            return Some(ConnectError::ShuttingDown);
        }
        let user = &msg.identity.user_id;
        if self
            .refused
            .as_ref()
            .is_some_and(|refused| refused.borrow().contains(&**user))
        {
            self.stats.refused_sessions += 1;
            return Some(ConnectError::UserDeleted);
        }
        if !msg.identity.hidden
            && self.users.get(user).map_or(0, UserSessions::len) >= self.max_sessions_per_user
        {
            self.stats.refused_sessions += 1;
            return Some(ConnectError::TooManySessions {
                limit: self.max_sessions_per_user,
            });
        }
        None
    }

    /// Registers the session; `counted`: it holds a place in the cluster's count.
    fn register(&mut self, msg: Connect, counted: bool) {
        let user = msg.identity.user_id.clone();
        // A server-API session is not one of its subject's sessions: it gets no private
        // messages, is not closed with them, and costs no user-channel subscription.
        let listed = !msg.identity.hidden;
        match self.users.get_mut(&user).filter(|_| listed) {
            Some(sessions) => sessions.push(msg.session),
            None if listed => {
                if let Some(broker) = &self.cluster {
                    broker.do_send(crate::actors::broker::SubscribeUser(user.clone()));
                }
                self.users.insert(user, UserSessions::One(msg.session));
            }
            None => {}
        }
        tracing::debug!(session = %msg.session, user = %msg.identity.user_id, "session connected");
        self.sessions.insert(
            msg.session,
            Box::new(Member {
                identity: msg.identity,
                addr: msg.addr,
                rooms: RoomSet::default(),
                counted,
            }),
        );
    }
}

impl Handler<Connect> for Hub {
    type Result = ResponseActFuture<Self, Result<(), ConnectError>>;

    fn handle(&mut self, msg: Connect, _ctx: &mut Self::Context) -> Self::Result {
        if let Some(refused) = self.refusal(&msg) {
            return Box::pin(actix::fut::ready(Err(refused)));
        }
        // Server-API sessions hold no place in the cluster's per-user count.
        let (Some(broker), false) = (self.cluster.clone(), msg.identity.hidden) else {
            self.register(msg, false);
            return Box::pin(actix::fut::ready(Ok(())));
        };
        // In a cluster the per-user limit counts every node's sessions.
        let limit = self.max_sessions_per_user;
        let reserve = broker.send(crate::actors::broker::presence::ReserveSession {
            user: msg.identity.user_id.to_string(),
            limit,
        });
        Box::pin(actix::ActorFutureExt::map(
            reserve.into_actor(self),
            move |answer, hub, _ctx| {
                let counted = match answer {
                    Ok(Ok(true)) => true,
                    Ok(Ok(false)) => {
                        hub.stats.refused_sessions += 1;
                        return Err(ConnectError::TooManySessions { limit });
                    }
                    // Redis away: the node's own limit still holds.
                    _ => false,
                };
                if let Some(refused) = hub.refusal(&msg) {
                    if counted {
                        broker.do_send(crate::actors::broker::presence::ReleaseSession {
                            user: msg.identity.user_id.to_string(),
                        });
                    }
                    return Err(refused);
                }
                hub.register(msg, counted);
                Ok(())
            },
        ))
    }
}

impl Handler<Disconnect> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Self::Context) {
        tracing::debug!(session = %msg.session, "session disconnected");
        self.waiting.remove(&msg.session);
        self.remove(msg.session);
        self.run_statements(ctx);
        self.settle();
    }
}

impl Hub {
    /// A join: at once when the room's numbering is open; otherwise the session's
    /// requests wait until it has opened (see [`requests`]).
    pub(super) fn join(&mut self, join: Join, ctx: &mut Context<Self>) {
        if !self.sessions.contains_key(&join.session) {
            return;
        }
        let session = join.session;
        if self.numbering_ready(&join) {
            self.join_now(join, ctx);
        } else {
            self.waiting.entry(session).or_default();
        }
    }
}

impl Hub {
    pub(super) fn leave(&mut self, Leave { session, room }: Leave, ctx: &mut Context<Self>) {
        let Some(member) = self.sessions.get_mut(&session) else {
            return;
        };
        if !member.rooms.remove(&room) {
            self.error(session, format!("not a member of room `{room}`"));
            self.settle();
            return;
        }
        let who = member.identity.clone();
        self.reply(
            session,
            &Frame::system("leave")
                .room(room.clone())
                .content(format!("left {room}")),
        );
        self.unsubscribe(session, &who, &room);
        self.run_statements(ctx);
        self.settle();
    }
}

impl Handler<RemoveFromRoom> for Hub {
    type Result = usize;

    fn handle(&mut self, msg: RemoveFromRoom, ctx: &mut Self::Context) -> usize {
        let sessions: Vec<SessionId> = self
            .users
            .get(msg.user_id.as_str())
            .map(UserSessions::as_slice)
            .unwrap_or_default()
            .to_vec();
        let mut removed = 0;
        for session in sessions {
            let Some(member) = self.sessions.get_mut(&session) else {
                continue;
            };
            if !member.rooms.remove(&msg.room) {
                continue;
            }
            let who = member.identity.clone();
            self.reply(
                session,
                &Frame::system("leave")
                    .room(msg.room.clone())
                    .content(format!("removed from {} by the server", msg.room))
                    .details(serde_json::json!({ "removed": true })),
            );
            self.unsubscribe(session, &who, &msg.room);
            removed += 1;
        }
        self.run_statements(ctx);
        self.settle();
        removed
    }
}

impl Handler<ListRooms> for Hub {
    type Result = MessageResult<ListRooms>;

    fn handle(&mut self, _msg: ListRooms, _ctx: &mut Self::Context) -> Self::Result {
        let mut rooms: Vec<RoomSummary> = self
            .rooms
            .iter()
            .map(|(id, room)| RoomSummary {
                room_id: id.clone(),
                sessions: room.members.len() + room.recovering.len(),
                users: room.users.len(),
            })
            .collect();
        rooms.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        MessageResult(rooms)
    }
}

impl Handler<GetStats> for Hub {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _msg: GetStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(HubStats {
            sessions: self.sessions.len(),
            users: self.users.len(),
            rooms: self.rooms.len(),
            numbered_rooms: self.numbering.len(),
            overloaded_rooms: self.rooms.values().filter(|r| r.load.overloaded()).count(),
            lagging: self.lag.lagging,
            lag_us: u64::try_from(self.lag.last.as_micros()).unwrap_or(u64::MAX),
            ..self.stats.clone()
        })
    }
}

impl Handler<Shutdown> for Hub {
    type Result = usize;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Self::Context) -> usize {
        self.shutting_down = true;
        // A cluster node's clients reconnect to another node at once (1012); a single
        // server is going away (1001).
        let (code, reason) = if self.cluster.is_some() {
            (CloseCode::Restart, "service restart")
        } else {
            (CloseCode::Away, "server shutting down")
        };
        for member in self.sessions.values() {
            member.addr.push_control(ToSession::Close(CloseReason {
                code,
                description: Some(reason.into()),
            }));
        }
        self.sessions.len()
    }
}

impl Handler<CloseUser> for Hub {
    type Result = usize;

    fn handle(&mut self, msg: CloseUser, _ctx: &mut Self::Context) -> usize {
        let Some(sessions) = self.users.get(msg.user_id.as_str()) else {
            return 0;
        };
        for session in sessions.as_slice() {
            if let Some(member) = self.sessions.get(session) {
                member.addr.push_control(ToSession::Close(CloseReason {
                    code: CloseCode::Other(msg.code),
                    description: Some(msg.reason.clone()),
                }));
            }
        }
        sessions.len()
    }
}

impl Handler<Drain> for Hub {
    type Result = ResponseActFuture<Self, ()>;

    /// Every message handled before this one has reached the history writer (the mailbox
    /// is handled in order); then the unused offsets of every room are handed back, and
    /// the answer comes once the database has them.
    fn handle(&mut self, _msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (done, finished) = tokio::sync::oneshot::channel();
        self.return_all(ctx, done);
        Box::pin(
            async move {
                let _ = finished.await;
            }
            .into_actor(self),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, sync::Arc};

    use actix::{Actor, AsyncContext, Context, Handler};

    use super::*;
    use crate::chat::{Identity, SessionId};

    struct Parked;

    impl Actor for Parked {
        type Context = Context<Self>;
    }

    impl Handler<ToSession> for Parked {
        type Result = ();

        fn handle(&mut self, _: ToSession, _: &mut Context<Self>) {}
    }

    fn connect(user: &str, ctx: &Context<Parked>) -> Connect {
        Connect {
            session: SessionId::new(),
            identity: Identity::user(user, false),
            addr: Arc::new(Outbox::new(ctx.address().recipient())),
        }
    }

    /// A session whose token was verified just before its user was marked for deletion
    /// is not registered once the mark is published (its close would otherwise miss it).
    #[actix_rt::test]
    async fn sessions_of_a_user_being_deleted_are_not_registered() {
        let (refused, receiver) = tokio::sync::watch::channel(Arc::new(HashSet::new()));
        let hub = Hub::new(10).with_refused(receiver).start();
        let ctx = Context::<Parked>::new();
        assert_eq!(hub.send(connect("ann", &ctx)).await.unwrap(), Ok(()));
        refused.send_replace(Arc::new(HashSet::from(["ann".to_owned()])));
        assert_eq!(
            hub.send(connect("ann", &ctx)).await.unwrap(),
            Err(ConnectError::UserDeleted)
        );
        assert_eq!(hub.send(connect("bob", &ctx)).await.unwrap(), Ok(()));
        let closed = hub
            .send(CloseUser {
                user_id: "ann".into(),
                code: 4403,
                reason: "user deleted".into(),
            })
            .await
            .unwrap();
        assert_eq!(closed, 1, "ann's earlier session is closed");
    }
}
