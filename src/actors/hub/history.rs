//! The hub's history side: joins, recovery after `since_offset` (missed messages replayed,
//! live frames held meanwhile) and the `history` request.
//!
//! A session's joins of one room are answered in the order they came, each with its own
//! confirmation and replay: a join sent while an earlier one is still being recovered
//! waits behind it, and the live frames that arrive in between go with the join they
//! follow. So no join goes unanswered and no `recovered: true` covers a gap.

use std::collections::VecDeque;

use actix::{ActorFutureExt, AsyncContext, Context, MailboxError, WrapFuture};
use bytestring::ByteString;
use serde_json::{json, Value};

use super::{presence_event, Failure, History, Hub, Join, Mailbox, Refused, ToSession};
use crate::{
    actors::history::{LastMessages, Replay},
    chat::{Frame, SessionId},
    db::DbError,
    domain::{RoomId, StoredMessage},
};

/// A session with joins of a room waiting for their replays.
pub(super) struct Recovering {
    /// Where its frames go.
    pub(super) addr: Mailbox,
    /// Its joins, oldest first.
    joins: VecDeque<PendingJoin>,
    /// Live frames held in all of them.
    held: usize,
}

/// One join waiting to be answered.
struct PendingJoin {
    /// Tells this join's replay from another's.
    id: u64,
    /// The `since_offset` it carried.
    since: Option<u64>,
    /// The room's last offset when it arrived.
    top: u64,
    /// The missed messages once read (`None` while reading; joins without a replay are
    /// ready at once).
    replay: Option<Vec<StoredMessage>>,
    /// Live frames that arrived after this join (and before the next).
    held: Vec<ByteString>,
}

impl Recovering {
    /// Holds a live frame for the session; `false` when it holds too many already.
    pub(super) fn hold(&mut self, frame: &ByteString, limit: usize) -> bool {
        if self.held >= limit {
            return false;
        }
        if let Some(last) = self.joins.back_mut() {
            last.held.push(frame.clone());
            self.held += 1;
        }
        true
    }
}

impl Hub {
    /// Subscribes a session to a room whose numbering is open, and answers the join: at
    /// once, or after its replay (and any earlier join's) when it must recover.
    pub(super) fn join_now(&mut self, join: Join, ctx: &mut Context<Self>) {
        let Join {
            session,
            room,
            since,
        } = join;
        let top = self.top(&room);
        let writer = self.history.clone();
        let replays =
            since.is_some_and(|since| since < top) && (writer.is_some() || self.cluster.is_some());
        let Some(member) = self.sessions.get_mut(&session) else {
            return;
        };
        let newly = member.rooms.insert(&room);
        let (user, name, addr, hidden) = (
            member.identity.user_id.clone(),
            member.identity.name.clone(),
            member.addr.clone(),
            member.identity.hidden,
        );
        if let (Some(broker), false) = (&self.cluster, self.rooms.contains_key(&room)) {
            broker.do_send(crate::actors::broker::SubscribeRoom(room.clone()));
        }
        let entry = self.rooms.entry(room.clone()).or_default();
        let mut first_of_user = false;
        if newly && !hidden {
            let sessions = entry.users.entry(user.clone()).or_insert(0);
            *sessions += 1;
            // In rooms larger than the presence limit joins are not announced: a storm
            // into one big room would otherwise cost each member a frame per arrival.
            first_of_user = *sessions == 1 && entry.users.len() <= self.presence_limit;
        }
        let queued = replays || entry.recovering.contains_key(&session);
        if queued {
            entry.members.remove(&session);
            self.next_join += 1;
            let id = self.next_join;
            let recovering = entry
                .recovering
                .entry(session)
                .or_insert_with(|| Recovering {
                    addr,
                    joins: VecDeque::new(),
                    held: 0,
                });
            recovering.joins.push_back(PendingJoin {
                id,
                since,
                top,
                replay: (!replays).then(Vec::new),
                held: Vec::new(),
            });
            if let (true, Some(since), Some(broker)) = (replays, since, self.cluster.clone()) {
                // In a cluster the room's stream in Redis has the recent messages of every
                // node; older ones (or a stream Redis lost) come from the database.
                let room = room.clone();
                let read = replay_clustered(broker, writer, room.clone(), since, top);
                ctx.spawn(read.into_actor(self).map(move |answer, hub, _ctx| {
                    hub.replayed(session, &room, id, answer);
                    hub.settle();
                }));
            } else if let (true, Some(since), Some(writer)) = (replays, since, writer) {
                let request = Replay {
                    room: room.clone(),
                    after: since,
                    upto: top,
                };
                let room = room.clone();
                ctx.spawn(
                    writer
                        .send(request)
                        .into_actor(self)
                        .map(move |answer, hub, _ctx| {
                            hub.replayed(session, &room, id, answer);
                            hub.settle();
                        }),
                );
            }
        } else {
            entry.members.insert(session, addr);
        }
        let first_here = newly && !hidden && entry_users(self, &room, &user) == 1;
        if let (Some(broker), true) = (&self.cluster, first_here) {
            // The cluster's view changes; the join goes out if it was the user's first
            // session anywhere.
            broker.do_send(crate::actors::broker::presence::PresenceChange {
                room: room.clone(),
                user: user.to_string(),
                name: name.as_deref().map(str::to_owned),
                delta: 1,
                event: presence_event(&room, "join", &user, name.as_deref())
                    .encode()
                    .to_string(),
                origin: Some(session),
                limit: self.presence_limit,
            });
        } else if first_of_user {
            let event = presence_event(&room, "join", &user, name.as_deref());
            self.fanout(&room, Some(session), &event.encode());
        }
        if queued {
            self.answer_joins(session, &room);
        } else {
            // Nothing to replay: up to date (recovered), or a position this server never
            // handed out or no longer keeps (not recovered: the client must resync).
            let recovery = since.map(|since| {
                self.stats.recoveries += 1;
                self.stats.recovered += u64::from(since == top);
                (since == top, 0)
            });
            let confirmation = self.joined(&room, top, recovery);
            self.reply(session, &confirmation);
        }
    }

