//! A session's protocol logic, apart from the socket: turns client frames into hub
//! commands, replies or a close, and enforces the per-connection limits (rate, rooms,
//! message size, admin-only broadcast). Driven by the caller's clock, so it is tested
//! without a connection or sleeps.

use std::{sync::Arc, time::Instant};

use actix_http::ws::Item;
use actix_web_actors::ws::{CloseCode, CloseReason};
use bytes::BytesMut;

use crate::{
    chat::{Command, Frame, Identity},
    config::WsSettings,
    domain::RoomSet,
    rate::TokenBucket,
};

/// Refused messages in a row (without an accepted one between) that close the connection.
pub const MAX_RATE_STRIKES: u32 = 10;

/// What to do about one client frame.
#[derive(Debug)]
pub enum Outcome {
    /// Ask the hub.
    Hub(Command),
    /// Answer the client directly (errors).
    Reply(Frame),
    /// Close the connection with this reason.
    Close(CloseReason),
    /// Nothing yet (a fragment of a longer message).
    Pending,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Protocol {
    identity: Identity,
    /// The limits, shared by every session (one pointer here, not a copy).
    settings: Arc<WsSettings>,
    bucket: TokenBucket,
    strikes: u32,
    rooms: RoomSet,
    /// Boxed: rare, and the idle connection should not carry its size.
    fragments: Option<Box<Fragments>>,
}

#[derive(Debug)]
struct Fragments {
    text: bool,
    buf: BytesMut,
}

fn close(code: CloseCode, reason: impl Into<String>) -> Outcome {
    Outcome::Close(CloseReason {
        code,
        description: Some(reason.into()),
    })
}

impl Protocol {
    /// Fresh state for `identity` under `settings`' limits.
    pub fn new(identity: Identity, settings: Arc<WsSettings>, now: Instant) -> Self {
        Self {
            identity,
            bucket: TokenBucket::new(settings.rate_per_second, settings.rate_burst, now),
            settings,
            strikes: 0,
            rooms: RoomSet::default(),
            fragments: None,
        }
    }

    /// The WebSocket settings this connection runs under.
    pub fn settings(&self) -> &WsSettings {
        &self.settings
    }

    /// Who this connection is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The largest message accepted, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.settings.max_message_size
    }

    /// A complete text message.
    pub fn on_text(&mut self, now: Instant, text: &str) -> Outcome {
        if let Some(refused) = self.rate_limit(now) {
            return refused;
        }
        match Command::parse(text) {
            Ok(command) => self.authorize(command),
            Err(error) => Outcome::Reply(Frame::error(error.to_string())),
        }
    }

    /// A complete binary message: not part of the protocol.
    pub fn on_binary(&mut self, now: Instant) -> Outcome {
        self.rate_limit(now).unwrap_or_else(|| {
            Outcome::Reply(Frame::error(
                "binary frames are not supported; send JSON text frames",
            ))
        })
    }

    /// One fragment of a message split over several frames.
    pub fn on_fragment(&mut self, now: Instant, item: Item) -> Outcome {
        let (first, last, text, chunk) = match item {
            Item::FirstText(chunk) => (true, false, true, chunk),
            Item::FirstBinary(chunk) => (true, false, false, chunk),
            Item::Continue(chunk) => (false, false, false, chunk),
            Item::Last(chunk) => (false, true, false, chunk),
        };
        if first {
            if self.fragments.is_some() {
                return close(
                    CloseCode::Protocol,
                    "a new message began inside a fragmented one",
                );
            }
            self.fragments = Some(Box::new(Fragments {
                text,
                buf: BytesMut::new(),
            }));
        }
        let Some(fragments) = self.fragments.as_mut() else {
            return close(
                CloseCode::Protocol,
                "a continuation frame without a first frame",
            );
        };
        if fragments.buf.len() + chunk.len() > self.settings.max_message_size {
            return close(
                CloseCode::Size,
                format!(
                    "message too big (limit {} bytes)",
                    self.settings.max_message_size
                ),
            );
        }
        fragments.buf.extend_from_slice(&chunk);
        if !last {
            return Outcome::Pending;
        }
        let Fragments { text, buf } = *self.fragments.take().expect("checked above");
        if !text {
            return self.on_binary(now);
        }
        match std::str::from_utf8(&buf) {
            Ok(text) => self.on_text(now, text),
            Err(_) => close(CloseCode::Invalid, "a text message was not valid UTF-8"),
        }
    }

    /// `None` when the message may pass; otherwise the error, or the close once refusals persist.
    fn rate_limit(&mut self, now: Instant) -> Option<Outcome> {
        if self.bucket.try_take(now) {
            self.strikes = 0;
            return None;
        }
        self.strikes += 1;
        if self.strikes >= MAX_RATE_STRIKES {
            return Some(close(CloseCode::Policy, "rate limit exceeded repeatedly"));
        }
        let (rate, burst) = (self.settings.rate_per_second, self.settings.rate_burst);
        Some(Outcome::Reply(Frame::error(format!(
            "rate limit exceeded: at most {rate} messages per second (bursts of {burst}); \
             this message was dropped"
        ))))
    }

