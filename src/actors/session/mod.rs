//! One actor per WebSocket connection.
//!
//! The session registers with the [`Hub`] when it starts and deregisters when it stops,
//! checks its client's liveness on each pulse from the hub (one timer for all sessions),
//! turns client frames into hub messages through its [`Protocol`], and
//! writes the frames the hub sends it. Its mailbox is the connection's bounded outbound
//! queue: the hub's deliveries fail once it is full, and the hub then closes the session.

pub mod protocol;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{
    fut, Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Handler, Running, StreamHandler,
    WrapFuture,
};
use actix_web_actors::ws::{self, CloseCode, CloseReason, Message, ProtocolError};
use serde_json::json;

pub use protocol::{Outcome, Protocol};

use crate::{
    actors::hub::{self, ConnectError, Hub, Outbox, ToSession},
    chat::{Command, Frame, SessionId},
    config::WsSettings,
};

/// A connected client.
pub struct Session {
    /// This connection's id.
    id: SessionId,
    /// The hub it is registered with (one handle shared by all sessions).
    hub: Arc<Addr<Hub>>,
    /// Parsing and per-connection limits (it holds the shared settings).
    protocol: Protocol,
    /// When the client last sent anything (a pong, a ping, a message).
    last_heard: Instant,
    /// When the server last pinged.
    last_ping: Instant,
    /// What `started` uses once and drops (boxed: most of the time it is gone).
    start: Option<Box<Start>>,
    /// This connection's outbound queue as the hub sees it (set in `started`): frames
    /// written are taken off it.
    outbox: Option<Arc<Outbox>>,
}

/// The rate limiter's answer to a WebSocket upgrade: `Err` holds how long the client
/// should wait before trying again.
pub type Admission = Pin<Box<dyn Future<Output = Result<(), Duration>>>>;

/// What a session needs once, when it starts.
#[derive(Default)]
pub struct Start {
    /// The rate limiter's pending answer for this connection's upgrade: the session
    /// awaits it before registering (closing with `1013` if refused).
    pub admission: Option<Admission>,
    /// More for the welcome's `metadata` (a guest's resume token).
    pub welcome: serde_json::Map<String, serde_json::Value>,
}

impl Session {
    /// A session for `identity`, not yet registered: when it starts it awaits the
    /// admission in `start`, then registers with the hub and sends the welcome.
    pub fn new(
        identity: crate::chat::Identity,
        hub: Arc<Addr<Hub>>,
        settings: Arc<WsSettings>,
        start: Start,
    ) -> Self {
        let now = Instant::now();
        Self {
            id: SessionId::new(),
            hub,
            protocol: Protocol::new(identity, settings, now),
            last_heard: now,
            last_ping: now,
            start: (start.admission.is_some() || !start.welcome.is_empty())
                .then(|| Box::new(start)),
            outbox: None,
        }
    }

    /// The frame that greets a registered client: its session and user ids, and `more`.
    fn welcome(&self, more: serde_json::Map<String, serde_json::Value>) -> Frame {
        let identity = self.protocol.identity();
        let mut details = json!({
            "session_id": self.id.to_string(),
            "user_id": &*identity.user_id,
            "name": identity.name.as_deref(),
            "guest": identity.guest,
        });
        if let Some(details) = details.as_object_mut() {
            details.extend(more);
        }
        Frame::system("join")
            .to(self.id.to_string())
            .content("Welcome to Switchboard")
            .details(details)
    }

    /// How often the hub should pulse sessions: often enough to notice a silent client
    /// within a fraction of the timeout, and to ping at the configured interval.
    pub fn heartbeat_tick(settings: &WsSettings) -> Duration {
        settings
            .ping_interval
            .min(settings.pong_timeout / 4)
            .max(Duration::from_millis(10))
    }

    /// On the hub's pulse: closes a client silent for longer than the timeout, pings one
    /// not pinged for the interval.
    fn on_pulse(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let (ping_interval, pong_timeout) = self.heartbeat();
        let now = Instant::now();
        if now.duration_since(self.last_heard) > pong_timeout {
            self.close(
                ctx,
                CloseCode::Policy,
                format!("heartbeat timeout: nothing heard for {pong_timeout:?}"),
            );
        } else if now.duration_since(self.last_ping) >= ping_interval {
            self.last_ping = now;
            ctx.ping(b"");
        }
    }