    /// The `join` confirmation: member counts, the room's last offset and, after a
    /// `since_offset`, whether every missed message was replayed.
    pub(super) fn joined(
        &self,
        room_id: &RoomId,
        top: u64,
        recovery: Option<(bool, usize)>,
    ) -> Frame {
        let (users, sessions) = self.rooms.get(room_id).map_or((0, 0), |r| {
            (r.users.len(), r.members.len() + r.recovering.len())
        });
        let mut details = json!({ "users": users, "sessions": sessions, "offset": top });
        if let Some(epoch) = self
            .numbering
            .rooms
            .get(room_id)
            .and_then(|sequence| sequence.epoch.as_deref())
        {
            details["epoch"] = json!(epoch);
        }
        if let Some((recovered, replayed)) = recovery {
            details["recovered"] = json!(recovered);
            details["replayed"] = json!(replayed);
        }
        Frame::system("join")
            .room(room_id.clone())
            .content(format!("joined {room_id}"))
            .details(details)
    }

    /// A join's missed messages have been read.
    fn replayed(
        &mut self,
        session: SessionId,
        room_id: &RoomId,
        id: u64,
        answer: Result<Result<Vec<StoredMessage>, DbError>, MailboxError>,
    ) {
        let missed = match answer {
            Ok(Ok(messages)) => messages,
            Ok(Err(error)) => {
                tracing::warn!(%error, room = %room_id, "could not read missed messages");
                Vec::new()
            }
            Err(error) => {
                tracing::warn!(%error, "history writer unavailable");
                Vec::new()
            }
        };
        let pending = self
            .rooms
            .get_mut(room_id)
            .and_then(|room| room.recovering.get_mut(&session))
            .and_then(|recovering| recovering.joins.iter_mut().find(|join| join.id == id));
        let Some(pending) = pending else {
            return; // left the room or disconnected meanwhile
        };
        pending.replay = Some(missed);
        self.answer_joins(session, room_id);
    }

    /// Answers the session's joins of the room whose replays are ready, oldest first: each
    /// with its confirmation, its missed messages, then the live frames that followed it,
    /// in one batch. With none left waiting, the session becomes an ordinary member.
    fn answer_joins(&mut self, session: SessionId, room_id: &RoomId) {
        loop {
            let Some(recovering) = self
                .rooms
                .get_mut(room_id)
                .and_then(|room| room.recovering.get_mut(&session))
            else {
                return;
            };
            if recovering
                .joins
                .front()
                .is_none_or(|join| join.replay.is_none())
            {
                break;
            }
            let Some(join) = recovering.joins.pop_front() else {
                break;
            };
            recovering.held -= join.held.len();
            let addr = recovering.addr.clone();
            let replay = join.replay.unwrap_or_default();
            let recovery = join.since.map(|since| {
                // Offsets are unique and within since+1..=top, so the count tells whether
                // any is missing.
                let recovered = if since < join.top {
                    replay.len() as u64 == join.top - since
                } else {
                    since == join.top
                };
                self.stats.recoveries += 1;
                self.stats.recovered += u64::from(recovered);
                (recovered, replay.len())
            });
            let mut frames = Vec::with_capacity(1 + replay.len() + join.held.len());
            frames.push(self.joined(room_id, join.top, recovery).encode());
            frames.extend(replay.iter().map(|m| Frame::stored(m).encode()));
            frames.extend(join.held);
            let count = frames.len();
            let bytes = frames.iter().map(|f| f.len()).sum::<usize>();
            let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
            let batch = ToSession::Frames(frames);
            match addr.push(batch, count as u32, bytes, self.limits) {
                Ok(()) => self.stats.frames_out += count as u64,
                Err(Refused::Full) => self.failed.push((session, Failure::Slow)),
                Err(Refused::Closed) => self.failed.push((session, Failure::Closed)),
            }
        }
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        if room
            .recovering
            .get(&session)
            .is_some_and(|recovering| recovering.joins.is_empty())
        {
            if let Some(recovering) = room.recovering.remove(&session) {
                room.members.insert(session, recovering.addr);
            }
        }
    }
}

