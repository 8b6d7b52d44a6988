//! GraphQL limits, CORS, the GraphiQL/Playground pages, and subscriptions over both
//! WebSocket protocols.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::domain::SearchFilter;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

use crate::{
    grpc_stream::until_events,
    grpc_users::client,
    helpers::{spawn_app, spawn_app_with, test_settings, TestApp, TestDb},
    ws_client::token,
};

async fn post(app: &TestApp, query: &str) -> (u16, Value) {
    let response = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn documents_over_the_depth_or_cost_limit_are_refused_before_running() {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.graphql.max_depth = 4;
    settings.graphql.max_cost = 500;
    let app = spawn_app_with(db, settings).await;

    let (status, body) = post(
        &app,
        "{ users { posts { author { posts { author { name } } } } } }",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("nesting exceeds the limit of 4"),
        "{message}"
    );

    // Background work (health pings, the saga resume pass) also queries the database:
    // a refused document that ran would add queries on every try, so one quiet try of a
    // few shows that nothing ran.
    let mut quiet = false;
    for _ in 0..5 {
        let before = app.database.stats().total_queries;
        let (status, body) = post(&app, "{ users(limit: 100) { posts { title } } }").await;
        assert_eq!(status, 400, "{body}");
        let error = &body["errors"][0];
        assert_eq!(error["extensions"]["code"], "COST_LIMIT_EXCEEDED");
        assert_eq!(error["extensions"]["cost"], 1101);
        assert_eq!(error["extensions"]["limit"], 500);
        assert!(error["message"].as_str().unwrap().contains("1101"));
        if app.database.stats().total_queries == before {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "nothing ran");

    let (status, body) = post(&app, "{ users(limit: 20) { posts { title } } }").await;
    assert_eq!(status, 200, "cost 221 is within the limit: {body}");
}

#[tokio::test]
async fn cors_preflights_are_answered_for_allowed_origins_only() {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.graphql.cors_origins =
        switchboard::config::OriginPolicy::parse(&["https://app.example.com"]).unwrap();
    let app = spawn_app_with(db, settings).await;

    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/graphql"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let headers = preflight.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));

    let actual = app
        .http
        .post(app.url("/graphql"))
        .header("origin", "https://app.example.com")
        .json(&json!({ "query": "{ users { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        actual.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );

    let foreign = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/graphql"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    assert!(foreign
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[tokio::test]
async fn graphiql_and_playground_point_at_the_endpoints() {
    let app = spawn_app().await;
    for page in ["/graphiql", "/playground"] {
        let response = app.http.get(app.url(page)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{page}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = response.text().await.unwrap();
        assert!(html.contains("/graphql"), "{page} names the HTTP endpoint");
        assert!(
            html.contains("/subscriptions"),
            "{page} names the subscription endpoint"
        );
    }
}

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn subscription_socket(app: &TestApp, protocol: &str) -> Socket {
    subscription_socket_at(&app.http_addr.to_string(), protocol).await
}

/// A `/subscriptions` socket to the server at `addr` (`IP:PORT`) offering `protocol`.
pub(crate) async fn subscription_socket_at(addr: &str, protocol: &str) -> Socket {
    let mut request = format!("ws://{addr}/subscriptions")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(protocol).unwrap(),
    );
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// The next JSON message that is not a keep-alive, or `None` when the socket closes.
pub(crate) async fn next_message(socket: &mut Socket) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message in time")?;
        match frame.ok()? {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if !matches!(value["type"].as_str(), Some("ka" | "ping" | "pong")) {
                    return Some(value);
                }
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

pub(crate) async fn send(socket: &mut Socket, value: Value) {
    socket.send(Message::text(value.to_string())).await.unwrap();
}

pub(crate) async fn until_subscribers(app: &TestApp, count: u64) {
    until_events(app, "subscribers", |stats| stats["subscribers"] == count).await;
}

/// A subscription socket past `connection_init` / `connection_ack`.
pub(crate) async fn initialised_socket(app: &TestApp, protocol: &str, payload: Value) -> Socket {
    let mut socket = subscription_socket(app, protocol).await;
    send(
        &mut socket,
        json!({ "type": "connection_init", "payload": payload }),
    )
    .await;
    let ack = next_message(&mut socket).await.unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    socket
}

async fn create_over_graphql(app: &TestApp, name: &str) {
    let body = json!({
        "query": "mutation($i: UserInput!) { createUser(input: $i) { id } }",
        "variables": { "i": { "name": name, "email": format!("{name}@example.com") } },
    });
    let writer = token("writer", None);
    let response: Value = app
        .post_graphql(Some(&writer), &body)
        .await
        .json()
        .await
        .unwrap();
    assert!(response["errors"].is_null(), "{response}");
}

async fn create_over_grpc(app: &TestApp, name: &str) {
    client(app)
        .await
        .create_user(switchboard::grpc::pb::CreateUserRequest {
            name: name.into(),
            email: format!("{name}@example.com"),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn graphql_transport_ws_subscribers_see_users_from_grpc_and_graphql() {
    let app = spawn_app().await;
    let auth = format!("Bearer {}", token("viewer", None));
    let mut socket = initialised_socket(
        &app,
        "graphql-transport-ws",
        json!({ "authorization": auth }),
    )
    .await;
    send(
        &mut socket,
        json!({
            "id": "1", "type": "subscribe",
            "payload": { "query": "subscription { userCreated { name email } }" },
        }),
    )
    .await;
    until_subscribers(&app, 1).await;

    create_over_grpc(&app, "viagrpc").await;
    create_over_graphql(&app, "viagraphql").await;
    for expected in ["viagrpc", "viagraphql"] {
        let message = next_message(&mut socket).await.unwrap();
        assert_eq!(message["type"], "next", "{message}");
        assert_eq!(message["id"], "1");
        assert_eq!(message["payload"]["data"]["userCreated"]["name"], expected);
    }
}

#[tokio::test]
async fn legacy_graphql_ws_subscribers_see_new_users_and_posts() {
    let app = spawn_app().await;
    let mut socket = initialised_socket(&app, "graphql-ws", json!({})).await;
    send(
        &mut socket,
        json!({
            "id": "u", "type": "start",
            "payload": { "query": "subscription { userCreated { name } }" },
        }),
    )
    .await;
    until_subscribers(&app, 1).await;

    send(
        &mut socket,
        json!({
            "id": "p", "type": "start",
            "payload": { "query": "subscription { postCreated { title author { name } } }" },
        }),
    )
    .await;
    until_subscribers(&app, 2).await;

    create_over_grpc(&app, "legacy").await;
    let message = next_message(&mut socket).await.unwrap();
    assert_eq!(message["type"], "data", "{message}");
    assert_eq!(message["id"], "u");
    assert_eq!(message["payload"]["data"]["userCreated"]["name"], "legacy");

    let author = app
        .database
        .users_at_offset(&SearchFilter::parse("legacy").unwrap(), 1, 0)
        .await
        .unwrap()
        .remove(0);
    app.database
        .create_post(switchboard::domain::NewPost {
            author_id: author.id,
            title: switchboard::domain::PostTitle::parse("Fresh").unwrap(),
            content: switchboard::domain::PostContent::parse("news").unwrap(),
            tags: switchboard::domain::Tags::parse(Vec::new()).unwrap(),
            published: true,
        })
        .await
        .unwrap();
    let message = next_message(&mut socket).await.unwrap();
    assert_eq!(message["id"], "p", "{message}");
    assert_eq!(message["payload"]["data"]["postCreated"]["title"], "Fresh");
    assert_eq!(
        message["payload"]["data"]["postCreated"]["author"]["name"],
        "legacy"
    );
}

#[tokio::test]
async fn a_connection_runs_a_bounded_number_of_subscriptions() {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.graphql.max_subscriptions_per_connection = 1;
    let app = spawn_app_with(db, settings).await;
    let mut socket = initialised_socket(&app, "graphql-transport-ws", json!({})).await;
    for id in ["1", "2"] {
        send(
            &mut socket,
            json!({
                "id": id, "type": "subscribe",
                "payload": { "query": "subscription { userCreated { name } }" },
            }),
        )
        .await;
    }
    let refused = next_message(&mut socket).await.unwrap();
    assert_eq!(refused["id"], "2", "{refused}");
    assert_eq!(refused["type"], "error", "{refused}");
    until_subscribers(&app, 1).await;
}

#[tokio::test]
async fn a_bad_token_in_connection_init_is_refused() {
    let app = spawn_app().await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut socket = subscription_socket(&app, protocol).await;
        send(
            &mut socket,
            json!({ "type": "connection_init", "payload": { "authorization": "Bearer forged" } }),
        )
        .await;
        match next_message(&mut socket).await {
            None => {}
            Some(message) => {
                assert_ne!(message["type"], "connection_ack", "{protocol}: {message}");
                assert!(
                    message.to_string().to_lowercase().contains("token"),
                    "{protocol}: {message}"
                );
            }
        }
    }
}
