//! The chat hub: the one registry of connected sessions, users and rooms.
//!
//! Sessions ask it to join, leave and route by message; it answers with frames sent to
//! the sessions' mailboxes. A relayed message is serialised once and each delivery is a
//! `try_send` of shared bytes into the member's bounded mailbox. A member whose mailbox is
//! full is a slow consumer: it gets nothing more, is removed from every room, and is told
//! to close with 1008 — after the frames already queued, so it can tell where its stream
//! ended. Nobody else waits for it.

pub mod messages;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use actix::{prelude::SendError, Actor, Context, Handler, MessageResult, Recipient};
use actix_web_actors::ws::{CloseCode, CloseReason};
use bytestring::ByteString;
use serde_json::json;

pub use messages::*;

use crate::{
    chat::{frame::message_id, Frame, Identity, SessionId},
    domain::RoomId,
};

/// Owns every session, user and room. Start one per server.
pub struct Hub {
    /// Concurrent sessions one user may hold.
    max_sessions_per_user: usize,
    /// Connected sessions.
    sessions: HashMap<SessionId, Member>,
    /// Sessions of each connected user.
    users: HashMap<Arc<str>, Vec<SessionId>>,
    /// Rooms with at least one member.
    rooms: HashMap<RoomId, Room>,
    /// Counters (the gauges are computed when asked).
    stats: HubStats,
    /// Sessions whose last delivery failed, settled after each handler.
    failed: Vec<(SessionId, Failure)>,
    /// Set by [`Shutdown`]: new sessions are refused.
    shutting_down: bool,
}

struct Member {
    identity: Identity,
    addr: Recipient<ToSession>,
    rooms: HashSet<RoomId>,
}

#[derive(Default)]
struct Room {
    /// Subscribed sessions and where their frames go.
    members: HashMap<SessionId, Recipient<ToSession>>,
    /// Users present, with how many of their sessions are subscribed.
    users: HashMap<Arc<str>, RoomUser>,
}

struct RoomUser {
    name: Option<String>,
    sessions: usize,
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
        }
    }

    /// Sends one frame to one session.
    fn reply(&mut self, session: SessionId, frame: &Frame) {
        if let Some(member) = self.sessions.get(&session) {
            let targets = [(session, &member.addr)];
            self.stats.frames_out += push_all(targets, &frame.encode(), &mut self.failed);
        }
    }

    /// Sends an `error` frame to one session.
    fn error(&mut self, session: SessionId, content: String) {
        self.reply(session, &Frame::error(content));
    }

    /// Sends `frame` to every member of `room` except `except`.
    fn fanout(&mut self, room: &RoomId, except: Option<SessionId>, frame: &ByteString) {
        let Some(room) = self.rooms.get(room) else {
            return;
        };
        let targets = room
            .members
            .iter()
            .filter(|(session, _)| Some(**session) != except)
            .map(|(session, addr)| (*session, addr));
        self.stats.frames_out += push_all(targets, frame, &mut self.failed);
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
                member.addr.do_send(ToSession::Close(CloseReason {
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
        for room in member.rooms {
            self.unsubscribe(session, &member.identity.user_id, &room);
        }
        if let Some(sessions) = self.users.get_mut(&member.identity.user_id) {
            sessions.retain(|s| *s != session);
            if sessions.is_empty() {
                self.users.remove(&member.identity.user_id);
            }
        }
    }

    /// Removes `session` from `room`; tells the others when the user's last session left,
    /// and drops the room when it is empty.
    fn unsubscribe(&mut self, session: SessionId, user: &Arc<str>, room_id: &RoomId) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        room.members.remove(&session);
        let mut user_left = None;
        if let Some(entry) = room.users.get_mut(user) {
            entry.sessions -= 1;
            if entry.sessions == 0 {
                user_left = room.users.remove(user);
            }
        }
        if room.members.is_empty() {
            self.rooms.remove(room_id);
            return;
        }
        if let Some(left) = user_left {
            let event = presence_event(room_id, "leave", user, left.name.as_deref());
            self.fanout(room_id, None, &event.encode());
        }
    }

    /// Looks up a session that may post to `room`, or tells it why not.
    fn member_of(&mut self, session: SessionId, room: &RoomId) -> Option<Arc<str>> {
        let user = self.sessions.get(&session)?.identity.user_id.clone();
        match self.rooms.get(room) {
            None => self.error(session, format!("unknown room `{room}`")),
            Some(r) if !r.members.contains_key(&session) => self.error(
                session,
                format!("not a member of room `{room}`; join it first"),
            ),
            Some(_) => return Some(user),
        }
        None
    }

    fn ack(&mut self, session: SessionId, id: String, kind: &str, room: Option<RoomId>) {
        let mut ack = Frame::system("ack").id(id).content(kind);
        ack.room_id = room;
        self.reply(session, &ack);
    }
}

/// Hands `frame` to each target's bounded mailbox; returns how many took it and records
/// the rest in `failed`, to be settled once the handler is done.
fn push_all<'a>(
    targets: impl IntoIterator<Item = (SessionId, &'a Recipient<ToSession>)>,
    frame: &ByteString,
    failed: &mut Vec<(SessionId, Failure)>,
) -> u64 {
    let mut sent = 0;
    for (session, addr) in targets {
        match addr.try_send(ToSession::Frame(frame.clone())) {
            Ok(()) => sent += 1,
            Err(SendError::Full(_)) => failed.push((session, Failure::Slow)),
            Err(SendError::Closed(_)) => failed.push((session, Failure::Closed)),
        }
    }
    sent
}

fn presence_event(room: &RoomId, event: &str, user: &str, name: Option<&str>) -> Frame {
    Frame::system("presence")
        .room(room.clone())
        .content(event)
        .details(json!({ "event": event, "user_id": user, "name": name }))
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!("hub started");
    }
}

