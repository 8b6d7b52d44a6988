//! Edges that must hold the same rule on every front door: tokens not valid yet, trace
//! state that breaks the W3C grammar, and one email rule.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use switchboard::{auth::Claims, grpc::pb::CreateUserRequest, grpc::pb::ListUsersRequest};
use tonic::Code;

use crate::{
    grpc_users::{client, client_with},
    helpers::{spawn_app, TestApp, TEST_JWT_SECRET},
    ws_client::{raw_connect, token},
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with the test secret.
fn signed(claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(TEST_JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

async fn create_over_graphql(app: &TestApp, token: &str, email: &str) -> Value {
    let body = json!({
        "query": "mutation($input: UserInput!) { createUser(input: $input) { email } }",
        "variables": { "input": { "name": "Edge", "email": email } },
    });
    app.post_graphql(Some(token), &body)
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_refused_before_its_nbf_on_every_front_door() {
    let app = spawn_app().await;
    let early = signed(&Claims {
        sub: "early".into(),
        exp: now() + 3600,
        iat: None,
        nbf: Some(now() + 600),
        role: None,
        name: None,
    });

    let refused = raw_connect(&app, &format!("?token={early}"), &[])
        .await
        .expect_err("the upgrade is refused");
    assert_eq!(refused.status, 401, "{:?}", refused.body);

    let mut grpc = client_with(&app, Some(format!("Bearer {early}"))).await;
    let status = grpc
        .list_users(ListUsersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let answer = create_over_graphql(&app, &early, "early@example.com").await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{answer}"
    );

    // A subject that could not serve as a user id is refused the same way.
    let control = signed(&Claims {
        sub: "line\nbreak".into(),
        exp: now() + 3600,
        iat: Some(now()),
        nbf: None,
        role: None,
        name: None,
    });
    let refused = raw_connect(&app, &format!("?token={control}"), &[])
        .await
        .expect_err("the upgrade is refused");
    assert_eq!(refused.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracestate_that_breaks_the_w3c_grammar_is_dropped_not_reflected() {
    let app = spawn_app().await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = |value: &str| {
        let request = app
            .http
            .get(app.url("/rooms"))
            .header("traceparent", parent)
            .header("tracestate", value.to_owned())
            .send();
        async move {
            let response = request.await.unwrap();
            response
                .headers()
                .get("tracestate")
                .map(|v| v.to_str().unwrap().to_owned())
        }
    };
    assert_eq!(
        tracestate(" a=1 ,, tenant@sys=two ").await.as_deref(),
        Some("a=1,tenant@sys=two"),
        "valid members are passed on, normalised"
    );
    let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    for bad in [
        "<script>=1".to_owned(),
        "a=1,a=2".to_owned(),
        "Upper=1".to_owned(),
        many.join(","),
        format!("a={}", "x".repeat(600)),
    ] {
        assert_eq!(tracestate(&bad).await, None, "{bad:.40}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_email_rule_on_every_front_door() {
    let app = spawn_app().await;
    let mut grpc = client(&app).await;
    let writer = token("writer", None);
    for (i, bad) in [
        "\"a b\"@example.com",
        "a@[127.0.0.1]",
        "Ann <ann@example.com>",
    ]
    .into_iter()
    .enumerate()
    {
        let status = grpc
            .create_user(CreateUserRequest {
                name: format!("Bad {i}"),
                email: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert!(status.message().contains("email"), "{}", status.message());
        let answer = create_over_graphql(&app, &writer, bad).await;
        assert_eq!(
            answer["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{bad}: {answer}"
        );
        assert_eq!(answer["errors"][0]["extensions"]["field"], "email");
    }
    let stored = grpc
        .create_user(CreateUserRequest {
            name: "Ops".into(),
            email: "Ops@LocalHost".into(),
            ..Default::default()
        })
        .await
        .expect("a single-label domain is an address")
        .into_inner();
    assert_eq!(stored.email, "ops@localhost");
    let answer = create_over_graphql(&app, &writer, "dev@intranet").await;
    assert_eq!(
        answer["data"]["createUser"]["email"], "dev@intranet",
        "{answer}"
    );
}
