//! The server API for backends, shared by its two front doors — gRPC
//! (`switchboard.chat.v1.ChatService`) and HTTP (`POST /api/v1/…`, described by
//! `GET /api/v1/openapi.json`). Each operation is a hidden hub session
//! ([`ApiSession`]): it joins the room it acts on and does what a member would, so a
//! backend's message is numbered, stored, relayed and recoverable exactly like a member's,
//! and never shows in presence. Callers need a token whose role is `service` or `admin`.

use std::sync::Arc;

use actix::Addr;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::{
    actors::{
        api_session::{ApiError, ApiSession, Opened},
        broker::{Broker, PublishUserControl, UserControl},
        hub::{CloseUser, Hub, ListRooms, RemoveFromRoom},
        idempotency::{Claim, Idempotency, Remember},
    },
    auth::Claims,
    chat::Identity,
    domain::RoomId,
};

/// Why a server-API call failed; each front door maps it to its own status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No (valid) token.
    #[error("{0}")]
    Unauthenticated(String),
    /// A token without the `service` or `admin` role.
    #[error("the server API needs a token whose role is `service` or `admin`")]
    PermissionDenied,
    /// Something in the request is wrong (the message says what).
    #[error("{0}")]
    InvalidArgument(String),
    /// The addressee is not connected anywhere.
    #[error("{0}")]
    NotFound(String),
    /// The first publish with this idempotency key failed; retry.
    #[error("the first publish with this idempotency key failed; retry")]
    Aborted,
    /// The hub or the cluster cannot serve now (shutting down, Redis away); retry.
    #[error("{0}")]
    Unavailable(String),
}

impl Failure {
    /// The stable code both front doors report (`INVALID_ARGUMENT`, …).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Aborted => "ABORTED",
            Self::Unavailable(_) => "UNAVAILABLE",
        }
    }
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::Refused(reason) => Self::InvalidArgument(reason),
            ApiError::Unavailable(reason) => Self::Unavailable(reason),
            ApiError::ShuttingDown => Self::Unavailable("the server is shutting down".into()),
        }
    }
}

/// `POST /api/v1/publish`: a message into a room, as a member would send it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct PublishInput {
    /// The room (created if new).
    pub room: String,
    /// The text; not empty.
    pub content: String,
    /// Relayed with the message.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// A retry with the same key (per caller and room) within ten minutes answers the
    /// first result and is not relayed again.
    pub idempotency_key: Option<String>,
}

/// Where a published message landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Published {
    /// Its offset in the room.
    pub offset: u64,
    /// The room's numbering epoch in cluster mode (empty on a single server).
    pub epoch: String,
}

/// `POST /api/v1/broadcast`: one message into several rooms.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct BroadcastInput {
    /// The rooms (1–100).
    pub rooms: Vec<String>,
    /// The text; not empty.
    pub content: String,
    /// Relayed with each message.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// What became of a broadcast in one room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RoomResult {
    /// The room.
    pub room: String,
    /// The message's offset there (absent when it failed).
    pub offset: Option<u64>,
    /// Why it failed there (absent when it was published).
    pub error: Option<String>,
}

/// A broadcast's results, one per room, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Broadcasted {
    /// Per room.
    pub results: Vec<RoomResult>,
}

/// `POST /api/v1/private`: a private message to every session of a user.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct PrivateInput {
    /// The addressee.
    pub user_id: String,
    /// The text; not empty.
    pub content: String,
    /// Relayed with the message.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// A private message handed to the addressee's sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Sent {
    /// The message's id.
    pub id: String,
}

/// `POST /api/v1/presence` and `POST /api/v1/history`'s room.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct RoomInput {
    /// The room.
    pub room: String,
    /// For history: at most this many messages (default 50).
    pub limit: Option<u32>,
    /// For history: the messages after this offset instead of the last ones.
    pub since_offset: Option<u64>,
    /// For history: newest first.
    #[serde(default)]
    pub reverse: bool,
}

/// One user present in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct MemberInfo {
    /// The user id.
    pub user_id: String,
    /// The display name, when there is one.
    pub name: Option<String>,
    /// Their sessions in the room (on every node).
    pub sessions: u64,
}

/// Who is in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Presence {
    /// Listed users (up to the presence limit), sorted by id.
    pub members: Vec<MemberInfo>,
    /// Users present in all.
    pub count: u64,
    /// Whether more users are present than listed.
    pub truncated: bool,
}