impl Handler<Connect> for Hub {
    type Result = Result<(), ConnectError>;

    fn handle(&mut self, msg: Connect, _ctx: &mut Self::Context) -> Self::Result {
        if self.shutting_down {
            self.stats.refused_sessions += 1;
            return Err(ConnectError::ShuttingDown);
        }
        let user = msg.identity.user_id.clone();
        if self.users.get(&user).map_or(0, Vec::len) >= self.max_sessions_per_user {
            self.stats.refused_sessions += 1;
            return Err(ConnectError::TooManySessions {
                limit: self.max_sessions_per_user,
            });
        }
        self.users.entry(user).or_default().push(msg.session);
        tracing::debug!(session = %msg.session, user = %msg.identity.user_id, "session connected");
        self.sessions.insert(
            msg.session,
            Member {
                identity: msg.identity,
                addr: msg.addr,
                rooms: HashSet::new(),
            },
        );
        Ok(())
    }
}

impl Handler<Disconnect> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _ctx: &mut Self::Context) {
        tracing::debug!(session = %msg.session, "session disconnected");
        self.remove(msg.session);
        self.settle();
    }
}

impl Handler<Join> for Hub {
    type Result = ();

    fn handle(&mut self, Join { session, room }: Join, _ctx: &mut Self::Context) {
        let Some(member) = self.sessions.get_mut(&session) else {
            return;
        };
        let newly = member.rooms.insert(room.clone());
        let (user, name, addr) = (
            member.identity.user_id.clone(),
            member.identity.name.clone(),
            member.addr.clone(),
        );
        let entry = self.rooms.entry(room.clone()).or_default();
        let mut first_of_user = false;
        if newly {
            entry.members.insert(session, addr);
            let present = entry.users.entry(user.clone()).or_insert(RoomUser {
                name: name.clone(),
                sessions: 0,
            });
            present.sessions += 1;
            first_of_user = present.sessions == 1;
        }
        let confirmation = Frame::system("join")
            .room(room.clone())
            .content(format!("joined {room}"))
            .details(json!({ "users": entry.users.len(), "sessions": entry.members.len() }));
        self.reply(session, &confirmation);
        if first_of_user {
            let event = presence_event(&room, "join", &user, name.as_deref());
            self.fanout(&room, Some(session), &event.encode());
        }
        self.settle();
    }
}

impl Handler<Leave> for Hub {
    type Result = ();

