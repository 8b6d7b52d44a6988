//! What members send into rooms and to each other: room messages (numbered, relayed,
//! acknowledged, stored), typing, private messages, broadcasts, and the `presence`
//! listing.

use std::{sync::Arc, time::Instant};

use actix::{ActorFutureExt, Addr, AsyncContext, Context, Handler, WrapFuture};

use chrono::{SubsecRound, Utc};
use serde_json::json;

use super::*;

impl Hub {
    /// Numbers, relays, acknowledges and stores one room message (or holds it until the
    /// room's next range of offsets arrives).
    pub(super) fn post(
        &mut self,
        session: SessionId,
        post: Post,
        sent: Option<Instant>,
        ctx: &mut Context<Self>,
    ) {
        let Some((user, name)) = self.member_of(session, &post.room) else {
            return;
        };
        // `None`: a message held for numbering, admitted already.
        if let Some(sent) = sent {
            if !self.admit_publish(session, &post.room, sent.elapsed()) {
                return;
            }
        }
        if let Some(broker) = self.cluster.clone() {
            return self.post_clustered(broker, session, user, name, post, ctx);
        }
        let Some((offset, post)) = self.number(session, post) else {
            return;
        };
        self.stats.messages_in += 1;
        let message = StoredMessage {
            room: post.room,
            offset,
            id: message_id(),
            kind: post.kind,
            sender: user.to_string(),
            sender_name: name.as_deref().map(str::to_owned),
            content: post.content,
            metadata: post.metadata,
            created_at: Utc::now().trunc_subsecs(6),
        };
        self.fanout(
            &message.room,
            Some(session),
            &Frame::stored(&message).encode(),
        );
        self.acknowledge_and_store(session, message);
    }

    /// Acknowledges a numbered message to its sender (with its offset) and hands it to
    /// the history writer.
    fn acknowledge_and_store(&mut self, session: SessionId, message: StoredMessage) {
        let ack = ack(
            message.id.clone(),
            &message.kind,
            Some(message.room.clone()),
        )
        .offset(message.offset);
        self.reply(session, &ack);
        if let Some(writer) = &self.history {
            if writer.try_send(Append(message)).is_err() {
                self.stats.history_dropped += 1;
            }
        }
    }
}

impl Hub {
    /// A room message in cluster mode: Redis numbers, keeps and publishes it (one script),
    /// every node — this one too — relays it from the room's channel; here the sender is
    /// acknowledged with its offset and the message stored once.
    fn post_clustered(
        &mut self,
        broker: Addr<crate::actors::broker::Broker>,
        session: SessionId,
        user: Arc<str>,
        name: Option<Arc<str>>,
        post: Post,
        ctx: &mut Context<Self>,
    ) {
        let mut message = StoredMessage {
            room: post.room,
            offset: 0,
            id: message_id(),
            kind: post.kind,
            sender: user.to_string(),
            sender_name: name.as_deref().map(str::to_owned),
            content: post.content,
            metadata: post.metadata,
            created_at: Utc::now().trunc_subsecs(6),
        };
        let wire = crate::actors::broker::rooms::WireMessage::new(session, &message);
        let publish = broker.send(crate::actors::broker::rooms::PublishRoomMessage {
            room: message.room.clone(),
            payload: serde_json::to_string(&wire).unwrap_or_default(),
            seed: self.top(&message.room),
        });
        ctx.spawn(publish.into_actor(self).map(move |result, hub, _ctx| {
            match result {
                Ok(Ok(position)) => {
                    hub.stats.messages_in += 1;
                    message.offset = position.offset;
                    hub.acknowledge_and_store(session, message);
                }
                Ok(Err(unavailable)) => hub.error(session, unavailable.to_string()),
                Err(_) => hub.error(session, "the cluster broker is not running".into()),
            }
            hub.settle();
        }));
    }

    /// Relays a numbered message from Redis to this node's members, in offset order:
    /// an offset already delivered is dropped; one past a gap (a message Redis lost on
    /// the way) waits while the missing range is read from the room's stream.
    fn deliver_numbered(&mut self, room: &RoomId, offset: u64, payload: String) {
        let Ok(wire) = serde_json::from_str::<crate::actors::broker::rooms::WireMessage>(&payload)
        else {
            tracing::warn!(%room, offset, "an unreadable room message from the cluster was dropped");
            return;
        };
        let (message, origin) = wire.into_message(room.clone(), offset);
        self.deliver_stored(message, origin);
    }

