//! The server API's way into the hub: a backend's call is a *hidden* session — an actor the
//! hub registers like a WebSocket session (same joins, numbering, storage, recovery,
//! slow-consumer rule), but never in presence and not counted against the per-user session
//! limit. Frames the hub sends it are forwarded, parsed, to the calling front door through
//! a bounded channel; a caller that does not keep up ends the session (the hub's own rule
//! for slow members, applied one step earlier).
//!
//! [`ApiSession::open`] registers one; [`Opened`] sends requests and awaits their answers,
//! and disconnects when dropped.

use std::{sync::Arc, time::Duration};

use actix::prelude::*;
use serde_json::{Map, Value};
use tokio::sync::{
    mpsc::{self, error::TrySendError},
    oneshot,
};

use crate::{
    actors::hub::{
        ConnectError, Disconnect, History, Hub, Join, ListMembers, Outbox, Private, RoomMessage,
        ToSession,
    },
    chat::{command::Post, Identity, SessionId},
    domain::RoomId,
};

/// How long a request waits for the hub's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the hub told the session, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiEvent {
    /// A text frame, parsed.
    Frame(Value),
    /// The hub closed the session (code, reason) — e.g. 1008 for a slow consumer.
    Closed(u16, String),
    /// The caller fell more than its buffer behind: the session was ended.
    TooSlow,
}

/// Why an API request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The hub refused or answered with an `error` frame (bad room, not allowed, …).
    #[error("{0}")]
    Refused(String),
    /// The hub is not running or the session ended.
    #[error("the chat hub is unavailable: {0}")]
    Unavailable(String),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// What travels from the actor to [`Opened`]: a batch of frames as the hub sent it (a
/// replay is one batch), or the end.
enum Batch {
    Frames(Vec<Value>),
    Closed(u16, String),
}

/// The actor behind a hidden session.
pub struct ApiSession {
    events: mpsc::Sender<Batch>,
    /// Fired when the caller fell `buffer` batches behind.
    overflow: Option<oneshot::Sender<()>>,
    outbox: Option<Arc<Outbox>>,
    /// Whether the room's traffic (messages, typing, presence events) is forwarded; a
    /// session that only asks (publish, presence, history) drops it, so a busy room
    /// cannot overflow it while it waits for its answer.
    listening: bool,
}

/// Whether an encoded frame is a relayed room message, read from its head without
/// parsing it: frames serialise `id` (no quotes inside) then `type` first.
fn relayed_message(frame: &str) -> bool {
    frame.starts_with(r#"{"id":""#)
        && frame
            .split_once(r#"","type":""#)
            .is_some_and(|(_, rest)| rest.starts_with(r#"message""#))
}

/// Whether `frame` is room traffic rather than an answer to the session.
fn traffic(frame: &Value) -> bool {
    match frame["type"].as_str() {
        Some("message" | "typing" | "private" | "broadcast") => true,
        Some("presence") => frame["content"] != "members",
        _ => false,
    }
}

impl Actor for ApiSession {
    type Context = Context<Self>;
}

impl ApiSession {
    fn forward(&mut self, batch: Batch, ctx: &mut Context<Self>) {
        match self.events.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                // The caller is not reading: tell it and stop.
                if let Some(overflow) = self.overflow.take() {
                    let _ = overflow.send(());
                }
                ctx.stop();
            }
            Err(TrySendError::Closed(_)) => ctx.stop(),
        }
    }
}

impl Handler<ToSession> for ApiSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        let frames = match msg {
            ToSession::Frame(frame) => vec![frame],
            ToSession::Frames(frames) => frames,
            ToSession::Close(reason) => {
                let code = u16::from(reason.code);
                self.forward(
                    Batch::Closed(code, reason.description.unwrap_or_default()),
                    ctx,
                );
                ctx.stop();
                return;
            }
            ToSession::Pulse => return,
        };
        if let Some(outbox) = &self.outbox {
            outbox.taken(frames.len(), frames.iter().map(|f| f.len()).sum());
        }
        let listening = self.listening;
        let values: Vec<Value> = frames
            .iter()
            // A session that only asks skips relayed messages without parsing them.
            .filter(|frame| listening || !relayed_message(frame))
            .filter_map(|frame| match serde_json::from_str(frame) {
                Ok(value) => Some(value),
                Err(error) => {
                    tracing::warn!(%error, "the hub sent a frame that is not JSON");
                    None
                }
            })
            .filter(|value| listening || !traffic(value))
            .collect();
        if !values.is_empty() {
            self.forward(Batch::Frames(values), ctx);
        }
    }
}

