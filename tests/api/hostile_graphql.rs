//! GraphQL under attack: documents built to pin a worker, batches built to exhaust the
//! database, and the same limits over `/subscriptions`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

async fn post_json(app: &TestApp, body: &Value) -> (u16, Value) {
    let response = app
        .http
        .post(app.url("/graphql"))
        .json(body)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

fn first_code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_cycles_are_refused_at_once_and_the_server_stays_responsive() {
    let app = spawn_app().await;
    let attacks = [
        "{ user(id:\"x\") { ...F } } fragment F on User { id ...F ...F ...F }",
        "{ user(id:\"x\") { ...A } } fragment A on User { id ...B ...B } fragment B on User { name ...A ...A }",
        "{ users { ...Nowhere } }",
    ];
    // Several at once: before the fix, two of them pinned both workers of this machine.
    let requests = (0..6).map(|i| {
        let body = json!({ "query": attacks[i % attacks.len()] });
        let app = &app;
        async move { post_json(app, &body).await }
    });
    let answers = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(requests),
    )
    .await
    .expect("every attack document is answered");
    for (status, body) in answers {
        assert_eq!(status, 400, "{body}");
        assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    }
    assert_eq!(app.get_status("/livez").await, 200);
    // A sound document still runs.
    let (status, body) = post_json(&app, &json!({ "query": "{ users { id } }" })).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_bounded_in_operations_and_in_total_cost() {
    let app = spawn_app().await;
    let heavy = json!({ "query": "{ users(limit: 100) { id name posts { id } } }" }); // 1 + 100 × 13
    let light = json!({ "query": "{ users(limit: 1) { id } }" });

    let (status, body) = post_json(&app, &Value::Array(vec![light.clone(); 11])).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(first_code(&body), "BATCH_LIMIT_EXCEEDED", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["limit"], 10);

    // Each document alone is under the default limit of 10,000; eight together are not.
    let (status, body) = post_json(&app, &Value::Array(vec![heavy.clone(); 8])).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(first_code(&body), "COST_LIMIT_EXCEEDED", "{body}");
    assert!(body["errors"][0]["extensions"]["cost"].as_u64().unwrap() > 10_000);

    let (status, body) = post_json(&app, &Value::Array(vec![heavy, light])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
}