/// How many of `user`'s sessions are in `room` on this node.
fn entry_users(hub: &Hub, room: &RoomId, user: &str) -> u32 {
    hub.rooms
        .get(room)
        .and_then(|r| r.users.get(user))
        .copied()
        .unwrap_or(0)
}

/// The messages of `room` after `since` up to `top` for a recovering join in cluster
/// mode: from the room's stream in Redis when it holds them all, else from the database.
pub(super) async fn replay_clustered(
    broker: actix::Addr<crate::actors::broker::Broker>,
    writer: Option<actix::Addr<crate::actors::history::HistoryWriter>>,
    room: RoomId,
    since: u64,
    top: u64,
) -> Result<Result<Vec<StoredMessage>, DbError>, MailboxError> {
    let read = crate::actors::broker::rooms::ReadRoom {
        room: room.clone(),
        after: since,
        upto: top,
    };
    if let Ok(Ok(entries)) = broker.send(read).await {
        if entries.len() as u64 == top - since {
            let messages = entries
                .into_iter()
                .filter_map(|(offset, payload)| {
                    let wire: crate::actors::broker::rooms::WireMessage =
                        serde_json::from_str(&payload).ok()?;
                    Some(wire.into_message(room.clone(), offset).0)
                })
                .collect();
            return Ok(Ok(messages));
        }
    }
    match writer {
        Some(writer) => {
            writer
                .send(Replay {
                    room,
                    after: since,
                    upto: top,
                })
                .await
        }
        None => Ok(Ok(Vec::new())),
    }
}

impl Hub {
    pub(super) fn history(
        &mut self,
        History {
            session,
            room,
            limit,
        }: History,
        ctx: &mut Context<Self>,
    ) {
        if self.member_of(session, &room).is_none() {
            return self.settle();
        }
        let Some(writer) = self.history.clone() else {
            self.error(session, "history is not kept on this server".into());
            return self.settle();
        };
        let top = self.top(&room);
        let request = LastMessages {
            room: room.clone(),
            upto: top,
            limit,
        };
        ctx.spawn(
            writer
                .send(request)
                .into_actor(self)
                .map(move |answer, hub, _ctx| {
                    match answer {
                        Ok(Ok(messages)) => {
                            let budget = (hub.limits.bytes / 2) as usize;
                            let (listed, truncated) = newest_within(&messages, budget);
                            let frame = Frame::system("history")
                                .room(room)
                                .content(format!("{} messages", listed.len()))
                                .details(json!({
                                    "offset": top,
                                    "count": listed.len(),
                                    "truncated": truncated,
                                    "messages": listed,
                                }));
                            hub.reply(session, &frame);
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(%error, %room, "could not read history");
                            hub.error(session, "history is unavailable right now".into());
                        }
                        Err(_) => hub.error(session, "history is unavailable right now".into()),
                    }
                    hub.settle();
                }),
        );
    }
}

/// The newest of `messages` (oldest first) whose frames fit in `budget` bytes, oldest
/// first, and whether older ones were left out: a `history` answer counts against its
/// connection's outbound bytes like everything else, so it is kept to half of them.
fn newest_within(messages: &[StoredMessage], budget: usize) -> (Vec<Value>, bool) {
    let mut kept = Vec::new();
    let mut used = 0;
    for message in messages.iter().rev() {
        let Ok(value) = serde_json::to_value(Frame::stored(message)) else {
            continue;
        };
        used += value.to_string().len() + 1;
        if used > budget && !kept.is_empty() {
            kept.reverse();
            return (kept, true);
        }
        kept.push(value);
    }
    kept.reverse();
    (kept, false)
}