    /// How often to ping, and how long the client may stay silent.
    fn heartbeat(&self) -> (Duration, Duration) {
        let settings = self.protocol.settings();
        (settings.ping_interval, settings.pong_timeout)
    }

    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: CloseCode, reason: String) {
        self.close_with(
            ctx,
            CloseReason {
                code,
                description: Some(reason),
            },
        );
    }

    fn close_with(&self, ctx: &mut ws::WebsocketContext<Self>, reason: CloseReason) {
        tracing::debug!(
            session = %self.id,
            user = %self.protocol.identity().user_id,
            code = u16::from(reason.code),
            reason = reason.description.as_deref().unwrap_or(""),
            "closing session"
        );
        ctx.close(Some(reason));
        ctx.stop();
    }

    fn apply(&mut self, outcome: Outcome, ctx: &mut ws::WebsocketContext<Self>) {
        match outcome {
            Outcome::Hub(command) => self.dispatch(command),
            Outcome::Reply(frame) => ctx.text(frame.encode()),
            Outcome::Close(reason) => self.close_with(ctx, reason),
            Outcome::Pending => {}
        }
    }

    /// Takes written frames off the outbox the hub counts against.
    fn taken(&self, frames: usize, bytes: usize) {
        if let Some(outbox) = &self.outbox {
            outbox.taken(frames, bytes);
        }
    }

    /// Sends a command to the hub. `do_send` keeps the order in which the client sent them.
    fn dispatch(&self, command: Command) {
        let session = self.id;
        match command {
            Command::Join { room, since } => self.hub.do_send(hub::Join {
                session,
                room,
                since,
            }),
            Command::History { room, limit } => self.hub.do_send(hub::History {
                session,
                room,
                limit,
            }),
            Command::Leave(room) => self.hub.do_send(hub::Leave { session, room }),
            Command::Post(post) => self.hub.do_send(hub::RoomMessage {
                session,
                post,
                sent: Instant::now(),
            }),
            Command::Typing { room, metadata } => self.hub.do_send(hub::Typing {
                session,
                room,
                metadata,
            }),
            Command::Private {
                to,
                content,
                metadata,
            } => self.hub.do_send(hub::Private {
                session,
                to,
                content,
                metadata,
            }),
            Command::Broadcast { content, metadata } => self.hub.do_send(hub::Broadcast {
                session,
                content,
                metadata,
            }),
            Command::Presence(room) => self.hub.do_send(hub::ListMembers { session, room }),
        }
    }
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.protocol.settings().outbound_queue);
        let outbox = Arc::new(Outbox::new(ctx.address().recipient()));
        self.outbox = Some(outbox.clone());
        let connect = hub::Connect {
            session: self.id,
            identity: self.protocol.identity().clone(),
            addr: outbox,
        };
        let Start { admission, welcome } = self.start.take().map(|s| *s).unwrap_or_default();
        let hub = self.hub.clone();
        let answer = async move {
            if let Some(admission) = admission {
                admission.await?;
            }
            Ok::<_, Duration>(hub.send(connect).await)
        };
        // Nothing else is handled until the hub has answered, so the welcome comes first.
        let registered = answer.into_actor(self).then(|answer, session, ctx| {
            match answer {
                Err(retry_after) => {
                    let wait = retry_after.as_secs_f64().ceil().max(1.0);
                    let reason = format!("rate limit exceeded; retry in {wait}s");
                    session.close(ctx, CloseCode::Again, reason)
                }
                Ok(Ok(Ok(()))) => ctx.text(session.welcome(welcome).encode()),
                Ok(Ok(Err(refused @ ConnectError::TooManySessions { .. }))) => {
                    session.close(ctx, CloseCode::Policy, refused.to_string())
                }
                Ok(Ok(Err(refused @ ConnectError::ShuttingDown))) => {
                    session.close(ctx, CloseCode::Away, refused.to_string())
                }
                Ok(Ok(Err(refused @ ConnectError::UserDeleted))) => session.close(
                    ctx,
                    CloseCode::Other(crate::actors::saga::delete_user::CLOSE_CODE),
                    refused.to_string(),
                ),
                Ok(Err(_)) => session.close(ctx, CloseCode::Error, "chat hub unavailable".into()),
            }
            fut::ready(())
        });
        ctx.wait(registered);
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        self.hub.do_send(hub::Disconnect { session: self.id });
        Running::Stop
    }
}

impl Handler<ToSession> for Session {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        match msg {
            ToSession::Frame(text) => {
                self.taken(1, text.len());
                ctx.text(text);
            }
            ToSession::Frames(texts) => {
                let bytes = texts.iter().map(|t| t.len()).sum();
                self.taken(texts.len(), bytes);
                texts.into_iter().for_each(|text| ctx.text(text));
            }
            ToSession::Close(reason) => self.close_with(ctx, reason),
            ToSession::Pulse => self.on_pulse(ctx),
        }
    }
}

/// The codec's own size limit, or `FrameLimit`'s refusal of a header announcing too much.
fn too_big(error: &ProtocolError) -> bool {
    match error {
        ProtocolError::Overflow => true,
        ProtocolError::Io(error) => crate::http::frame_limit::is_oversize(error),
        _ => false,
    }
}

impl StreamHandler<Result<Message, ProtocolError>> for Session {
    fn handle(&mut self, item: Result<Message, ProtocolError>, ctx: &mut Self::Context) {
        let now = Instant::now();
        self.last_heard = now;
        let message = match item {
            Ok(message) => message,
            Err(error) if too_big(&error) => {
                let limit = self.protocol.max_message_size();
                let reason = format!("message too big (limit {limit} bytes)");
                return self.close(ctx, CloseCode::Size, reason);
            }
            // actix reports a text frame that is not UTF-8 as an I/O error naming UTF-8.
            Err(ProtocolError::Io(error)) if error.to_string().to_lowercase().contains("utf-8") => {
                let reason = "a text message was not valid UTF-8".to_owned();
                return self.close(ctx, CloseCode::Invalid, reason);
            }
            Err(error) => {
                return self.close(ctx, CloseCode::Protocol, format!("protocol error: {error}"))
            }
        };
        let outcome = match message {
            Message::Text(text) => self.protocol.on_text(now, &text),
            Message::Binary(_) => self.protocol.on_binary(now),
            Message::Continuation(item) => self.protocol.on_fragment(now, item),
            Message::Ping(payload) => return ctx.pong(&payload),
            Message::Pong(_) | Message::Nop => return,
            Message::Close(reason) => {
                ctx.close(reason);
                return ctx.stop();
            }
        };
        self.apply(outcome, ctx);
    }
}
