//! Third-party clients with their defaults against the real server: Python's gql (with
//! graphql-core) and npm's graphql-ws (with graphql-js) query over WebSocket, subscribe,
//! and fetch the schema by introspection.

use std::{process::Command, time::Duration};

use serde_json::Value;

use crate::{
    helpers::{in_ci, spawn_app},
    process::run_within,
};

/// Whether `python3` can import `module`; outside CI a missing one skips the test.
fn python_has(module: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        assert!(
            !in_ci(),
            "CI=true but python3 cannot import {module} (pip install 'gql[websockets,requests]')"
        );
        eprintln!(
            "skipping: python3 cannot import {module} (pip install 'gql[websockets,requests]')"
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gql_with_its_defaults_queries_over_websocket_and_introspects_over_http() {
    if !python_has("gql, websockets, requests_toolbelt") {
        return;
    }
    let app = spawn_app().await;
    let (ws, http) = (
        format!("ws://{}/subscriptions", app.http_addr),
        format!("http://{}/graphql", app.http_addr),
    );
    let finished = tokio::task::spawn_blocking(move || {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/gql_client.py");
        let mut command = Command::new("python3");
        command.args([script, &ws, &http]);
        run_within(command, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert!(finished.status.success(), "{}", finished.stderr);
    let seen: Value = serde_json::from_str(finished.stdout.lines().last().unwrap()).unwrap();
    // gql offers both protocols, legacy first, and cannot read a lower-case answer header:
    // it gets (and assumes) the one it listed first.
    assert_eq!(seen["subprotocol"], "graphql-ws", "{seen}");
    assert_eq!(seen["result"]["users"], serde_json::json!([]), "{seen}");
    let types = seen["types"].as_array().unwrap();
    for wanted in ["Query", "Mutation", "Subscription", "User", "Post"] {
        assert!(types.iter().any(|t| t == wanted), "{wanted} in {seen}");
    }
}

/// Whether the npm clients are installed (`npm ci` in `tests/clients`); outside CI a
/// missing install skips the test.
fn node_clients_installed() -> bool {
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/node_modules");
    let found = [
        "graphql-ws",
        "@grpc/grpc-js",
        "@grpc/proto-loader",
        "@apidevtools/swagger-parser",
    ]
    .iter()
    .all(|package| std::path::Path::new(modules).join(package).exists())
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
    if !found {
        assert!(
            !in_ci(),
            "CI=true but node or tests/clients/node_modules is missing (npm ci --prefix tests/clients)"
        );
        eprintln!("skipping: run `npm ci --prefix tests/clients` (needs node)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_graphql_ws_queries_subscribes_and_introspects_with_graphql_js() {
    if !node_clients_installed() {
        return;
    }
    let app = spawn_app().await;
    let base = format!("http://{}", app.http_addr);
    let token = crate::ws_client::token("node-client", None);
    let finished = tokio::task::spawn_blocking(move || {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/graphql_ws_client.mjs"
        );
        let mut command = Command::new("node");
        command.args([script, &base, &token]);
        run_within(command, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert!(finished.status.success(), "{}", finished.stderr);
    let seen: Value = serde_json::from_str(finished.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["introspection_status"], 200, "{seen}");
    assert!(
        seen["introspection_type"]
            .as_str()
            .unwrap()
            .starts_with("application/graphql-response+json"),
        "{seen}"
    );
    let types = seen["types"].as_array().unwrap();
    for wanted in ["Query", "Mutation", "Subscription", "User", "Post"] {
        assert!(types.iter().any(|t| t == wanted), "{wanted} in {seen}");
    }
    assert_eq!(
        seen["subscription_fields"],
        serde_json::json!(["userCreated", "userUpdated", "userDeleted", "postCreated"]),
        "{seen}"
    );
    assert!(seen["queried"]["data"]["users"].is_array(), "{seen}");
    let name = seen["event"]["data"]["userCreated"]["name"]
        .as_str()
        .unwrap();
    assert!(name.starts_with("Node "), "{seen}");
}

/// A backend on grpc-js (the official Node.js client, proto loaded at run time) publishes,
/// retries with the same key, reads presence and history; a WebSocket member gets the
/// message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_drives_the_server_api() {
    if !node_clients_installed() {
        return;
    }
    let app = spawn_app().await;
    let mut member = crate::ws_client::WsClient::user(&app, "member").await;
    member.join("js-room").await;
    let address = app.grpc_addr.to_string();
    let token = crate::ws_client::token("node-backend", Some("service"));
    let finished = tokio::task::spawn_blocking(move || {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/grpc_chat_client.mjs"
        );
        let mut command = Command::new("node");
        command.args([script, &address, &token, "js-room"]);
        run_within(command, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert!(finished.status.success(), "{}", finished.stderr);
    let seen: Value = serde_json::from_str(finished.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["published"]["offset"], 1, "{seen}");
    assert_eq!(seen["retried"], seen["published"], "{seen}");
    assert_eq!(
        seen["presence"]["members"][0]["user_id"], "member",
        "{seen}"
    );
    assert_eq!(
        seen["history"]["messages"][0]["content"], "from grpc-js",
        "{seen}"
    );
    assert_eq!(
        seen["history"]["messages"][0]["from"], "node-backend",
        "{seen}"
    );
    assert_eq!(seen["invalid_code"], 3, "INVALID_ARGUMENT: {seen}");
    let relayed = member.recv_kind("message").await;
    assert_eq!(relayed["metadata"]["via"], "node", "{relayed}");
    member.assert_silent(Duration::from_millis(300)).await;
}

/// The server API's OpenAPI document passes a third-party OpenAPI 3 validator
/// (@apidevtools/swagger-parser: the schema and every `$ref`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_passes_swagger_parser() {
    if !node_clients_installed() {
        return;
    }
    let app = spawn_app().await;
    let url = app.url("/api/v1/openapi.json");
    let finished = tokio::task::spawn_blocking(move || {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/openapi_validate.mjs"
        );
        let mut command = Command::new("node");
        command.args([script, &url]);
        run_within(command, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert!(finished.status.success(), "invalid: {}", finished.stderr);
    let seen: Value = serde_json::from_str(finished.stdout.lines().last().unwrap()).unwrap();
    assert!(
        seen["openapi"].as_str().unwrap().starts_with("3."),
        "{seen}"
    );
    assert_eq!(seen["paths"].as_array().unwrap().len(), 8, "{seen}");
}