/// A stored room message.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MessageInfo {
    /// The room.
    pub room: String,
    /// Its offset in the room.
    pub offset: u64,
    /// Its id.
    pub id: String,
    /// The sender's user id.
    pub from: String,
    /// The sender's display name, when there was one.
    pub name: Option<String>,
    /// The text.
    pub content: String,
    /// What the sender attached.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// When it was relayed (RFC 3339).
    pub created_at: String,
}

impl MessageInfo {
    /// A stored message as the hub frames it (relays and history entries).
    pub fn from_frame(frame: &Value, room: &str) -> Self {
        let text = |key: &str| frame[key].as_str().unwrap_or_default().to_owned();
        Self {
            room: frame["room_id"].as_str().unwrap_or(room).to_owned(),
            offset: frame["offset"].as_u64().unwrap_or_default(),
            id: text("id"),
            from: text("from"),
            name: frame["name"].as_str().map(str::to_owned),
            content: text("content"),
            metadata: frame["metadata"].as_object().cloned(),
            created_at: text("timestamp"),
        }
    }
}

/// A room's messages.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct HistoryPage {
    /// Oldest first (newest first with `reverse`).
    pub messages: Vec<MessageInfo>,
    /// The room's last offset when read.
    pub offset: u64,
    /// Whether more messages exist than were answered (the limit, or the size cap).
    pub truncated: bool,
    /// With `since_offset`: whether every message after it up to `offset` is in the
    /// answer; without: whether nothing was left out.
    pub recovered: bool,
}

/// `POST /api/v1/rooms`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct RoomsInput {
    /// Only rooms whose id starts with this.
    pub prefix: Option<String>,
}

/// A room with members (across the cluster in cluster mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RoomInfo {
    /// The room.
    pub room: String,
    /// Users present.
    pub users: u64,
    /// Their sessions.
    pub sessions: u64,
}

/// The rooms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RoomList {
    /// Sorted by id.
    pub rooms: Vec<RoomInfo>,
}

/// `POST /api/v1/disconnect`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct DisconnectInput {
    /// The user whose sessions are closed.
    pub user_id: String,
    /// 1000 or an application code 4000–4999 (default 4000).
    pub code: Option<u16>,
    /// The close reason (default "disconnected by the server").
    pub reason: Option<String>,
}

/// `POST /api/v1/unsubscribe`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct UnsubscribeInput {
    /// The user whose sessions leave the room.
    pub user_id: String,
    /// The room.
    pub room: String,
}

/// What a disconnect closed (or an unsubscribe took out of the room).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Disconnected {
    /// Sessions closed on the answering node.
    pub sessions: u64,
    /// Nodes that held sessions of the user (each closes its own).
    pub nodes: u64,
}

/// The server API. Cheap to clone.
#[derive(Clone)]
pub struct ServerApi {
    hub: Arc<Addr<Hub>>,
    arbiter: actix::ArbiterHandle,
    idempotency: Addr<Idempotency>,
    broker: Option<Addr<Broker>>,
}

/// Rooms one broadcast may name.
pub const MAX_BROADCAST_ROOMS: usize = 100;

fn room(raw: &str) -> Result<RoomId, Failure> {
    RoomId::parse(raw).map_err(|error| Failure::InvalidArgument(format!("room: {error}")))
}

impl ServerApi {
    /// The API over `hub`, its sessions running on `arbiter`, remembering idempotency
    /// keys in `idempotency`; in cluster mode `broker` carries disconnects to other nodes.
    pub fn new(
        hub: Arc<Addr<Hub>>,
        arbiter: actix::ArbiterHandle,
        idempotency: Addr<Idempotency>,
        broker: Option<Addr<Broker>>,
    ) -> Self {
        Self {
            hub,
            arbiter,
            idempotency,
            broker,
        }
    }

    /// A hidden session for `caller` (who must hold a `service` or `admin` token), with
    /// room for `buffer` unread frames.
    /// It hears only answers to its own requests (not the room's traffic), unless
    /// opened with [`listening`](Self::listening).
    pub async fn open(&self, caller: Option<&Claims>, buffer: usize) -> Result<Opened, Failure> {
        self.open_as(caller, buffer, false, false).await
    }

