//! `switchboard.chat.v1.ChatService`: the server API for backends over gRPC — conversions
//! around [`ServerApi`], plus `Subscribe`, a hidden session kept joined to its room and
//! streamed.

use std::{pin::Pin, time::Duration};

use futures_util::Stream;
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::pb::chat::{self, chat_service_server::ChatService};
use crate::{
    actors::api_session::{ApiError, ApiEvent, Opened},
    auth::Claims,
    domain::RoomId,
    server_api::{
        BroadcastInput, DisconnectInput, Failure, MessageInfo, PrivateInput, PublishInput,
        RoomInput, ServerApi, UnsubscribeInput,
    },
};

/// Frames a `Subscribe` stream may hold for a client that does not read.
pub const SUBSCRIBE_BUFFER: usize = 1024;

/// The service: conversions around [`ServerApi`]. Cheap to clone.
#[derive(Clone)]
pub struct Chat {
    api: ServerApi,
}

impl Chat {
    /// The service over `api`.
    pub fn new(api: ServerApi) -> Self {
        Self { api }
    }
}

fn status(failure: Failure) -> Status {
    let message = failure.to_string();
    match failure {
        Failure::Unauthenticated(_) => Status::unauthenticated(message),
        Failure::PermissionDenied => Status::permission_denied(message),
        Failure::InvalidArgument(_) => Status::invalid_argument(message),
        Failure::NotFound(_) => Status::not_found(message),
        Failure::Aborted => Status::aborted(message),
        Failure::Unavailable(_) => Status::unavailable(message),
    }
}

/// A proto string map as chat metadata (absent when empty).
fn metadata(
    pairs: &std::collections::HashMap<String, String>,
) -> Option<serde_json::Map<String, Value>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect()
    })
}

fn caller<T>(request: &Request<T>) -> Option<&Claims> {
    request.extensions().get::<Claims>()
}

fn wire(message: MessageInfo) -> chat::ChatMessage {
    chat::ChatMessage {
        room: message.room,
        offset: message.offset,
        id: message.id,
        from: message.from,
        name: message.name.unwrap_or_default(),
        content: message.content,
        metadata: message
            .metadata
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                (k, v)
            })
            .collect(),
        created_at: message.created_at,
    }
}