/// Whether the hub's refusal is one to retry (the cluster or the hub is busy or away),
/// not a fault of the request. The hub's error frames are text; these are the ones its
/// retryable refusals use ("the cluster is unavailable …", "room … is busy …",
/// "overloaded …").
fn retryable(reason: &str) -> bool {
    ["unavailable", "is busy", "overloaded", "not running"]
        .iter()
        .any(|marker| reason.contains(marker))
}

/// A registered hidden session. Dropping it leaves every room and disconnects.
pub struct Opened {
    session: SessionId,
    hub: Arc<Addr<Hub>>,
    events: mpsc::Receiver<Batch>,
    /// Frames of the batch being read.
    pending: std::collections::VecDeque<Value>,
    /// Resolves when the caller fell behind; `None` once it resolved either way.
    overflowed: Option<oneshot::Receiver<()>>,
    too_slow: bool,
}

impl ApiSession {
    /// Registers a hidden session for `identity`, forwarding at most `buffer` unread
    /// frames before it ends as too slow.
    /// The actor runs on `arbiter` (front doors like tonic run outside actix); it forwards
    /// the room's traffic only when `listening`.
    pub async fn open(
        hub: Arc<Addr<Hub>>,
        arbiter: &actix::ArbiterHandle,
        identity: Identity,
        buffer: usize,
        listening: bool,
    ) -> Result<Opened, ApiError> {
        let (events, receiver) = mpsc::channel(buffer.max(2));
        let (overflow, overflowed) = oneshot::channel();
        // As deep as a WebSocket session's mailbox: the hub's own slow-consumer rule
        // counts frames against it.
        let addr = ApiSession::start_in_arbiter(arbiter, move |ctx| {
            ctx.set_mailbox_capacity(buffer.max(2));
            ApiSession {
                events,
                overflow: Some(overflow),
                outbox: None,
                listening,
            }
        });
        let outbox = Arc::new(Outbox::new(addr.clone().recipient()));
        addr.send(SetOutbox(outbox.clone()))
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let session = SessionId::new();
        let connect = crate::actors::hub::Connect {
            session,
            identity,
            addr: outbox,
        };
        match hub.send(connect).await {
            Ok(Ok(())) => Ok(Opened {
                session,
                hub,
                events: receiver,
                pending: std::collections::VecDeque::new(),
                overflowed: Some(overflowed),
                too_slow: false,
            }),
            Ok(Err(ConnectError::ShuttingDown)) => Err(ApiError::ShuttingDown),
            Ok(Err(refused)) => Err(ApiError::Refused(refused.to_string())),
            Err(error) => Err(ApiError::Unavailable(error.to_string())),
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct SetOutbox(Arc<Outbox>);

impl Handler<SetOutbox> for ApiSession {
    type Result = ();

    fn handle(&mut self, msg: SetOutbox, _ctx: &mut Self::Context) {
        self.outbox = Some(msg.0);
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        // The hub forgets the session; the actor stops once nothing holds its outbox.
        self.hub.do_send(Disconnect {
            session: self.session,
        });
    }
}

impl Opened {
    /// The next event, waiting as long as it takes (`None`: the session ended).
    pub async fn next(&mut self) -> Option<ApiEvent> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(ApiEvent::Frame(frame));
            }
            match self.events.recv().await {
                Some(Batch::Frames(frames)) => self.pending.extend(frames),
                Some(Batch::Closed(code, reason)) => return Some(ApiEvent::Closed(code, reason)),
                None if self.is_too_slow() => return Some(ApiEvent::TooSlow),
                None => return None,
            }
        }
    }

    /// Resolves once the caller fell too far behind and the session was ended (what was
    /// forwarded before can still be read with [`next`](Self::next)).
    pub async fn overflowed(&mut self) {
        if self.too_slow {
            return;
        }
        if let Some(overflowed) = self.overflowed.as_mut() {
            let fired = overflowed.await.is_ok();
            self.overflowed = None;
            if fired {
                self.too_slow = true;
                return;
            }
        }
        std::future::pending::<()>().await;
    }