    /// A hidden session that also hears the room's traffic (a stream, a replay).
    pub async fn listening(
        &self,
        caller: Option<&Claims>,
        buffer: usize,
    ) -> Result<Opened, Failure> {
        self.open_as(caller, buffer, false, true).await
    }

    /// [`open`](Self::open), counted in presence (as the token's subject, like a member)
    /// when `present`, hearing the room's traffic when `listening`.
    pub async fn open_as(
        &self,
        caller: Option<&Claims>,
        buffer: usize,
        present: bool,
        listening: bool,
    ) -> Result<Opened, Failure> {
        let claims = authorize(caller)?;
        let identity = if present {
            Identity::user(&claims.sub, claims.is_admin()).named(claims.name.clone())
        } else {
            Identity::service(&claims.sub, claims.is_admin())
        };
        ApiSession::open(self.hub.clone(), &self.arbiter, identity, buffer, listening)
            .await
            .map_err(Failure::from)
    }

    /// Publishes `input` as `caller`.
    pub async fn publish(
        &self,
        caller: Option<&Claims>,
        input: PublishInput,
    ) -> Result<Published, Failure> {
        // Checked before any session is opened: a refused call or an answered retry
        // costs the hub nothing.
        let sender = authorize(caller)?.sub.clone();
        let room = room(&input.room)?;
        if input.content.is_empty() {
            return Err(Failure::InvalidArgument("content must not be empty".into()));
        }
        let key = input
            .idempotency_key
            .filter(|key| !key.is_empty())
            .map(|key| format!("{sender}\u{0}{room}\u{0}{key}"));
        if let Some(key) = &key {
            if let Some(first) = self.claim(key).await? {
                return Ok(first);
            }
        }
        let mut session = match self.open(caller, 16).await {
            Ok(session) => session,
            Err(failure) => {
                if let Some(key) = key {
                    self.settle(key, None);
                }
                return Err(failure);
            }
        };
        let result = async {
            let joined = session.join(&room, None).await?;
            let ack = session
                .publish(&room, input.content, input.metadata)
                .await?;
            let epoch = joined["metadata"]["epoch"].as_str().unwrap_or_default();
            Ok::<_, ApiError>((ack["offset"].as_u64().unwrap_or_default(), epoch.to_owned()))
        }
        .await;
        if let Some(key) = key {
            self.settle(key, result.clone().ok());
        }
        let (offset, epoch) = result?;
        Ok(Published { offset, epoch })
    }

    /// Publishes one message into each of `input.rooms`; a room that fails does not stop
    /// the others.
    pub async fn broadcast(
        &self,
        caller: Option<&Claims>,
        input: BroadcastInput,
    ) -> Result<Broadcasted, Failure> {
        if input.rooms.is_empty() || input.rooms.len() > MAX_BROADCAST_ROOMS {
            return Err(Failure::InvalidArgument(format!(
                "rooms: between 1 and {MAX_BROADCAST_ROOMS}"
            )));
        }
        if input.content.is_empty() {
            return Err(Failure::InvalidArgument("content must not be empty".into()));
        }
        let mut session = self.open(caller, 16).await?;
        let mut results = Vec::with_capacity(input.rooms.len());
        for raw in input.rooms {
            let outcome = async {
                let room = room(&raw)?;
                session.join(&room, None).await?;
                let ack = session
                    .publish(&room, input.content.clone(), input.metadata.clone())
                    .await?;
                Ok::<_, Failure>(ack["offset"].as_u64().unwrap_or_default())
            }
            .await;
            results.push(match outcome {
                Ok(offset) => RoomResult {
                    room: raw,
                    offset: Some(offset),
                    error: None,
                },
                Err(error) => RoomResult {
                    room: raw,
                    offset: None,
                    error: Some(error.to_string()),
                },
            });
        }
        Ok(Broadcasted { results })
    }

