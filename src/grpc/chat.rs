//! `switchboard.chat.v1.ChatService`: the server API for backends. Each call is a hidden
//! hub session ([`ApiSession`]): it joins the room it acts on, does what a member would,
//! and leaves — so a backend's message is numbered, stored, relayed and recoverable
//! exactly like a member's, and never shows in presence.

use std::{pin::Pin, sync::Arc, time::Duration};

use actix::Addr;
use futures_util::Stream;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::pb::chat::{self, chat_service_server::ChatService};
use crate::{
    actors::{
        api_session::{ApiError, ApiEvent, ApiSession, Opened},
        broker::{Broker, PublishCloseUser},
        hub::{CloseUser, Hub, ListRooms},
        idempotency::{Claim, Idempotency, Remember},
    },
    auth::Claims,
    chat::Identity,
    domain::RoomId,
};

/// Frames a `Subscribe` stream may hold for a client that does not read.
pub const SUBSCRIBE_BUFFER: usize = 1024;

/// The service. Cheap to clone.
#[derive(Clone)]
pub struct Chat {
    hub: Arc<Addr<Hub>>,
    arbiter: actix::ArbiterHandle,
    idempotency: Addr<Idempotency>,
    /// The other nodes, in cluster mode.
    broker: Option<Addr<Broker>>,
}

impl Chat {
    /// The service over `hub`, its calls' sessions running on `arbiter`, remembering
    /// publishes in `idempotency`.
    pub fn new(
        hub: Arc<Addr<Hub>>,
        arbiter: actix::ArbiterHandle,
        idempotency: Addr<Idempotency>,
    ) -> Self {
        Self {
            hub,
            arbiter,
            idempotency,
            broker: None,
        }
    }

    /// Cluster mode: `Disconnect` reaches the user's sessions on every node.
    pub fn with_broker(mut self, broker: Option<Addr<Broker>>) -> Self {
        self.broker = broker;
        self
    }

    /// A hidden session for the caller, who must hold a `service` or `admin` token.
    async fn open<T>(&self, request: &Request<T>, buffer: usize) -> Result<Opened, Status> {
        let claims = request
            .extensions()
            .get::<Claims>()
            .ok_or_else(|| Status::unauthenticated("a bearer token is required"))?;
        if !claims.may_use_server_api() {
            return Err(Status::permission_denied(
                "the server API needs a token whose role is `service` or `admin`",
            ));
        }
        ApiSession::open(
            self.hub.clone(),
            &self.arbiter,
            Identity::service(&claims.sub, claims.is_admin()),
            buffer,
        )
        .await
        .map_err(status)
    }
}

fn status(error: ApiError) -> Status {
    match error {
        ApiError::Refused(reason) => Status::invalid_argument(reason),
        ApiError::Unavailable(reason) => Status::unavailable(reason),
        ApiError::ShuttingDown => Status::unavailable("the server is shutting down"),
    }
}

fn room(raw: &str) -> Result<RoomId, Status> {
    RoomId::parse(raw).map_err(|error| Status::invalid_argument(format!("room: {error}")))
}

fn metadata(pairs: std::collections::HashMap<String, String>) -> Option<Map<String, Value>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect()
    })
}

