//! The chat protocol shared by the [`Hub`](crate::actors::hub::Hub) and each
//! [`Session`](crate::actors::session::Session): who a connection is, the JSON frames
//! clients send ([`command`]) and receive ([`frame`]), and per-connection rate limiting.
//!
//! The wire format is the seed's: text frames holding one JSON object with `type`, `from`,
//! `to`, `content`, `room_id`, `timestamp` (RFC 3339) and `metadata`, plus an `id` the
//! server assigns to every message it relays.

pub mod command;
pub mod frame;

use std::{fmt, sync::Arc};

pub use command::{Command, CommandError};
pub use frame::Frame;

/// One WebSocket connection's id (a UUIDv7, so ids sort by connection time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(uuid::Uuid);

impl SessionId {
    /// A fresh id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// The id `raw` names (as [`Display`](fmt::Display) writes it), if it is one.
    pub fn parse(raw: &str) -> Option<Self> {
        uuid::Uuid::parse_str(raw).ok().map(Self)
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id: the token's `sub`, or a generated `guest-…` id.
    pub user_id: Arc<str>,
    /// Display name (a guest's `user_id` query parameter or resume token, a token's
    /// `name` claim); `None` when there is none.
    /// Shared, not copied, with every room the user is present in.
    pub name: Option<Arc<str>>,
    /// Whether the token carries `role: "admin"` (required for `broadcast`).
    pub admin: bool,
    /// Whether this is an unauthenticated guest.
    pub guest: bool,
    /// A backend's session through the server API: never in presence (no join or leave
    /// events, not listed, not counted against the per-user session limit).
    pub hidden: bool,
}

impl Identity {
    /// An authenticated user.
    pub fn user(user_id: &str, admin: bool) -> Self {
        Self {
            user_id: user_id.into(),
            name: None,
            admin,
            guest: false,
            hidden: false,
        }
    }

    /// A backend calling the server API as `user_id`, kept out of presence.
    pub fn service(user_id: &str, admin: bool) -> Self {
        Self {
            hidden: true,
            ..Self::user(user_id, admin)
        }
    }

    /// Sets the display name.
    pub fn named(mut self, name: Option<String>) -> Self {
        self.name = name.map(Arc::from);
        self
    }

    /// A guest with a fresh, unguessable id and an optional display name. The name never
    /// becomes the id, so a guest cannot pose as a user and receive their private messages.
    pub fn guest(name: Option<String>) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self::resumed_guest(&format!("{}{}", crate::auth::GUEST_PREFIX, &id[..12]), name)
    }

    /// A guest coming back with the id its resume token names.
    pub fn resumed_guest(id: &str, name: Option<String>) -> Self {
        Self {
            user_id: id.into(),
            name: name.map(Arc::from),
            admin: false,
            guest: true,
            hidden: false,
        }
    }
}