    /// Sends a private message to every session of `input.user_id` (on every node).
    pub async fn send_private(
        &self,
        caller: Option<&Claims>,
        input: PrivateInput,
    ) -> Result<Sent, Failure> {
        if input.user_id.is_empty() || input.content.is_empty() {
            return Err(Failure::InvalidArgument(
                "user_id and content are required".into(),
            ));
        }
        let mut session = self.open(caller, 16).await?;
        let to = input.user_id.clone();
        match session
            .private(input.user_id, input.content, input.metadata)
            .await
        {
            Ok(ack) => Ok(Sent {
                id: ack["id"].as_str().unwrap_or_default().to_owned(),
            }),
            Err(ApiError::Refused(reason)) if reason.contains("is not connected") => {
                Err(Failure::NotFound(format!("user `{to}` is not connected")))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Claims an idempotency key — in Redis for the whole cluster, else on this node:
    /// `None` — go ahead; `Some` — the first call's result.
    async fn claim(&self, key: &str) -> Result<Option<Published>, Failure> {
        let first = match &self.broker {
            Some(broker) => broker
                .send(crate::actors::broker::ClaimKey(key.to_owned()))
                .await
                .map_err(|e| Failure::Unavailable(e.to_string()))?
                .map_err(|e| {
                    if e.0.contains("failed; retry") {
                        Failure::Aborted
                    } else {
                        Failure::Unavailable(e.to_string())
                    }
                })?,
            None => match self
                .idempotency
                .send(Claim(key.to_owned()))
                .await
                .map_err(|e| Failure::Unavailable(e.to_string()))?
            {
                Ok(()) => None,
                Err(first) => Some(first.await.map_err(|_| Failure::Aborted)?),
            },
        };
        Ok(first.map(|(offset, epoch)| Published { offset, epoch }))
    }

    /// Records a claimed key's result (`None` frees it).
    fn settle(&self, key: String, result: Option<(u64, String)>) {
        match &self.broker {
            Some(broker) => broker.do_send(crate::actors::broker::SettleKey { key, result }),
            None => self.idempotency.do_send(Remember { key, result }),
        }
    }

    /// Who is in `room` (the cluster's view in cluster mode).
    pub async fn presence(
        &self,
        caller: Option<&Claims>,
        room_id: &str,
    ) -> Result<Presence, Failure> {
        authorize(caller)?;
        let room = room(room_id)?;
        let mut session = self.open(caller, 16).await?;
        session.join(&room, None).await?;
        let listing = session.presence(&room).await?;
        let details = &listing["metadata"];
        let members = details["members"]
            .as_array()
            .map(|members| {
                members
                    .iter()
                    .map(|m| MemberInfo {
                        user_id: m["user_id"].as_str().unwrap_or_default().to_owned(),
                        name: m["name"].as_str().map(str::to_owned),
                        sessions: m["sessions"].as_u64().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Presence {
            members,
            count: details["count"].as_u64().unwrap_or_default(),
            truncated: details["truncated"].as_bool().unwrap_or_default(),
        })
    }

    /// `input.room`'s last `limit` messages, or those after `since_offset`.
    pub async fn history(
        &self,
        caller: Option<&Claims>,
        input: RoomInput,
    ) -> Result<HistoryPage, Failure> {
        authorize(caller)?;
        let room = room(&input.room)?;
        // A replay after `since_offset` arrives as the room's messages.
        let mut session = if input.since_offset.is_some() {
            self.listening(caller, 1024).await?
        } else {
            self.open(caller, 16).await?
        };
        let limit = match input.limit {
            None | Some(0) => 50,
            Some(n) => n as usize,
        };
        let mut page = match input.since_offset {
            None => {
                session.join(&room, None).await?;
                let answer = session.history(&room, limit).await?;
                let details = &answer["metadata"];
                // More exist than answered: the limit or the size cap left some out.
                let truncated = details["truncated"].as_bool().unwrap_or_default()
                    || details["count"].as_u64().unwrap_or_default()
                        < details["offset"].as_u64().unwrap_or_default();
                HistoryPage {
                    messages: details["messages"]
                        .as_array()
                        .map(|list| {
                            list.iter()
                                .map(|m| MessageInfo::from_frame(m, room.as_str()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    offset: details["offset"].as_u64().unwrap_or_default(),
                    truncated,
                    recovered: !truncated,
                }
            }
            Some(since) => {
                // A join from `since` replays what followed (as a member's would).
                let joined = session.join(&room, Some(since)).await?;
                let details = &joined["metadata"];
                let top = details["offset"].as_u64().unwrap_or_default();
                let replayed = details["replayed"].as_u64().unwrap_or_default() as usize;
                let mut messages = Vec::with_capacity(replayed.min(limit));
                for _ in 0..replayed {
                    let frame = session.next_message(&room).await?;
                    if messages.len() < limit {
                        messages.push(MessageInfo::from_frame(&frame, room.as_str()));
                    }
                }
                let truncated = replayed > limit;
                HistoryPage {
                    messages,
                    offset: top,
                    truncated,
                    recovered: details["recovered"].as_bool().unwrap_or_default() && !truncated,
                }
            }
        };
        if input.reverse {
            page.messages.reverse();
        }
        Ok(page)
    }

    /// The rooms with members whose id starts with `prefix` — on every node of a
    /// cluster (its presence in Redis), else on this server.
    pub async fn rooms(&self, caller: Option<&Claims>, prefix: &str) -> Result<RoomList, Failure> {
        authorize(caller)?;
        if let Some(broker) = &self.broker {
            let rooms = broker
                .send(crate::actors::broker::presence::ReadRooms {
                    prefix: prefix.to_owned(),
                })
                .await
                .map_err(|e| Failure::Unavailable(e.to_string()))?
                .map_err(|e| Failure::Unavailable(e.to_string()))?;
            return Ok(RoomList {
                rooms: rooms
                    .into_iter()
                    .map(|(room, users, sessions)| RoomInfo {
                        room,
                        users,
                        sessions,
                    })
                    .collect(),
            });
        }
        let rooms = self
            .hub
            .send(ListRooms)
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        Ok(RoomList {
            rooms: rooms
                .into_iter()
                .filter(|r| r.room_id.as_str().starts_with(prefix) && r.users > 0)
                .map(|r| RoomInfo {
                    room: r.room_id.to_string(),
                    users: r.users as u64,
                    sessions: r.sessions as u64,
                })
                .collect(),
        })
    }

    /// In cluster mode, asks every other node to act on `user`'s sessions; answers how
    /// many nodes hold some (`None` on a single server).
    async fn tell_other_nodes(
        &self,
        user: &str,
        control: UserControl,
    ) -> Result<Option<u64>, Failure> {
        let Some(broker) = &self.broker else {
            return Ok(None);
        };
        let nodes = broker
            .send(PublishUserControl {
                user: user.to_owned(),
                control,
            })
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?
            .map_err(|e| Failure::Unavailable(e.to_string()))?;
        Ok(Some(nodes))
    }

    /// Takes every session of `input.user_id` out of `input.room`, on every node.
    pub async fn unsubscribe(
        &self,
        caller: Option<&Claims>,
        input: UnsubscribeInput,
    ) -> Result<Disconnected, Failure> {
        authorize(caller)?;
        if input.user_id.is_empty() {
            return Err(Failure::InvalidArgument("user_id is required".into()));
        }
        let room = room(&input.room)?;
        let control = UserControl::Unsubscribe {
            room: room.to_string(),
        };
        let nodes = self.tell_other_nodes(&input.user_id, control).await?;
        let removed = self
            .hub
            .send(RemoveFromRoom {
                user_id: input.user_id,
                room,
            })
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))? as u64;
        Ok(Disconnected {
            sessions: removed,
            nodes: nodes.unwrap_or(u64::from(removed > 0)),
        })
    }

    /// Closes every session of the user, on every node of a cluster.
    pub async fn disconnect(
        &self,
        caller: Option<&Claims>,
        input: DisconnectInput,
    ) -> Result<Disconnected, Failure> {
        authorize(caller)?;
        if input.user_id.is_empty() {
            return Err(Failure::InvalidArgument("user_id is required".into()));
        }
        let code = match input.code {
            None | Some(0) => 4000,
            Some(code @ (1000 | 4000..=4999)) => code,
            Some(other) => {
                return Err(Failure::InvalidArgument(format!(
                    "code {other}: use 1000 or an application code 4000–4999"
                )))
            }
        };
        let reason = input
            .reason
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "disconnected by the server".into());
        let control = UserControl::Close {
            code,
            reason: reason.clone(),
        };
        let nodes = self.tell_other_nodes(&input.user_id, control).await?;
        let closed = self
            .hub
            .send(CloseUser {
                user_id: input.user_id,
                code,
                reason,
            })
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))? as u64;
        Ok(Disconnected {
            sessions: closed,
            nodes: nodes.unwrap_or(u64::from(closed > 0)),
        })
    }
}

/// The caller's claims, if they may use the server API.
pub fn authorize(caller: Option<&Claims>) -> Result<&Claims, Failure> {
    let claims =
        caller.ok_or_else(|| Failure::Unauthenticated("a bearer token is required".into()))?;
    if claims.may_use_server_api() {
        Ok(claims)
    } else {
        Err(Failure::PermissionDenied)
    }
}