    /// Relays `message` to this node's members unless its offset was delivered already.
    fn deliver_stored(&mut self, message: StoredMessage, origin: Option<SessionId>) {
        let Some(sequence) = self.numbering.rooms.get_mut(&message.room) else {
            return;
        };
        if message.offset <= sequence.last() {
            return;
        }
        sequence.delivered(message.offset);
        self.fanout(&message.room, origin, &Frame::stored(&message).encode());
    }

    /// Reads the room's messages after `after` up to `upto` (from the stream, else the
    /// database) and relays them, then what waited meanwhile; the room's members are told
    /// to re-sync if some could not be found.
    pub(super) fn fill_gap(
        &mut self,
        room: RoomId,
        after: u64,
        upto: u64,
        ctx: &mut Context<Self>,
    ) {
        let Some(broker) = self.cluster.clone() else {
            return;
        };
        self.stats.gaps += 1;
        self.gaps.entry(room.clone()).or_default();
        let read = super::history::replay_clustered(
            broker,
            self.history.clone(),
            room.clone(),
            after,
            upto,
        );
        ctx.spawn(read.into_actor(self).map(move |answer, hub, _ctx| {
            let missed = match answer {
                Ok(Ok(missed)) => missed,
                _ => Vec::new(),
            };
            let found = missed.len() as u64;
            for message in missed {
                hub.deliver_stored(message, None);
            }
            if found < upto - after {
                tracing::warn!(%room, after, upto, found, "messages lost in the cluster; members told to re-sync");
                let resync = Frame::system("resync")
                    .room(room.clone())
                    .content("messages were lost; join again with since_offset to recover")
                    .details(json!({ "after": after, "upto": upto, "missing": upto - after - found }));
                hub.fanout(&room, None, &resync.encode());
            }
            let mut waiting = hub.gaps.remove(&room).unwrap_or_default();
            waiting.sort_by_key(|(offset, _)| *offset);
            for (offset, payload) in waiting {
                hub.deliver_numbered(&room, offset, payload);
            }
            hub.settle();
        }));
    }
}

impl Handler<RemoteRoomMessage> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RemoteRoomMessage, ctx: &mut Self::Context) {
        let Some(sequence) = self.numbering.rooms.get_mut(&msg.room) else {
            return; // not open here (its numbering is read after subscribing)
        };
        if sequence.epoch.as_deref() != Some(msg.epoch.as_str()) {
            // Redis lost the room's state and made it again (offsets still continue).
            sequence.epoch = Some(msg.epoch.clone());
        }
        let last = sequence.last();
        if let Some(waiting) = self.gaps.get_mut(&msg.room) {
            waiting.push((msg.offset, msg.payload));
            return;
        }
        if msg.offset > last + 1 {
            let (room, upto) = (msg.room.clone(), msg.offset - 1);
            self.fill_gap(room.clone(), last, upto, ctx);
            if let Some(waiting) = self.gaps.get_mut(&room) {
                waiting.push((msg.offset, msg.payload));
            }
            return;
        }
        self.deliver_numbered(&msg.room, msg.offset, msg.payload);
        self.settle();
    }
}

impl Handler<CheckRooms> for Hub {
    type Result = ();

    /// After the subscription connection came back: messages published meanwhile were
    /// not delivered here; each open room's offset in Redis tells whether any are missing.
    fn handle(&mut self, _msg: CheckRooms, ctx: &mut Self::Context) {
        let Some(broker) = self.cluster.clone() else {
            return;
        };
        let rooms: Vec<(RoomId, u64)> = self
            .numbering
            .rooms
            .iter()
            .map(|(room, sequence)| (room.clone(), sequence.last()))
            .collect();
        for (room, last) in rooms {
            let open = broker.send(crate::actors::broker::rooms::OpenRoom {
                room: room.clone(),
                seed: last,
            });
            ctx.spawn(open.into_actor(self).map(move |answer, hub, ctx| {
                let Ok(Ok(position)) = answer else {
                    return;
                };
                let current = hub.numbering.rooms.get(&room).map(|s| s.last());
                if let Some(current) = current {
                    if position.offset > current && !hub.gaps.contains_key(&room) {
                        hub.fill_gap(room, current, position.offset, ctx);
                    }
                }
            }));
        }
    }
}

impl Hub {
    pub(super) fn typing(&mut self, msg: Typing) {
        if let Some((user, name)) = self.member_of(msg.session, &msg.room) {
            let overloaded = self.lag.lagging
                || self
                    .rooms
                    .get(&msg.room)
                    .is_some_and(|r| r.load.overloaded());
            if overloaded {
                // A typing indicator is ephemeral: under overload it is simply not relayed.
                return self.settle();
            }
            self.stats.messages_in += 1;
            let frame = Frame::new("typing", &*user)
                .name(name.as_deref())
                .id(message_id())
                .room(msg.room.clone())
                .metadata(msg.metadata);
            match &self.cluster {
                // Every node with members (this one too) relays it from the room's
                // channel; a typing indicator lost while Redis is away is not missed.
                Some(broker) => broker.do_send(crate::actors::broker::PublishRoomFrame {
                    room: msg.room,
                    origin: msg.session,
                    frame: frame.encode(),
                }),
                None => self.fanout(&msg.room, Some(msg.session), &frame.encode()),
            }
        }
        self.settle();
    }
}

