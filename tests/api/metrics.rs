//! `/metrics` through a Prometheus text parser.

use prometheus_parse::{Sample, Scrape, Value};
use switchboard::grpc::pb::GetUserRequest;

use crate::{grpc_users::client, helpers::spawn_app, ws_client::WsClient};

/// Label pairs a sample must carry.
type Labels<'a> = &'a [(&'a str, &'a str)];

fn value(scrape: &Scrape, name: &str, labels: Labels) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s: &&Sample| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test]
async fn metrics_cover_http_grpc_chat_and_the_database() {
    let app = spawn_app().await;
    app.http.get(app.url("/rooms")).send().await.unwrap();
    app.http.get(app.url("/nowhere/42")).send().await.unwrap();
    let mut users = client(&app).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    users
        .get_user(GetUserRequest { id: unknown })
        .await
        .unwrap_err();
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("lobby").await;

    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition");

    let cases: [(&str, Labels, f64); 7] = [
        (
            "switchboard_http_requests_total",
            &[("route", "/rooms"), ("status", "200"), ("method", "GET")],
            1.0,
        ),
        (
            "switchboard_http_requests_total",
            &[("route", "unmatched"), ("status", "404")],
            1.0,
        ),
        (
            "switchboard_grpc_calls_total",
            &[
                ("method", "/userservice.UserService/GetUser"),
                ("code", "NOT_FOUND"),
            ],
            1.0,
        ),
        ("switchboard_ws_sessions", &[], 1.0),
        ("switchboard_chat_rooms", &[], 1.0),
        ("switchboard_db_pool_max_connections", &[], 5.0),
        ("switchboard_chat_slow_consumer_disconnects_total", &[], 0.0),
    ];
    for (name, labels, expected) in cases {
        assert_eq!(
            value(&scrape, name, labels),
            Some(expected),
            "{name} {labels:?}"
        );
    }
    let queries = value(&scrape, "switchboard_db_queries_total", &[]).unwrap();
    assert!(queries >= 1.0, "the GetUser lookup ran a query");
    assert!(
        value(
            &scrape,
            "switchboard_http_request_duration_seconds",
            &[("route", "/rooms")]
        )
        .is_some(),
        "request durations are a histogram"
    );
    assert!(value(&scrape, "switchboard_db_query_duration_seconds", &[]).is_some());
}

#[tokio::test]
async fn process_figures_and_build_info_are_exported() {
    let app = spawn_app().await;
    let text = app.get_text("/metrics").await;
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&scrape, "switchboard_build_info", &[("version", version)]),
        Some(1.0),
        "{text}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let figure = value(&scrape, name, &[]).unwrap_or_else(|| panic!("{name} missing"));
        assert!(figure > 0.0, "{name} = {figure}");
    }
    assert!(value(&scrape, "process_cpu_seconds_total", &[]).is_some());
}
