//! A session's requests are handled in the order it sent them. When a join has to wait for
//! a room's numbering to open (one database statement, the room's first join), the
//! session's later requests wait behind it, so a client may send `join`, `message` and
//! `leave` back to back without waiting for answers — exactly as if the join had been
//! answered at once. Other sessions are not held up.

use actix::{Context, Handler};

use super::{Broadcast, History, Hub, Join, Leave, ListMembers, Private, RoomMessage, Typing};
use crate::chat::{Frame, SessionId};

/// Requests one session may have waiting behind a join, at most.
const MAX_WAITING: usize = 1_024;

/// A session's request to the hub.
pub(super) enum Request {
    Join(Join),
    Leave(Leave),
    Post(RoomMessage),
    Typing(Typing),
    Private(Private),
    Broadcast(Broadcast),
    Members(ListMembers),
    History(History),
}

impl Request {
    fn session(&self) -> SessionId {
        match self {
            Request::Join(m) => m.session,
            Request::Leave(m) => m.session,
            Request::Post(m) => m.session,
            Request::Typing(m) => m.session,
            Request::Private(m) => m.session,
            Request::Broadcast(m) => m.session,
            Request::Members(m) => m.session,
            Request::History(m) => m.session,
        }
    }
}

impl Hub {
    /// Handles `request` now, or after the session's waiting join.
    fn request(&mut self, request: Request, ctx: &mut Context<Self>) {
        let session = request.session();
        if let Some(waiting) = self.waiting.get_mut(&session) {
            if waiting.len() < MAX_WAITING {
                waiting.push_back(request);
            } else {
                let refusal = Frame::error(
                    "too many requests while a join is waiting; this one was dropped".to_owned(),
                );
                self.reply(session, &refusal);
            }
        } else {
            self.dispatch(request, ctx);
        }
        self.run_statements(ctx);
        self.settle();
    }

    fn dispatch(&mut self, request: Request, ctx: &mut Context<Self>) {
        match request {
            Request::Join(m) => self.join(m, ctx),
            Request::Leave(m) => self.leave(m, ctx),
            Request::Post(m) => self.post(m.session, m.post, Some(m.sent), ctx),
            Request::Typing(m) => self.typing(m),
            Request::Private(m) => self.private(m, ctx),
            Request::Broadcast(m) => self.broadcast(m, ctx),
            Request::Members(m) => self.list_members(m, ctx),
            Request::History(m) => self.history(m, ctx),
        }
    }

    /// The session's join went through (or failed): its waiting requests go ahead, in
    /// order, until one of them waits again.
    pub(super) fn resume(&mut self, session: SessionId, ctx: &mut Context<Self>) {
        let Some(mut waiting) = self.waiting.remove(&session) else {
            return;
        };
        while let Some(request) = waiting.pop_front() {
            self.dispatch(request, ctx);
            if let Some(again) = self.waiting.get_mut(&session) {
                again.extend(waiting.drain(..));
                break;
            }
        }
    }
}

macro_rules! in_order {
    ($($message:ident => $variant:ident),* $(,)?) => {$(
        impl Handler<$message> for Hub {
            type Result = ();

            fn handle(&mut self, msg: $message, ctx: &mut Self::Context) {
                self.request(Request::$variant(msg), ctx);
            }
        }
    )*};
}

in_order!(
    Join => Join,
    Leave => Leave,
    RoomMessage => Post,
    Typing => Typing,
    Private => Private,
    Broadcast => Broadcast,
    ListMembers => Members,
    History => History,
);