impl Hub {
    pub(super) fn private(&mut self, msg: Private, ctx: &mut Context<Self>) {
        let Some(sender) = self.sessions.get(&msg.session) else {
            return;
        };
        let from = sender.identity.user_id.clone();
        let name = sender.identity.name.clone();
        if let Some(broker) = self.cluster.clone() {
            return self.private_clustered(broker, msg, from, name, ctx);
        }
        let targets: Vec<SessionId> = self
            .users
            .get(msg.to.as_str())
            .map(UserSessions::as_slice)
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|s| *s != msg.session)
            .collect();
        if targets.is_empty() {
            self.error(msg.session, format!("user `{}` is not connected", msg.to));
        } else {
            self.stats.messages_in += 1;
            let id = message_id();
            if let (Some(writer), true) = (&self.history, self.persist_private) {
                let stored = StoredPrivate {
                    id: id.clone(),
                    sender: from.to_string(),
                    sender_name: name.as_deref().map(str::to_owned),
                    recipient: msg.to.clone(),
                    content: msg.content.clone(),
                    metadata: msg.metadata.clone(),
                    created_at: Utc::now().trunc_subsecs(6),
                };
                if writer.try_send(AppendPrivate(stored)).is_err() {
                    self.stats.history_dropped += 1;
                }
            }
            let frame = Frame::new("private", &*from)
                .name(name.as_deref())
                .id(id.clone())
                .to(msg.to)
                .content(msg.content)
                .metadata(msg.metadata)
                .encode();
            let sessions = &self.sessions;
            let targets = targets
                .iter()
                .filter_map(|s| Some((*s, &*sessions.get(s)?.addr)));
            self.stats.frames_out += push_all(targets, &frame, self.limits, &mut self.failed);
            self.ack(msg.session, id, "private", None);
        }
        self.settle();
    }
}

impl Hub {
    /// A private message in cluster mode: published on the addressee's channel, which
    /// every node with a session of theirs (this one included) delivers from; stored and
    /// acknowledged once some node took it.
    fn private_clustered(
        &mut self,
        broker: Addr<crate::actors::broker::Broker>,
        msg: Private,
        from: Arc<str>,
        name: Option<Arc<str>>,
        ctx: &mut Context<Self>,
    ) {
        let id = message_id();
        let stored = StoredPrivate {
            id: id.clone(),
            sender: from.to_string(),
            sender_name: name.as_deref().map(str::to_owned),
            recipient: msg.to.clone(),
            content: msg.content.clone(),
            metadata: msg.metadata.clone(),
            created_at: Utc::now().trunc_subsecs(6),
        };
        let frame = Frame::new("private", &*from)
            .name(name.as_deref())
            .id(id.clone())
            .to(msg.to.clone())
            .content(msg.content)
            .metadata(msg.metadata)
            .encode();
        let (session, to) = (msg.session, msg.to.clone());
        let publish = broker.send(crate::actors::broker::PublishPrivate {
            to: msg.to,
            origin: session,
            frame,
        });
        ctx.spawn(publish.into_actor(self).map(move |result, hub, _ctx| {
            match result {
                Ok(Ok(0)) => hub.error(session, format!("user `{to}` is not connected")),
                Ok(Ok(_)) => {
                    hub.stats.messages_in += 1;
                    if let (Some(writer), true) = (&hub.history, hub.persist_private) {
                        if writer.try_send(AppendPrivate(stored)).is_err() {
                            hub.stats.history_dropped += 1;
                        }
                    }
                    hub.ack(session, id, "private", None);
                }
                Ok(Err(unavailable)) => hub.error(session, unavailable.to_string()),
                Err(_) => hub.error(session, "the cluster broker is not running".into()),
            }
            hub.settle();
        }));
    }
}

impl Handler<RemotePrivate> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RemotePrivate, _ctx: &mut Self::Context) {
        let sessions = &self.sessions;
        let targets = self
            .users
            .get(msg.to.as_str())
            .map(UserSessions::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|s| Some(**s) != msg.origin)
            .filter_map(|s| Some((*s, &*sessions.get(s)?.addr)));
        self.stats.frames_out += push_all(targets, &msg.frame, self.limits, &mut self.failed);
        self.settle();
    }
}

