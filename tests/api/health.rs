//! `/livez`, `/readyz`, `/health` and request ids, over real HTTP.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_on, TestDb};

#[tokio::test]
async fn livez_answers_while_the_process_is_up() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/livez")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "pass");
}

#[tokio::test]
async fn readyz_is_ok_when_the_database_answers() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Checks `body` against draft-inadarei-api-health-check-06: a `status` of pass, warn or
/// fail; `checks` keyed `component` or `component:measurement`, each a non-empty list of
/// objects with a `status`, an RFC 3339 `time`, and an `observedUnit` only beside an
/// `observedValue`.
fn assert_draft_shape(body: &Value) {
    let statuses = ["pass", "warn", "fail"];
    assert!(
        statuses.contains(&body["status"].as_str().unwrap()),
        "{body}"
    );
    assert!(
        body["version"].is_string() && body["releaseId"].is_string(),
        "{body}"
    );
    let checks = body["checks"].as_object().expect("checks is an object");
    assert!(!checks.is_empty());
    for (key, list) in checks {
        let mut parts = key.split(':');
        let component = parts.next().unwrap();
        assert!(
            !component.is_empty() && parts.all(|p| !p.is_empty()) && key.matches(':').count() <= 1,
            "key {key:?} is `component:measurement`"
        );
        let list = list.as_array().unwrap_or_else(|| panic!("{key}: a list"));
        assert!(!list.is_empty(), "{key}: not empty");
        for check in list {
            assert!(
                statuses.contains(&check["status"].as_str().unwrap_or("")),
                "{key}: {check}"
            );
            let time = check["time"]
                .as_str()
                .unwrap_or_else(|| panic!("{key}: time"));
            chrono::DateTime::parse_from_rfc3339(time).unwrap_or_else(|e| panic!("{key}: {e}"));
            if check.get("observedUnit").is_some() {
                assert!(check["observedUnit"].is_string(), "{key}: {check}");
                assert!(check.get("observedValue").is_some(), "{key}: {check}");
            }
            if check["status"] == "pass" {
                assert!(check.get("observedValue").is_some(), "{key}: {check}");
            } else {
                assert!(check["output"].is_string(), "{key}: says why: {check}");
            }
        }
    }
}

#[tokio::test]
async fn health_follows_the_health_check_draft_and_keeps_its_details() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/health")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/health+json"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_draft_shape(&body);
    assert_eq!(body["status"], "pass");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let uptime = &body["checks"]["uptime"][0];
    assert!(uptime["observedValue"].is_u64(), "{uptime}");
    assert_eq!(uptime["observedUnit"], "s");
    let database = &body["checks"]["database:responseTime"][0];
    assert_eq!(database["status"], "pass");
    assert_eq!(database["componentType"], "datastore");
    assert_eq!(database["componentId"], "sqlite");
    assert_eq!(database["observedUnit"], "ms");
    assert!(database["observedValue"].as_f64().unwrap() >= 0.0);
    assert_eq!(database["pool"]["max_connections"], 5);
    assert!(database["pool"]["open"].as_u64().unwrap() >= 1);
    // Health pings run on the monitor's own connection, outside the pool and its
    // statistics; the statistics are reported all the same.
    assert!(
        database["queries"]["total_queries"].is_u64(),
        "query statistics are reported: {database}"
    );
    let hub = &body["checks"]["hub:connections"][0];
    assert_eq!(hub["observedValue"], 0);
    assert_eq!(hub["observedUnit"], "connections");
    assert!(hub["stats"]["rooms"].is_u64(), "{hub}");
    for key in [
        "circuitBreaker:state",
        "events:subscriptions",
        "rateLimiter:keys",
        "history:pending",
    ] {
        assert_eq!(body["checks"][key][0]["status"], "pass", "{key}: {body}");
    }
}

#[tokio::test]
async fn an_incoming_request_id_is_returned_unchanged() {
    let app = spawn_app().await;
    let response = app
        .http
        .get(app.url("/livez"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn requests_without_a_sane_id_get_a_generated_one() {
    let app = spawn_app().await;
    for incoming in [None, Some("has spaces in it"), Some(&*"x".repeat(200))] {
        let mut request = app.http.get(app.url("/nowhere"));
        if let Some(id) = incoming {
            request = request.header("x-request-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "unknown paths are 404"
        );
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            uuid::Uuid::try_parse(&id).is_ok(),
            "generated id {id:?} for {incoming:?}"
        );
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"],
            "not found"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_the_postgres_backend() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = spawn_app_on(db).await;
    let body: Value = app.get_json("/health").await;
    assert_eq!(
        body["checks"]["database:responseTime"][0]["backend"],
        "postgres"
    );
    assert_eq!(body["status"], "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_database_goes_away() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = spawn_app_on(db).await;
    assert_eq!(app.get_status("/readyz").await, StatusCode::OK);

    app.db().drop_postgres_database().await;

    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "fail");
    assert!(
        body["reason"].as_str().unwrap().contains("database"),
        "{body}"
    );

    let health = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = health.json().await.unwrap();
    assert_draft_shape(&body);
    assert_eq!(body["status"], "fail");
    assert_eq!(body["checks"]["database:responseTime"][0]["status"], "fail");
    assert_eq!(
        app.get_status("/livez").await,
        StatusCode::OK,
        "liveness does not depend on the database"
    );
}

#[tokio::test]
async fn the_middleware_chain_can_be_switched_off_for_measurement() {
    let db = crate::helpers::TestDb::sqlite();
    let mut settings = crate::helpers::test_settings(&db);
    settings.http_middleware = false;
    let app = crate::helpers::spawn_app_with(db, settings).await;
    let response = app.http.get(app.url("/livez")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("x-request-id").is_none());
    assert!(response.headers().get("traceparent").is_none());
}

#[tokio::test]
async fn head_on_probes_and_the_page_answers_like_get_without_a_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    for path in ["/livez", "/readyz", "/health", "/"] {
        let get = app.http.get(app.url(path)).send().await.unwrap();
        let head = app.http.head(app.url(path)).send().await.unwrap();
        assert_eq!(head.status(), get.status(), "HEAD {path}");
        assert_eq!(
            head.headers()["content-type"],
            get.headers()["content-type"],
            "HEAD {path}"
        );

        // On the wire: the head of the response and nothing after it.
        let mut socket = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
        let request = format!("HEAD {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            socket.read_to_end(&mut answer),
        )
        .await
        .expect("the server closes after answering")
        .unwrap();
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "HEAD {path}: {answer}");
        let (_, body) = answer.split_once("\r\n\r\n").expect("a complete head");
        assert_eq!(body, "", "HEAD {path} sends no body");
    }
}
