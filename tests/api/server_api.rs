//! The server API for backends over gRPC (`switchboard.chat.v1.ChatService`), through a
//! real tonic client against a real server, next to real WebSocket members.

use std::time::Duration;

use switchboard::grpc::pb::chat::{
    chat_service_client::ChatServiceClient, BroadcastRequest, DisconnectRequest, HistoryRequest,
    PublishRequest, RoomRequest, RoomsRequest, SendPrivateRequest, SubscribeRequest,
};
use tonic::{
    metadata::MetadataValue, service::interceptor::InterceptedService, transport::Channel, Code,
    Request, Status,
};

use crate::{
    helpers::{grpc_channel, spawn_app_with, test_settings, TestApp, TestDb},
    private_redis::{forget, shared_redis, test_prefix},
    ws_client::{token, WsClient},
};

type AddToken = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
type Client = ChatServiceClient<InterceptedService<Channel, AddToken>>;

/// A client sending a token for `sub` with `role` (none: no token at all).
async fn client_as(app: &TestApp, sub: &str, role: Option<Option<&str>>) -> Client {
    let channel = grpc_channel(app.grpc_addr).await;
    let authorization = role.map(|role| format!("Bearer {}", token(sub, role)));
    let add: AddToken = Box::new(move |mut request: Request<()>| {
        if let Some(value) = &authorization {
            let value = MetadataValue::try_from(value.as_str()).unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    });
    ChatServiceClient::with_interceptor(channel, add)
}

/// A backend with the `service` role.
async fn backend(app: &TestApp) -> Client {
    client_as(app, "backend", Some(Some("service"))).await
}

async fn app() -> TestApp {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.websocket.rate_per_second = 100_000.0;
    settings.websocket.rate_burst = 100_000;
    settings.rate_limit_per_second = 100_000.0;
    settings.rate_limit_burst = 100_000;
    spawn_app_with(db, settings).await
}

fn publish(room: &str, content: &str, key: &str) -> PublishRequest {
    PublishRequest {
        room: room.into(),
        content: content.into(),
        idempotency_key: key.into(),
        ..PublishRequest::default()
    }
}

#[tokio::test]
async fn a_backend_publish_reaches_websocket_members_and_grpc_subscribers_with_one_offset() {
    let app = app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("lobby").await;
    let mut api = backend(&app).await;
    let mut stream = api
        .subscribe(SubscribeRequest {
            room: "lobby".into(),
            since_offset: None,
            presence: false,
        })
        .await
        .unwrap()
        .into_inner();

    let mut request = publish("lobby", "hello from the backend", "");
    request.metadata.insert("kind".into(), "notice".into());
    let published = api.publish(request).await.unwrap().into_inner();
    assert_eq!(published.offset, 1);

    let relayed = alice.recv_kind("message").await;
    assert_eq!(relayed["offset"], 1, "{relayed}");
    assert_eq!(relayed["from"], "backend");
    assert_eq!(relayed["content"], "hello from the backend");
    assert_eq!(relayed["metadata"]["kind"], "notice");
    let streamed = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            streamed.offset,
            streamed.from.as_str(),
            streamed.content.as_str()
        ),
        (1, "backend", "hello from the backend")
    );
    assert_eq!(streamed.metadata["kind"], "notice");

    // A member's message reaches the gRPC subscriber too, with the next offset.
    crate::history::post(&mut alice, "lobby", 1).await;
    let streamed = stream.message().await.unwrap().unwrap();
    assert_eq!((streamed.offset, streamed.from.as_str()), (2, "alice"));

    // The backend's sessions are not members: no join or leave events, not listed.
    alice.assert_silent(Duration::from_millis(300)).await;
    let presence = api
        .presence(RoomRequest {
            room: "lobby".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(presence.count, 1);
    assert_eq!(presence.members[0].user_id, "alice");
    let stats = api
        .presence_stats(RoomRequest {
            room: "lobby".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.users, stats.sessions), (1, 1));
    let members = alice.send(serde_json::json!({"type": "presence", "room_id": "lobby"}));
    members.await;
    let listing = alice.recv_kind("presence").await;
    assert_eq!(listing["metadata"]["count"], 1, "{listing}");
    let rooms = api
        .rooms(RoomsRequest {
            prefix: "lob".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rooms.rooms.len(), 1);
    assert_eq!(
        (rooms.rooms[0].room.as_str(), rooms.rooms[0].users),
        ("lobby", 1)
    );

    // History matches what the member saw.
    let history = api
        .history(HistoryRequest {
            room: "lobby".into(),
            limit: 10,
            ..HistoryRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seen: Vec<(u64, &str)> = history
        .messages
        .iter()
        .map(|m| (m.offset, m.from.as_str()))
        .collect();
    assert_eq!(seen, [(1, "backend"), (2, "alice")]);
    assert_eq!(history.offset, 2);
}

#[tokio::test]
async fn a_retried_publish_with_the_same_key_is_relayed_once() {
    let app = app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("lobby").await;
    let mut api = backend(&app).await;
    let first = api.publish(publish("lobby", "once", "k-1")).await.unwrap();
    let retry = api.publish(publish("lobby", "once", "k-1")).await.unwrap();
    assert_eq!(first.into_inner(), retry.into_inner());
    let other = api
        .publish(publish("lobby", "twice", "k-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.offset, 2);
    assert_eq!(alice.recv_kind("message").await["content"], "once");
    assert_eq!(alice.recv_kind("message").await["content"], "twice");
    alice.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_subscription_resumes_from_its_last_offset_with_no_gap_and_no_duplicate() {
    let app = app().await;
    let mut api = backend(&app).await;
    for i in 1..=3 {
        api.publish(publish("news", &format!("n{i}"), ""))
            .await
            .unwrap();
    }
    let mut stream = api
        .subscribe(SubscribeRequest {
            room: "news".into(),
            since_offset: Some(1),
            presence: false,
        })
        .await
        .unwrap()
        .into_inner();
    api.publish(publish("news", "n4", "")).await.unwrap();
    let mut offsets = Vec::new();
    while offsets.len() < 3 {
        let message = stream.message().await.unwrap().unwrap();
        assert_eq!(message.content, format!("n{}", message.offset));
        offsets.push(message.offset);
    }
    assert_eq!(offsets, [2, 3, 4]);

    // History after an offset, newest first, and cut by a limit.
    let history = |since: Option<u64>, limit: u32, reverse: bool| HistoryRequest {
        room: "news".into(),
        limit,
        since_offset: since,
        reverse,
    };
    let page = api
        .history(history(Some(1), 10, false))
        .await
        .unwrap()
        .into_inner();
    let offsets: Vec<u64> = page.messages.iter().map(|m| m.offset).collect();
    assert_eq!(
        (offsets, page.offset, page.recovered),
        (vec![2, 3, 4], 4, true)
    );
    let page = api
        .history(history(Some(1), 10, true))
        .await
        .unwrap()
        .into_inner();
    let offsets: Vec<u64> = page.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, [4, 3, 2]);
    let page = api
        .history(history(Some(0), 2, false))
        .await
        .unwrap()
        .into_inner();
    let offsets: Vec<u64> = page.messages.iter().map(|m| m.offset).collect();
    assert_eq!(
        (offsets, page.truncated, page.recovered),
        (vec![1, 2], true, false)
    );
    let page = api
        .history(history(None, 2, false))
        .await
        .unwrap()
        .into_inner();
    let offsets: Vec<u64> = page.messages.iter().map(|m| m.offset).collect();
    assert_eq!((offsets, page.truncated), (vec![3, 4], true));
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_is_cut_off_with_its_last_offset() {
    let app = app().await;
    let mut api = backend(&app).await;
    let mut stream = api
        .subscribe(SubscribeRequest {
            room: "flood".into(),
            since_offset: None,
            presence: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("flood").await;
    let text = "x".repeat(100);
    for _ in 0..5000 {
        alice
            .send(serde_json::json!({"type": "message", "room_id": "flood", "content": text}))
            .await;
    }
    let mut last = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the stream moves")
        {
            Ok(Some(message)) => {
                assert_eq!(message.offset, last + 1, "in order, no gap");
                last = message.offset;
            }
            Ok(None) => panic!("ended without a status after {last}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("last offset delivered: {last};")),
        "{status:?}"
    );
    assert!(last < 5000, "cut off before the end ({last})");

    // Subscribing again from the last offset delivered goes on with the next one.
    let mut again = api
        .subscribe(SubscribeRequest {
            room: "flood".into(),
            since_offset: Some(last),
            presence: false,
        })
        .await
        .unwrap()
        .into_inner();
    let next = again.message().await.unwrap().unwrap();
    assert_eq!(next.offset, last + 1);
}

#[tokio::test]
async fn disconnect_closes_every_session_of_the_user() {
    let app = app().await;
    let mut first = WsClient::user(&app, "mallory").await;
    let mut second = WsClient::user(&app, "mallory").await;
    let mut api = backend(&app).await;
    let closed = api
        .disconnect(DisconnectRequest {
            user_id: "mallory".into(),
            code: 4001,
            reason: "banned".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((closed.sessions, closed.nodes), (2, 1));
    for client in [&mut first, &mut second] {
        let close = client.closed().await;
        assert_eq!(
            (u16::from(close.code), close.reason.as_str()),
            (4001, "banned")
        );
    }
    let refused = api
        .disconnect(DisconnectRequest {
            user_id: "mallory".into(),
            code: 1234,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn the_server_api_needs_a_service_or_admin_token() {
    let app = app().await;
    let request = || publish("lobby", "hi", "");
    let mut anonymous = client_as(&app, "nobody", None).await;
    let status = anonymous.publish(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut user = client_as(&app, "alice", Some(None)).await;
    let status = user.publish(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let mut admin = client_as(&app, "root", Some(Some("admin"))).await;
    assert_eq!(
        admin.publish(request()).await.unwrap().into_inner().offset,
        1
    );
    let mut api = backend(&app).await;
    let status = api.publish(publish("   ", "hi", "")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = api.publish(publish("lobby", "", "")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// In a cluster, a backend's publish on one node reaches members and subscribers on the
/// others with one offset, presence is the cluster's, and `Disconnect` closes the user's
/// sessions wherever they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_api_acts_on_the_whole_cluster() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let nodes =
        crate::cluster_services::nodes_on_one_db(&redis, &prefix, &["a", "b"], |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut alice = WsClient::user(b, "alice").await;
    alice.join("lobby").await;
    let mut on_a = backend(a).await;
    let mut on_b = backend(b).await;
    let mut stream = on_b
        .subscribe(SubscribeRequest {
            room: "lobby".into(),
            since_offset: None,
            presence: false,
        })
        .await
        .unwrap()
        .into_inner();
    let published = on_a
        .publish(publish("lobby", "across", "k"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(published.offset, 1);
    assert!(!published.epoch.is_empty(), "a cluster room has an epoch");
    let relayed = alice.recv_kind("message").await;
    assert_eq!(
        (relayed["offset"].as_u64(), relayed["from"].as_str()),
        (Some(1), Some("backend"))
    );
    // The retry lands on the other node: the key is the cluster's, nothing is relayed twice.
    let retried = on_b
        .publish(publish("lobby", "across", "k"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, published);
    alice.assert_silent(Duration::from_millis(300)).await;
    let streamed = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((streamed.offset, streamed.content.as_str()), (1, "across"));
    let presence = on_a
        .presence(RoomRequest {
            room: "lobby".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(presence.members.len(), 1, "{presence:?}");
    assert_eq!(presence.members[0].user_id, "alice");
    let rooms = on_a
        .rooms(RoomsRequest {
            prefix: "lob".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rooms;
    let listed: Vec<(&str, u64, u64)> = rooms
        .iter()
        .map(|r| (r.room.as_str(), r.users, r.sessions))
        .collect();
    assert_eq!(
        listed,
        [("lobby", 1, 1)],
        "rooms on every node, from node a"
    );

    let mut mallory = WsClient::user(b, "mallory").await;
    let answer = on_a
        .disconnect(DisconnectRequest {
            user_id: "mallory".into(),
            code: 4002,
            reason: "moderated".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.sessions, answer.nodes), (0, 1));
    let close = mallory.closed().await;
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4002, "moderated")
    );
    drop(nodes);
    forget(&redis, &prefix).await;
}

/// POSTs `body` to `/api/v1/<op>` with `authorization` (if any); the status and JSON.
async fn http_api(
    app: &TestApp,
    op: &str,
    authorization: Option<String>,
    body: &str,
) -> (u16, serde_json::Value, Option<String>) {
    let mut request = app
        .http
        .post(app.url(&format!("/api/v1/{op}")))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap(), challenge)
}

#[tokio::test]
async fn the_http_api_does_what_grpc_does_with_one_error_shape() {
    let app = app().await;
    let service = Some(format!("Bearer {}", token("backend", Some("service"))));
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("lobby").await;

    let (status, published, _) = http_api(
        &app,
        "publish",
        service.clone(),
        r#"{"room": "lobby", "content": "over http", "metadata": {"n": 1}, "idempotency_key": "h1"}"#,
    )
    .await;
    assert_eq!(
        (status, published["offset"].as_u64()),
        (200, Some(1)),
        "{published}"
    );
    let (_, again, _) = http_api(
        &app,
        "publish",
        service.clone(),
        r#"{"room": "lobby", "content": "over http", "idempotency_key": "h1"}"#,
    )
    .await;
    assert_eq!(again, published, "the retry answers the first result");
    let relayed = alice.recv_kind("message").await;
    assert_eq!(
        (relayed["offset"].as_u64(), relayed["from"].as_str()),
        (Some(1), Some("backend"))
    );
    assert_eq!(relayed["metadata"]["n"], 1);
    alice.assert_silent(Duration::from_millis(300)).await;

    let (status, presence, _) =
        http_api(&app, "presence", service.clone(), r#"{"room": "lobby"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(presence["count"], 1, "{presence}");
    assert_eq!(presence["members"][0]["user_id"], "alice");
    let (_, history, _) = http_api(
        &app,
        "history",
        service.clone(),
        r#"{"room": "lobby", "limit": 5}"#,
    )
    .await;
    assert_eq!(history["messages"][0]["content"], "over http", "{history}");
    assert_eq!(history["messages"][0]["offset"], 1);
    let (status, sent, _) = http_api(
        &app,
        "private",
        service.clone(),
        r#"{"user_id": "alice", "content": "psst"}"#,
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(alice.recv_kind("private").await["content"], "psst");
    let (status, error, _) = http_api(
        &app,
        "private",
        service.clone(),
        r#"{"user_id": "nobody", "content": "psst"}"#,
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{error}"
    );
    let (status, results, _) = http_api(
        &app,
        "broadcast",
        service.clone(),
        r#"{"rooms": ["lobby", "side"], "content": "to all"}"#,
    )
    .await;
    assert_eq!(status, 200, "{results}");
    assert_eq!(results["results"][0]["offset"], 2, "{results}");
    assert_eq!(results["results"][1]["offset"], 1, "{results}");
    assert_eq!(alice.recv_kind("message").await["content"], "to all");
    let (_, rooms, _) = http_api(&app, "rooms", service.clone(), "").await;
    assert_eq!(rooms["rooms"][0]["room"], "lobby", "{rooms}");
    let (_, closed, _) = http_api(
        &app,
        "disconnect",
        service.clone(),
        r#"{"user_id": "alice", "code": 4003, "reason": "bye"}"#,
    )
    .await;
    assert_eq!(closed["sessions"], 1, "{closed}");
    let close = alice.closed().await;
    assert_eq!(u16::from(close.code), 4003);

    // Errors: one shape, gRPC's codes.
    let (status, error, challenge) = http_api(&app, "publish", None, "{}").await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("UNAUTHENTICATED")),
        "{error}"
    );
    assert_eq!(challenge.as_deref(), Some("Bearer"));
    let user = Some(format!("Bearer {}", token("alice", None)));
    let (status, error, _) = http_api(&app, "publish", user, r#"{"room":"r","content":"x"}"#).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (403, Some("PERMISSION_DENIED")),
        "{error}"
    );
    let (status, error, _) = http_api(&app, "publish", service.clone(), "{not json").await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{error}"
    );
    assert!(error["error"].as_str().unwrap().contains("JSON"), "{error}");
    let (status, error, _) =
        http_api(&app, "publish", service, r#"{"room":"lobby","content":""}"#).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{error}"
    );
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value.as_str()) {
                    ("$ref", Some(target)) => out.push(target),
                    _ => refs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_resolves() {
    let app = app().await;
    let response = app.get("/api/v1/openapi.json").await;
    assert_eq!(response.status(), 200);
    let document: serde_json::Value = response.json().await.unwrap();
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3."),
        "{document}"
    );
    assert!(document["info"]["title"].is_string());
    for op in [
        "publish",
        "broadcast",
        "private",
        "presence",
        "history",
        "rooms",
        "disconnect",
    ] {
        let post = &document["paths"][format!("/api/v1/{op}")]["post"];
        assert!(post.is_object(), "/api/v1/{op} in {document}");
        assert!(post["requestBody"]["content"]["application/json"]["schema"].is_object());
        assert!(post["responses"]["200"].is_object() && post["responses"]["401"].is_object());
        assert_eq!(post["security"][0]["bearer"], serde_json::json!([]));
    }
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let mut targets = Vec::new();
    refs(&document, &mut targets);
    assert!(targets.len() >= 10, "{targets:?}");
    for target in targets {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("a local schema reference: {target}"));
        assert!(
            document["components"]["schemas"][name].is_object(),
            "{target} resolves"
        );
    }
}

#[tokio::test]
async fn broadcast_reaches_each_room_and_private_reaches_every_session() {
    let app = app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("a").await;
    let mut alice_too = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    bob.join("b").await;
    let mut api = backend(&app).await;
    let results = api
        .broadcast(BroadcastRequest {
            rooms: vec!["a".into(), "b".into(), "   ".into()],
            content: "everyone".into(),
            ..BroadcastRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let summary: Vec<(u64, bool)> = results
        .iter()
        .map(|r| (r.offset, r.error.is_empty()))
        .collect();
    assert_eq!(summary, [(1, true), (1, true), (0, false)], "{results:?}");
    assert_eq!(alice.recv_kind("message").await["content"], "everyone");
    assert_eq!(bob.recv_kind("message").await["content"], "everyone");

    let sent = api
        .send_private(SendPrivateRequest {
            user_id: "alice".into(),
            content: "just you".into(),
            ..SendPrivateRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!sent.id.is_empty());
    for session in [&mut alice, &mut alice_too] {
        let private = session.recv_kind("private").await;
        assert_eq!(
            (private["from"].as_str(), private["content"].as_str()),
            (Some("backend"), Some("just you"))
        );
    }
    bob.assert_silent(Duration::from_millis(200)).await;
    let status = api
        .send_private(SendPrivateRequest {
            user_id: "nobody".into(),
            content: "hello?".into(),
            ..SendPrivateRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // The backend's own (hidden) sessions are not sessions of its subject.
    let _stream = api
        .subscribe(SubscribeRequest {
            room: "a".into(),
            since_offset: None,
            presence: false,
        })
        .await
        .unwrap();
    let status = api
        .send_private(SendPrivateRequest {
            user_id: "backend".into(),
            content: "to myself?".into(),
            ..SendPrivateRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn unsubscribe_takes_the_user_out_of_the_room_and_a_present_subscriber_is_listed() {
    let app = app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("lobby").await;
    let mut alice_too = WsClient::user(&app, "alice").await;
    alice_too.join("lobby").await;
    let mut bob = WsClient::user(&app, "bob").await;
    bob.join("lobby").await;
    let mut api = backend(&app).await;
    let done = api
        .unsubscribe(switchboard::grpc::pb::chat::UnsubscribeRequest {
            user_id: "alice".into(),
            room: "lobby".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.sessions, done.nodes), (2, 1));
    for session in [&mut alice, &mut alice_too] {
        let leave = session.recv_kind("leave").await;
        assert_eq!(leave["metadata"]["removed"], true, "{leave}");
    }
    let event = bob.recv_kind("presence").await;
    assert_eq!(
        (
            event["metadata"]["event"].as_str(),
            event["metadata"]["user_id"].as_str()
        ),
        (Some("leave"), Some("alice"))
    );
    // Not a member any more: a message is refused.
    alice
        .send(serde_json::json!({"type": "message", "room_id": "lobby", "content": "x"}))
        .await;
    assert!(alice.recv_error().await.contains("lobby"));

    // A subscriber that asks to be present is a member others see.
    let _stream = api
        .subscribe(SubscribeRequest {
            room: "lobby".into(),
            since_offset: None,
            presence: true,
        })
        .await
        .unwrap()
        .into_inner();
    let event = bob.recv_kind("presence").await;
    assert_eq!(
        (
            event["metadata"]["event"].as_str(),
            event["metadata"]["user_id"].as_str()
        ),
        (Some("join"), Some("backend"))
    );
    let presence = api
        .presence(RoomRequest {
            room: "lobby".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let users: Vec<&str> = presence
        .members
        .iter()
        .map(|m| m.user_id.as_str())
        .collect();
    assert_eq!(users, ["backend", "bob"]);
}

#[tokio::test]
async fn health_covers_the_chat_service() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let app = app().await;
    let mut health = HealthClient::new(grpc_channel(app.grpc_addr).await);
    let answer = health
        .check(HealthCheckRequest {
            service: "switchboard.chat.v1.ChatService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, 1, "SERVING");
    // Reflection lists it: grpc_reflection::reflection_v1_lists_every_service_without_a_token.
}

/// With the cluster's Redis gone, publishing answers UNAVAILABLE (retry), never a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_clusters_redis_a_publish_is_unavailable() {
    let Some(mut redis) = crate::private_redis::PrivateRedis::start() else {
        return;
    };
    let prefix = test_prefix();
    let nodes =
        crate::cluster_services::nodes_on_one_db(&redis.url(), &prefix, &["a"], |_| {}).await;
    let mut api = backend(&nodes[0]).await;
    assert_eq!(
        api.publish(publish("lobby", "before", ""))
            .await
            .unwrap()
            .into_inner()
            .offset,
        1
    );
    redis.kill();
    let status = api
        .publish(publish("lobby", "during", ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match api.publish(publish("lobby", "after", "")).await {
            Ok(published) => {
                assert_eq!(
                    published.into_inner().offset,
                    2,
                    "nothing was half-published"
                );
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(std::time::Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