    /// Applies the limits that depend on who is asking and what it already holds.
    fn authorize(&mut self, command: Command) -> Outcome {
        match &command {
            Command::Join { room, .. } if !self.rooms.contains(room) => {
                if self.rooms.len() >= self.settings.max_rooms_per_session {
                    return Outcome::Reply(Frame::error(format!(
                        "room limit reached: a session may be in at most {} rooms",
                        self.settings.max_rooms_per_session
                    )));
                }
                self.rooms.insert(room);
            }
            Command::Leave(room) => {
                self.rooms.remove(room);
            }
            Command::Broadcast { .. } if !self.identity.admin => {
                return Outcome::Reply(Frame::error(
                    "forbidden: broadcast requires a token with role `admin`",
                ));
            }
            _ => {}
        }
        Outcome::Hub(command)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn settings() -> WsSettings {
        WsSettings {
            max_rooms_per_session: 2,
            max_message_size: 100,
            rate_per_second: 1.0,
            rate_burst: 3,
            ..WsSettings::default()
        }
    }

    fn error_text(outcome: Outcome) -> String {
        match outcome {
            Outcome::Reply(frame) if frame.kind == "error" => frame.content,
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    fn close_code(outcome: Outcome) -> CloseCode {
        match outcome {
            Outcome::Close(reason) => reason.code,
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[test]
    fn valid_commands_go_to_the_hub() {
        let now = Instant::now();
        let mut protocol = Protocol::new(Identity::user("alice", false), settings().into(), now);
        let outcome = protocol.on_text(now, r#"{"type":"join","room_id":"r"}"#);
        assert!(
            matches!(outcome, Outcome::Hub(Command::Join { .. })),
            "{outcome:?}"
        );
    }

    #[test]
    fn malformed_json_is_an_error_reply_not_a_close() {
        let now = Instant::now();
        let mut protocol = Protocol::new(Identity::user("alice", false), settings().into(), now);
        assert!(error_text(protocol.on_text(now, "{nope")).contains("malformed"));
    }

    #[test]
    fn broadcast_needs_the_admin_role() {
        let now = Instant::now();
        let text = r#"{"type":"broadcast","content":"x"}"#;
        let mut user = Protocol::new(Identity::user("u", false), settings().into(), now);
        assert!(error_text(user.on_text(now, text)).contains("admin"));
        let mut admin = Protocol::new(Identity::user("a", true), settings().into(), now);
        assert!(matches!(admin.on_text(now, text), Outcome::Hub(_)));
    }

    #[test]
    fn the_room_limit_counts_distinct_rooms() {
        let now = Instant::now();
        let mut settings = settings();
        settings.rate_burst = 100;
        let mut protocol = Protocol::new(Identity::user("u", false), settings.into(), now);
        for room in ["a", "b", "a"] {
            let join = format!(r#"{{"type":"join","room_id":"{room}"}}"#);
            assert!(matches!(protocol.on_text(now, &join), Outcome::Hub(_)));
        }
        let third = protocol.on_text(now, r#"{"type":"join","room_id":"c"}"#);
        assert!(error_text(third).contains("room limit"));
        protocol.on_text(now, r#"{"type":"leave","room_id":"a"}"#);
        let after_leave = protocol.on_text(now, r#"{"type":"join","room_id":"c"}"#);
        assert!(matches!(after_leave, Outcome::Hub(_)));
    }

    #[test]
    fn the_rate_limit_errors_then_closes_when_it_persists() {
        let start = Instant::now();
        let mut protocol = Protocol::new(Identity::user("u", false), settings().into(), start);
        let msg = r#"{"type":"presence","room_id":"r"}"#;
        for _ in 0..3 {
            assert!(matches!(protocol.on_text(start, msg), Outcome::Hub(_)));
        }
        for _ in 1..MAX_RATE_STRIKES {
            assert!(error_text(protocol.on_text(start, msg)).contains("rate limit"));
        }
        assert_eq!(close_code(protocol.on_text(start, msg)), CloseCode::Policy);
    }

    #[test]
    fn an_accepted_message_forgives_earlier_refusals() {
        let start = Instant::now();
        let mut protocol = Protocol::new(Identity::user("u", false), settings().into(), start);
        let msg = r#"{"type":"presence","room_id":"r"}"#;
        for _ in 0..3 {
            protocol.on_text(start, msg);
        }
        for _ in 1..MAX_RATE_STRIKES {
            protocol.on_text(start, msg);
        }
        let later = start + Duration::from_secs(1);
        assert!(matches!(protocol.on_text(later, msg), Outcome::Hub(_)));
        assert!(error_text(protocol.on_text(later, msg)).contains("rate limit"));
    }

    #[test]
    fn fragments_are_reassembled_and_bounded() {
        let now = Instant::now();
        let mut protocol = Protocol::new(Identity::user("u", false), settings().into(), now);
        let first = Item::FirstText(Bytes::from_static(br#"{"type":"join","#));
        assert!(matches!(protocol.on_fragment(now, first), Outcome::Pending));
        let last = Item::Last(Bytes::from_static(br#""room_id":"r"}"#));
        assert!(matches!(
            protocol.on_fragment(now, last),
            Outcome::Hub(Command::Join { .. })
        ));

        let big = Bytes::from(vec![b'x'; 60]);
        protocol.on_fragment(now, Item::FirstText(big.clone()));
        assert_eq!(
            close_code(protocol.on_fragment(now, Item::Continue(big))),
            CloseCode::Size
        );
    }

    #[test]
    fn stray_continuations_are_protocol_errors() {
        let now = Instant::now();
        let mut protocol = Protocol::new(Identity::user("u", false), settings().into(), now);
        let stray = Item::Last(Bytes::from_static(b"x"));
        assert_eq!(
            close_code(protocol.on_fragment(now, stray)),
            CloseCode::Protocol
        );
    }
}
