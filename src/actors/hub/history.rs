//! The hub's history side: room offsets, recovery after `since_offset` (missed messages
//! replayed, live frames held meanwhile) and the `history` request.

use actix::{prelude::SendError, ActorFutureExt, AsyncContext, Handler, MailboxError, WrapFuture};
use bytestring::ByteString;
use serde_json::{json, Value};

use super::{Failure, History, Hub, Outbox, ToSession};
use crate::{
    actors::history::LastMessages,
    chat::{Frame, SessionId},
    db::DbError,
    domain::{RoomId, StoredMessage},
};

/// A session joined with `since_offset` whose missed messages are being read.
pub(super) struct Recovering {
    /// Where its frames go once the replay is out.
    pub(super) addr: Outbox,
    /// Live frames that arrived meanwhile, sent after the replay.
    pub(super) held: Vec<ByteString>,
}

impl Hub {
    /// The last offset handed out in `room` (0 before its first message).
    pub(super) fn top(&self, room: &RoomId) -> u64 {
        self.offsets.get(room).copied().unwrap_or(0)
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
        if let Some((recovered, replayed)) = recovery {
            details["recovered"] = json!(recovered);
            details["replayed"] = json!(replayed);
        }
        Frame::system("join")
            .room(room_id.clone())
            .content(format!("joined {room_id}"))
            .details(details)
    }

    /// Ends a recovery: the confirmation, the missed messages, then the live frames held
    /// meanwhile go out as one batch, and the session becomes an ordinary member.
    pub(super) fn finish_recovery(
        &mut self,
        session: SessionId,
        room_id: &RoomId,
        (since, top): (u64, u64),
        answer: Result<Result<Vec<StoredMessage>, DbError>, MailboxError>,
    ) {
        let Some(recovering) = self
            .rooms
            .get_mut(room_id)
            .and_then(|room| room.recovering.remove(&session))
        else {
            return; // left the room or disconnected meanwhile
        };
        if let Some(room) = self.rooms.get_mut(room_id) {
            room.members.insert(session, recovering.addr.clone());
        }
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
        // Offsets are unique and within since+1..=top, so the count tells whether any is missing.
        let recovered = missed.len() as u64 == top - since;
        self.stats.recoveries += 1;
        self.stats.recovered += u64::from(recovered);
        let mut frames = Vec::with_capacity(1 + missed.len() + recovering.held.len());
        frames.push(
            self.joined(room_id, top, Some((recovered, missed.len())))
                .encode(),
        );
        frames.extend(missed.iter().map(|m| Frame::stored(m).encode()));
        frames.extend(recovering.held);
        let count = frames.len() as u64;
        match recovering.addr.try_send(ToSession::Frames(frames)) {
            Ok(()) => self.stats.frames_out += count,
            Err(SendError::Full(_)) => self.failed.push((session, Failure::Slow)),
            Err(SendError::Closed(_)) => self.failed.push((session, Failure::Closed)),
        }
    }
}

impl Handler<History> for Hub {
    type Result = ();

    fn handle(
        &mut self,
        History {
            session,
            room,
            limit,
        }: History,
        ctx: &mut Self::Context,
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
                            let listed: Vec<Value> = messages
                                .iter()
                                .filter_map(|m| serde_json::to_value(Frame::stored(m)).ok())
                                .collect();
                            let frame = Frame::system("history")
                                .room(room)
                                .content(format!("{} messages", listed.len()))
                                .details(json!({
                                    "offset": top,
                                    "count": listed.len(),
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