    fn handle(&mut self, Leave { session, room }: Leave, _ctx: &mut Self::Context) {
        let Some(member) = self.sessions.get_mut(&session) else {
            return;
        };
        if !member.rooms.remove(&room) {
            self.error(session, format!("not a member of room `{room}`"));
            self.settle();
            return;
        }
        let user = member.identity.user_id.clone();
        self.reply(
            session,
            &Frame::system("leave")
                .room(room.clone())
                .content(format!("left {room}")),
        );
        self.unsubscribe(session, &user, &room);
        self.settle();
    }
}

impl Handler<RoomMessage> for Hub {
    type Result = ();

    fn handle(&mut self, RoomMessage { session, post }: RoomMessage, _ctx: &mut Self::Context) {
        if let Some(user) = self.member_of(session, &post.room) {
            self.stats.messages_in += 1;
            let id = message_id();
            let frame = Frame::new(post.kind.as_str(), &*user)
                .id(id.clone())
                .room(post.room.clone())
                .content(post.content)
                .metadata(post.metadata);
            self.fanout(&post.room, Some(session), &frame.encode());
            self.ack(session, id, &post.kind, Some(post.room));
        }
        self.settle();
    }
}

impl Handler<Typing> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Typing, _ctx: &mut Self::Context) {
        if let Some(user) = self.member_of(msg.session, &msg.room) {
            self.stats.messages_in += 1;
            let frame = Frame::new("typing", &*user)
                .id(message_id())
                .room(msg.room.clone())
                .metadata(msg.metadata);
            self.fanout(&msg.room, Some(msg.session), &frame.encode());
        }
        self.settle();
    }
}

impl Handler<Private> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Private, _ctx: &mut Self::Context) {
        let Some(sender) = self.sessions.get(&msg.session) else {
            return;
        };
        let from = sender.identity.user_id.clone();
        let targets: Vec<SessionId> = self
            .users
            .get(msg.to.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|s| *s != msg.session)
            .collect();
        if targets.is_empty() {
            self.error(msg.session, format!("user `{}` is not connected", msg.to));
        } else {
            self.stats.messages_in += 1;
            let id = message_id();
            let frame = Frame::new("private", &*from)
                .id(id.clone())
                .to(msg.to)
                .content(msg.content)
                .metadata(msg.metadata)
                .encode();
            let sessions = &self.sessions;
            let targets = targets
                .iter()
                .filter_map(|s| Some((*s, &sessions.get(s)?.addr)));
            self.stats.frames_out += push_all(targets, &frame, &mut self.failed);
            self.ack(msg.session, id, "private", None);
        }
        self.settle();
    }
}

impl Handler<Broadcast> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, _ctx: &mut Self::Context) {
        let Some(sender) = self.sessions.get(&msg.session) else {
            return;
        };
        self.stats.messages_in += 1;
        let id = message_id();
        let frame = Frame::new("broadcast", &*sender.identity.user_id)
            .id(id.clone())
            .content(msg.content)
            .metadata(msg.metadata)
            .encode();
        let targets = self
            .sessions
            .iter()
            .filter(|(s, _)| **s != msg.session)
            .map(|(s, m)| (*s, &m.addr));
        self.stats.frames_out += push_all(targets, &frame, &mut self.failed);
        self.ack(msg.session, id, "broadcast", None);
        self.settle();
    }
}

impl Handler<ListMembers> for Hub {
    type Result = ();

    fn handle(&mut self, ListMembers { session, room }: ListMembers, _ctx: &mut Self::Context) {
        if self.member_of(session, &room).is_some() {
            let mut members: Vec<_> = self.rooms[&room]
                .users
                .iter()
                .map(|(user, present)| {
                    json!({ "user_id": &**user, "name": present.name, "sessions": present.sessions })
                })
                .collect();
            members.sort_by(|a, b| a["user_id"].as_str().cmp(&b["user_id"].as_str()));
            let listing = Frame::system("presence")
                .room(room)
                .content("members")
                .details(json!({ "count": members.len(), "members": members }));
            self.reply(session, &listing);
        }
        self.settle();
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
                sessions: room.members.len(),
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
            ..self.stats.clone()
        })
    }
}

impl Handler<Shutdown> for Hub {
    type Result = usize;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Self::Context) -> usize {
        self.shutting_down = true;
        for member in self.sessions.values() {
            member.addr.do_send(ToSession::Close(CloseReason {
                code: CloseCode::Away,
                description: Some("server shutting down".into()),
            }));
        }
        self.sessions.len()
    }
}