    fn is_too_slow(&mut self) -> bool {
        if let Some(overflowed) = self.overflowed.as_mut() {
            match overflowed.try_recv() {
                Ok(()) => {
                    self.too_slow = true;
                    self.overflowed = None;
                }
                Err(oneshot::error::TryRecvError::Closed) => self.overflowed = None,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        self.too_slow
    }

    /// Waits (bounded) for the first frame `wanted` accepts; an `error` frame (for
    /// `room`, or without a room) fails the request.
    async fn answer(
        &mut self,
        room: Option<&RoomId>,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Value, ApiError> {
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.next())
                .await
                .map_err(|_| ApiError::Unavailable("the chat hub did not answer in time".into()))?;
            match event {
                Some(ApiEvent::Frame(frame)) => {
                    if frame["type"] == "error"
                        && (frame["room_id"].is_null()
                            || room.is_some_and(|r| frame["room_id"] == r.as_str()))
                    {
                        let reason = frame["content"].as_str().unwrap_or("refused");
                        return Err(
                            if retryable(reason) || frame["metadata"]["code"] == "overloaded" {
                                ApiError::Unavailable(reason.to_owned())
                            } else {
                                ApiError::Refused(reason.to_owned())
                            },
                        );
                    }
                    if wanted(&frame) {
                        return Ok(frame);
                    }
                }
                Some(ApiEvent::Closed(code, reason)) => {
                    return Err(if code == 1001 || code == 1012 {
                        ApiError::ShuttingDown
                    } else {
                        ApiError::Unavailable(format!("closed {code}: {reason}"))
                    })
                }
                Some(ApiEvent::TooSlow) | None => {
                    return Err(ApiError::Unavailable("the session ended".into()))
                }
            }
        }
    }

    /// Joins `room` (replaying what followed `since`); answers the confirmation frame.
    pub async fn join(&mut self, room: &RoomId, since: Option<u64>) -> Result<Value, ApiError> {
        self.hub.do_send(Join {
            session: self.session,
            room: room.clone(),
            since,
        });
        self.answer(Some(room), |f| {
            f["type"] == "join" && f["room_id"] == room.as_str()
        })
        .await
    }

    /// Publishes to `room` (joined) as a member would; answers the `ack` frame (its
    /// `offset`).
    pub async fn publish(
        &mut self,
        room: &RoomId,
        content: String,
        metadata: Option<Map<String, Value>>,
    ) -> Result<Value, ApiError> {
        self.hub.do_send(RoomMessage {
            session: self.session,
            post: Post {
                kind: "message".into(),
                room: room.clone(),
                content,
                metadata,
            },
            sent: std::time::Instant::now(),
        });
        self.answer(Some(room), |f| f["type"] == "ack").await
    }

    /// Sends a private message to every session of `to`; answers the `ack` frame (its
    /// `id`). A user with no session anywhere is an `error` frame ("… is not connected").
    pub async fn private(
        &mut self,
        to: String,
        content: String,
        metadata: Option<Map<String, Value>>,
    ) -> Result<Value, ApiError> {
        self.hub.do_send(Private {
            session: self.session,
            to,
            content,
            metadata,
        });
        self.answer(None, |f| f["type"] == "ack").await
    }

    /// The next `message` frame relayed in `room` (a replay after a join with `since`).
    pub async fn next_message(&mut self, room: &RoomId) -> Result<Value, ApiError> {
        self.answer(Some(room), |f| {
            f["type"] == "message" && f["room_id"] == room.as_str()
        })
        .await
    }

    /// The `presence` listing of `room` (joined).
    pub async fn presence(&mut self, room: &RoomId) -> Result<Value, ApiError> {
        self.hub.do_send(ListMembers {
            session: self.session,
            room: room.clone(),
        });
        self.answer(Some(room), |f| {
            f["type"] == "presence" && f["room_id"] == room.as_str() && f["content"] == "members"
        })
        .await
    }

    /// The `history` answer for `room` (joined): its last `limit` messages.
    pub async fn history(&mut self, room: &RoomId, limit: usize) -> Result<Value, ApiError> {
        self.hub.do_send(History {
            session: self.session,
            room: room.clone(),
            limit,
        });
        self.answer(Some(room), |f| {
            f["type"] == "history" && f["room_id"] == room.as_str()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{chat::Frame, domain::StoredMessage};

    #[test]
    fn relayed_messages_are_told_from_answers_by_their_head() {
        let message = StoredMessage {
            room: RoomId::parse("r").unwrap(),
            offset: 1,
            id: "m1".into(),
            kind: "message".into(),
            sender: "a".into(),
            sender_name: None,
            content: r#"","type":"ack""#.into(),
            metadata: None,
            created_at: chrono::Utc::now(),
        };
        assert!(relayed_message(&Frame::stored(&message).encode()));
        let history = Frame::system("history")
            .details(serde_json::json!({ "messages": [Frame::stored(&message)] }));
        assert!(!relayed_message(&history.encode()));
        assert!(!relayed_message(&Frame::system("ack").id("m2").encode()));
    }
}