/// A stored message as the hub frames it (`message` relays and `history` entries).
fn message(frame: &Value, room: &str) -> chat::ChatMessage {
    let text = |key: &str| frame[key].as_str().unwrap_or_default().to_owned();
    chat::ChatMessage {
        room: frame["room_id"].as_str().unwrap_or(room).to_owned(),
        offset: frame["offset"].as_u64().unwrap_or_default(),
        id: text("id"),
        from: text("from"),
        name: text("name"),
        content: text("content"),
        metadata: frame["metadata"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        created_at: text("timestamp"),
    }
}

type MessageStream = Pin<Box<dyn Stream<Item = Result<chat::ChatMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ChatService for Chat {
    async fn publish(
        &self,
        request: Request<chat::PublishRequest>,
    ) -> Result<Response<chat::PublishResponse>, Status> {
        let mut session = self.open(&request, 16).await?;
        let sender = request
            .extensions()
            .get::<Claims>()
            .map(|c| c.sub.clone())
            .unwrap_or_default();
        let request = request.into_inner();
        let room = room(&request.room)?;
        if request.content.is_empty() {
            return Err(Status::invalid_argument("content must not be empty"));
        }
        let key = (!request.idempotency_key.is_empty())
            .then(|| format!("{sender}\u{0}{room}\u{0}{}", request.idempotency_key));
        if let Some(key) = &key {
            match self
                .idempotency
                .send(Claim(key.clone()))
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?
            {
                Ok(()) => {}
                Err(first) => {
                    let (offset, epoch) = first.await.map_err(|_| {
                        Status::aborted("the first publish with this key failed; retry")
                    })?;
                    return Ok(Response::new(chat::PublishResponse { offset, epoch }));
                }
            }
        }
        let result = async {
            let joined = session.join(&room, None).await?;
            let ack = session
                .publish(&room, request.content, metadata(request.metadata))
                .await?;
            let epoch = joined["metadata"]["epoch"].as_str().unwrap_or_default();
            Ok::<_, ApiError>((ack["offset"].as_u64().unwrap_or_default(), epoch.to_owned()))
        }
        .await;
        if let Some(key) = key {
            self.idempotency.do_send(Remember {
                key,
                result: result.clone().ok(),
            });
        }
        let (offset, epoch) = result.map_err(status)?;
        Ok(Response::new(chat::PublishResponse { offset, epoch }))
    }

    async fn presence(
        &self,
        request: Request<chat::RoomRequest>,
    ) -> Result<Response<chat::PresenceResponse>, Status> {
        let mut session = self.open(&request, 16).await?;
        let room = room(&request.get_ref().room)?;
        session.join(&room, None).await.map_err(status)?;
        let listing = session.presence(&room).await.map_err(status)?;
        let details = &listing["metadata"];
        let members = details["members"]
            .as_array()
            .map(|members| {
                members
                    .iter()
                    .map(|m| chat::Member {
                        user_id: m["user_id"].as_str().unwrap_or_default().to_owned(),
                        name: m["name"].as_str().unwrap_or_default().to_owned(),
                        sessions: m["sessions"].as_u64().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(chat::PresenceResponse {
            members,
            count: details["count"].as_u64().unwrap_or_default(),
            truncated: details["truncated"].as_bool().unwrap_or_default(),
        }))
    }

    async fn presence_stats(
        &self,
        request: Request<chat::RoomRequest>,
    ) -> Result<Response<chat::PresenceStatsResponse>, Status> {
        let presence = self.presence(request).await?.into_inner();
        Ok(Response::new(chat::PresenceStatsResponse {
            users: presence.count,
            sessions: presence.members.iter().map(|m| m.sessions).sum(),
        }))
    }

    async fn rooms(
        &self,
        request: Request<chat::RoomsRequest>,
    ) -> Result<Response<chat::RoomsResponse>, Status> {
        drop(self.open(&request, 2).await?);
        let prefix = &request.get_ref().prefix;
        let rooms = self
            .hub
            .send(ListRooms)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(chat::RoomsResponse {
            rooms: rooms
                .into_iter()
                .filter(|r| r.room_id.as_str().starts_with(prefix.as_str()))
                .filter(|r| r.users > 0)
                .map(|r| chat::RoomSummary {
                    room: r.room_id.to_string(),
                    users: r.users as u64,
                    sessions: r.sessions as u64,
                })
                .collect(),
        }))
    }

    async fn history(
        &self,
        request: Request<chat::HistoryRequest>,
    ) -> Result<Response<chat::HistoryResponse>, Status> {
        let mut session = self.open(&request, 16).await?;
        let room = room(&request.get_ref().room)?;
        let limit = match request.get_ref().limit {
            0 => 50,
            n => n as usize,
        };
        session.join(&room, None).await.map_err(status)?;
        let answer = session.history(&room, limit).await.map_err(status)?;
        let details = &answer["metadata"];
        Ok(Response::new(chat::HistoryResponse {
            messages: details["messages"]
                .as_array()
                .map(|list| list.iter().map(|m| message(m, room.as_str())).collect())
                .unwrap_or_default(),
            offset: details["offset"].as_u64().unwrap_or_default(),
            truncated: details["truncated"].as_bool().unwrap_or_default(),
        }))
    }

    async fn disconnect(
        &self,
        request: Request<chat::DisconnectRequest>,
    ) -> Result<Response<chat::DisconnectResponse>, Status> {
        drop(self.open(&request, 2).await?);
        let request = request.into_inner();
        if request.user_id.is_empty() {
            return Err(Status::invalid_argument("user_id is required"));
        }
        let code = match request.code {
            0 => 4000,
            code @ (1000 | 4000..=4999) => code as u16,
            other => {
                return Err(Status::invalid_argument(format!(
                    "code {other}: use 1000 or an application code 4000–4999"
                )))
            }
        };
        let reason = if request.reason.is_empty() {
            "disconnected by the server".to_owned()
        } else {
            request.reason
        };
        let nodes = match &self.broker {
            Some(broker) => broker
                .send(PublishCloseUser {
                    user: request.user_id.clone(),
                    code,
                    reason: reason.clone(),
                })
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?
                .map_err(|e| Status::unavailable(e.to_string()))?,
            None => 0,
        };
        let closed = self
            .hub
            .send(CloseUser {
                user_id: request.user_id,
                code,
                reason,
            })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(chat::DisconnectResponse {
            sessions: closed as u64,
            nodes: if self.broker.is_some() {
                nodes
            } else {
                u64::from(closed > 0)
            },
        }))
    }

    type SubscribeStream = MessageStream;

    async fn subscribe(
        &self,
        request: Request<chat::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut session = self.open(&request, SUBSCRIBE_BUFFER).await?;
        let room = room(&request.get_ref().room)?;
        let since = request.get_ref().since_offset;
        let joined = session.join(&room, since).await.map_err(status)?;
        if since.is_some() && joined["metadata"]["recovered"] == false {
            return Err(Status::data_loss(format!(
                "messages after offset {} are no longer kept; read History and subscribe \
                 without since_offset",
                since.unwrap_or_default()
            )));
        }
        let (wire, out) = mpsc::channel(SUBSCRIBE_BUFFER);
        tokio::spawn(follow(session, room, since.unwrap_or(0), wire));
        let stream = futures_util::stream::unfold(out, |mut out| async move {
            out.recv().await.map(|item| (item, out))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Forwards the room's messages to the stream until the client goes or the session ends.
async fn follow(
    mut session: Opened,
    room: RoomId,
    mut last: u64,
    wire: mpsc::Sender<Result<chat::ChatMessage, Status>>,
) {
    loop {
        let event = tokio::select! {
            () = wire.closed() => return,
            event = session.next() => event,
        };
        let ending = match event {
            Some(ApiEvent::Frame(frame)) => {
                if frame["type"] != "message" || frame["room_id"] != room.as_str() {
                    continue;
                }
                let message = message(&frame, room.as_str());
                let offset = message.offset;
                match wire.try_send(Ok(message)) {
                    Ok(()) => {
                        last = last.max(offset);
                        continue;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                    Err(mpsc::error::TrySendError::Full(_)) => too_slow(last),
                }
            }
            Some(ApiEvent::TooSlow) => too_slow(last),
            Some(ApiEvent::Closed(1008, _)) => too_slow(last),
            Some(ApiEvent::Closed(_, reason)) => {
                Status::unavailable(format!("the server ended the stream: {reason}"))
            }
            None => Status::unavailable("the server ended the stream"),
        };
        // Waits for room in the stream (bounded): the client learns where to resume.
        let _ = tokio::time::timeout(Duration::from_secs(30), wire.send(Err(ending))).await;
        return;
    }
}

fn too_slow(last: u64) -> Status {
    Status::resource_exhausted(format!(
        "subscriber too slow; last offset delivered: {last}; subscribe again with \
         since_offset {last}"
    ))
}