type MessageStream = Pin<Box<dyn Stream<Item = Result<chat::ChatMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ChatService for Chat {
    async fn publish(
        &self,
        request: Request<chat::PublishRequest>,
    ) -> Result<Response<chat::PublishResponse>, Status> {
        let input = PublishInput {
            room: request.get_ref().room.clone(),
            content: request.get_ref().content.clone(),
            metadata: metadata(&request.get_ref().metadata),
            idempotency_key: Some(request.get_ref().idempotency_key.clone()),
        };
        let published = self
            .api
            .publish(caller(&request), input)
            .await
            .map_err(status)?;
        Ok(Response::new(chat::PublishResponse {
            offset: published.offset,
            epoch: published.epoch,
        }))
    }

    async fn broadcast(
        &self,
        request: Request<chat::BroadcastRequest>,
    ) -> Result<Response<chat::BroadcastResponse>, Status> {
        let input = BroadcastInput {
            rooms: request.get_ref().rooms.clone(),
            content: request.get_ref().content.clone(),
            metadata: metadata(&request.get_ref().metadata),
        };
        let done = self
            .api
            .broadcast(caller(&request), input)
            .await
            .map_err(status)?;
        Ok(Response::new(chat::BroadcastResponse {
            results: done
                .results
                .into_iter()
                .map(|r| chat::RoomResult {
                    room: r.room,
                    offset: r.offset.unwrap_or_default(),
                    error: r.error.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn send_private(
        &self,
        request: Request<chat::SendPrivateRequest>,
    ) -> Result<Response<chat::SendPrivateResponse>, Status> {
        let input = PrivateInput {
            user_id: request.get_ref().user_id.clone(),
            content: request.get_ref().content.clone(),
            metadata: metadata(&request.get_ref().metadata),
        };
        let sent = self
            .api
            .send_private(caller(&request), input)
            .await
            .map_err(status)?;
        Ok(Response::new(chat::SendPrivateResponse { id: sent.id }))
    }

    async fn presence(
        &self,
        request: Request<chat::RoomRequest>,
    ) -> Result<Response<chat::PresenceResponse>, Status> {
        let presence = self
            .api
            .presence(caller(&request), &request.get_ref().room)
            .await
            .map_err(status)?;
        Ok(Response::new(chat::PresenceResponse {
            members: presence
                .members
                .into_iter()
                .map(|m| chat::Member {
                    user_id: m.user_id,
                    name: m.name.unwrap_or_default(),
                    sessions: m.sessions,
                })
                .collect(),
            count: presence.count,
            truncated: presence.truncated,
        }))
    }

    async fn presence_stats(
        &self,
        request: Request<chat::RoomRequest>,
    ) -> Result<Response<chat::PresenceStatsResponse>, Status> {
        let presence = self
            .api
            .presence(caller(&request), &request.get_ref().room)
            .await
            .map_err(status)?;
        Ok(Response::new(chat::PresenceStatsResponse {
            users: presence.count,
            sessions: presence.members.iter().map(|m| m.sessions).sum(),
        }))
    }

    async fn rooms(
        &self,
        request: Request<chat::RoomsRequest>,
    ) -> Result<Response<chat::RoomsResponse>, Status> {
        let list = self
            .api
            .rooms(caller(&request), &request.get_ref().prefix)
            .await
            .map_err(status)?;
        Ok(Response::new(chat::RoomsResponse {
            rooms: list
                .rooms
                .into_iter()
                .map(|r| chat::RoomSummary {
                    room: r.room,
                    users: r.users,
                    sessions: r.sessions,
                })
                .collect(),
        }))
    }

    async fn history(
        &self,
        request: Request<chat::HistoryRequest>,
    ) -> Result<Response<chat::HistoryResponse>, Status> {
        let input = RoomInput {
            room: request.get_ref().room.clone(),
            limit: Some(request.get_ref().limit),
            since_offset: request.get_ref().since_offset,
            reverse: request.get_ref().reverse,
        };
        let page = self
            .api
            .history(caller(&request), input)
            .await
            .map_err(status)?;
        Ok(Response::new(chat::HistoryResponse {
            messages: page.messages.into_iter().map(wire).collect(),
            offset: page.offset,
            truncated: page.truncated,
            recovered: page.recovered,
        }))
    }

    async fn disconnect(
        &self,
        request: Request<chat::DisconnectRequest>,
    ) -> Result<Response<chat::DisconnectResponse>, Status> {
        let input = DisconnectInput {
            user_id: request.get_ref().user_id.clone(),
            code: Some(u16::try_from(request.get_ref().code).unwrap_or(u16::MAX)),
            reason: Some(request.get_ref().reason.clone()),
        };
        let done = self
            .api
            .disconnect(caller(&request), input)
            .await
            .map_err(status)?;
        Ok(Response::new(chat::DisconnectResponse {
            sessions: done.sessions,
            nodes: done.nodes,
        }))
    }

    async fn unsubscribe(
        &self,
        request: Request<chat::UnsubscribeRequest>,
    ) -> Result<Response<chat::DisconnectResponse>, Status> {
        let input = UnsubscribeInput {
            user_id: request.get_ref().user_id.clone(),
            room: request.get_ref().room.clone(),
        };
        let done = self
            .api
            .unsubscribe(caller(&request), input)
            .await
            .map_err(status)?;
        Ok(Response::new(chat::DisconnectResponse {
            sessions: done.sessions,
            nodes: done.nodes,
        }))
    }

    type SubscribeStream = MessageStream;

    async fn subscribe(
        &self,
        request: Request<chat::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut session = self
            .api
            .open_as(
                caller(&request),
                SUBSCRIBE_BUFFER,
                request.get_ref().presence,
                true,
            )
            .await
            .map_err(status)?;
        let room = RoomId::parse(&request.get_ref().room)
            .map_err(|error| Status::invalid_argument(format!("room: {error}")))?;
        let since = request.get_ref().since_offset;
        let joined = session
            .join(&room, since)
            .await
            .map_err(|error| match error {
                // The replay did not fit the session's outbound budget.
                ApiError::Unavailable(reason) if reason.contains("1008") => {
                    Status::resource_exhausted(
                        "too many messages to replay at once; read History from since_offset in \
                 pages, then subscribe from the last offset read",
                    )
                }
                error => status(error.into()),
            })?;
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
                let message = wire_message(&frame, room.as_str());
                let offset = message.offset;
                // Waits for the client (a replay arrives in one burst); meanwhile live
                // messages queue in the session, and one that overflows ends the stream.
                tokio::select! {
                    sent = wire.send(Ok(message)) => {
                        if sent.is_err() {
                            return;
                        }
                        last = last.max(offset);
                        continue;
                    }
                    () = session.overflowed() => too_slow(last),
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

fn wire_message(frame: &Value, room: &str) -> chat::ChatMessage {
    wire(MessageInfo::from_frame(frame, room))
}

fn too_slow(last: u64) -> Status {
    Status::resource_exhausted(format!(
        "subscriber too slow; last offset delivered: {last}; subscribe again with \
         since_offset {last}"
    ))
}