impl Handler<RemoteRoomFrame> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RemoteRoomFrame, _ctx: &mut Self::Context) {
        if self.rooms.contains_key(&msg.room) {
            self.fanout(&msg.room, msg.origin, &msg.frame);
        }
        self.settle();
    }
}

impl Handler<RemoteBroadcast> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RemoteBroadcast, _ctx: &mut Self::Context) {
        let targets = self
            .sessions
            .iter()
            .filter(|(s, _)| Some(**s) != msg.origin)
            .map(|(s, m)| (*s, &*m.addr));
        self.stats.frames_out += push_all(targets, &msg.frame, self.limits, &mut self.failed);
        self.settle();
    }
}

impl Hub {
    pub(super) fn broadcast(&mut self, msg: Broadcast, ctx: &mut Context<Self>) {
        let Some(sender) = self.sessions.get(&msg.session) else {
            return;
        };
        self.stats.messages_in += 1;
        let id = message_id();
        let frame = Frame::new("broadcast", &*sender.identity.user_id)
            .name(sender.identity.name.as_deref())
            .id(id.clone())
            .content(msg.content)
            .metadata(msg.metadata)
            .encode();
        if let Some(broker) = self.cluster.clone() {
            // Every node (this one too) delivers it from the broadcast channel.
            let session = msg.session;
            let publish = broker.send(crate::actors::broker::PublishBroadcast {
                origin: session,
                frame,
            });
            ctx.spawn(publish.into_actor(self).map(move |result, hub, _ctx| {
                match result {
                    Ok(Ok(())) => hub.ack(session, id, "broadcast", None),
                    Ok(Err(unavailable)) => hub.error(session, unavailable.to_string()),
                    Err(_) => hub.error(session, "the cluster broker is not running".into()),
                }
                hub.settle();
            }));
            return;
        }
        let targets = self
            .sessions
            .iter()
            .filter(|(s, _)| **s != msg.session)
            .map(|(s, m)| (*s, &*m.addr));
        self.stats.frames_out += push_all(targets, &frame, self.limits, &mut self.failed);
        self.ack(msg.session, id, "broadcast", None);
        self.settle();
    }
}

impl Hub {
    pub(super) fn list_members(
        &mut self,
        ListMembers { session, room }: ListMembers,
        ctx: &mut Context<Self>,
    ) {
        let member = self.member_of(session, &room).is_some();
        if let (Some(broker), true) = (self.cluster.clone(), member) {
            // Everyone in the room on every node.
            let read = broker.send(crate::actors::broker::presence::ReadPresence(room.clone()));
            ctx.spawn(read.into_actor(self).map(move |answer, hub, _ctx| {
                match answer {
                    Ok(Ok(present)) => {
                        let present = present.iter().map(|(user, name, sessions)| {
                            (user.as_str(), name.as_deref(), *sessions)
                        });
                        let listing = presence_listing(room, present, hub.presence_limit);
                        hub.reply(session, &listing);
                    }
                    Ok(Err(unavailable)) => hub.error(session, unavailable.to_string()),
                    Err(_) => hub.error(session, "the cluster broker is not running".into()),
                }
                hub.settle();
            }));
            return;
        }
        if member {
            let subscribed = &self.rooms[&room];
            let sessions = subscribed
                .members
                .keys()
                .chain(subscribed.recovering.keys());
            // user -> (name, sessions), sorted by user id.
            let mut present = std::collections::BTreeMap::new();
            for identity in sessions
                .filter_map(|s| self.sessions.get(s))
                .map(|m| &m.identity)
                .filter(|identity| !identity.hidden)
            {
                let entry = present
                    .entry(&*identity.user_id)
                    .or_insert((identity.name.as_deref(), 0u64));
                entry.1 += 1;
            }
            let present = present
                .into_iter()
                .map(|(user, (name, sessions))| (user, name, sessions));
            let listing = presence_listing(room, present, self.presence_limit);
            self.reply(session, &listing);
        }
        self.settle();
    }
}

/// The `presence` answer: `present` (user, name, sessions), sorted by user id, at most
/// `limit` of them listed.
fn presence_listing<'a>(
    room: RoomId,
    present: impl ExactSizeIterator<Item = (&'a str, Option<&'a str>, u64)>,
    limit: usize,
) -> Frame {
    let count = present.len();
    let members: Vec<_> = present
        .take(limit)
        .map(
            |(user, name, sessions)| json!({ "user_id": user, "name": name, "sessions": sessions }),
        )
        .collect();
    let truncated = members.len() < count;
    Frame::system("presence")
        .room(room)
        .content("members")
        .details(json!({ "count": count, "members": members, "truncated": truncated }))
}
