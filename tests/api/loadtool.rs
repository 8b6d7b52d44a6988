//! Short smoke runs of `switchboard bench ws` and `switchboard bench grpc` against a real
//! server: the JSON line is complete and consistent, the HTML report is written.

use std::time::Duration;

use serde_json::Value;

use crate::{
    helpers::{spawn_app_with, test_settings, TestDb},
    process::{run_within, switchboard, Finished},
    ws_client::token,
};

/// Runs the binary with `args` (bounded to a minute), however it ends.
async fn run_bench<S: AsRef<str>>(args: &[S]) -> Finished {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let mut command = switchboard(dir.path());
        command.args(&args);
        run_within(command, Duration::from_secs(60))
    })
    .await
    .unwrap()
}

/// Runs the binary with `args`; returns the JSON line (the last line of stdout).
pub(crate) async fn bench(args: Vec<String>) -> Value {
    let finished = run_bench(&args).await;
    assert!(
        finished.status.success(),
        "bench failed: {}\n{}",
        finished.stdout,
        finished.stderr
    );
    let last = finished.stdout.lines().last().expect("output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {}", finished.stdout))
}

fn u(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is a count: {value}"))
}

fn f(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is a number: {value}"))
}

fn server_settings(db: &TestDb) -> switchboard::config::Settings {
    let mut settings = test_settings(db);
    settings.rate_limit_per_second = 1e6;
    settings.rate_limit_burst = 1_000_000;
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ws_reports_consistent_fanout_figures_and_an_html_report() {
    let db = TestDb::sqlite();
    let settings = server_settings(&db);
    let app = spawn_app_with(db, settings).await;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    let json = bench(
        [
            "bench",
            "ws",
            "--url",
            &format!("ws://{}/ws", app.http_addr),
            "--clients",
            "20",
            "--rooms",
            "2",
            "--publishers",
            "2",
            "--rate",
            "30",
            "--duration",
            "1s",
            "--report",
            report.to_str().unwrap(),
            "--server-pid",
            &std::process::id().to_string(),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(
        json["rss_per_connection_kib"],
        Value::Null,
        "22 connections cannot be measured: {json}"
    );
    assert!(
        json["rss_not_measured"]
            .as_str()
            .is_some_and(|why| why.contains("too few")),
        "{json}"
    );

    assert_eq!(u(&json, "clients"), 20);
    assert_eq!(u(&json, "rooms"), 2);
    assert_eq!(u(&json, "connect_errors"), 0);
    let (sent, expected, delivered) = (
        u(&json, "sent"),
        u(&json, "expected_deliveries"),
        u(&json, "delivered"),
    );
    assert!(sent > 0, "{json}");
    assert_eq!(
        u(&json, "refused"),
        0,
        "a light load is never refused: {json}"
    );
    assert_eq!(expected, sent * 10, "each room has 10 subscribers: {json}");
    assert!(delivered <= expected, "{json}");
    assert_eq!(u(&json, "lost"), expected - delivered);
    assert_eq!(delivered, expected, "a light load loses nothing: {json}");
    assert!(f(&json, "deliveries_per_sec") > 0.0);
    let (p50, p99, p999, max) = (
        f(&json, "p50_ms"),
        f(&json, "p99_ms"),
        f(&json, "p999_ms"),
        f(&json, "max_ms"),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
        "{json}"
    );
    assert_eq!(json["joins_confirmed"], true);
    let html = std::fs::read_to_string(&report).expect("the report is written");
    assert_eq!(
        html.matches("<svg").count(),
        2,
        "latency and throughput charts"
    );
    assert!(
        html.contains("&quot;delivered&quot;:"),
        "the JSON line is embedded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_grpc_measures_each_call() {
    let db = TestDb::sqlite();
    let settings = server_settings(&db);
    let app = spawn_app_with(db, settings).await;
    let addr = format!("http://{}", app.grpc_addr);
    let service_token = token("bench", None);
    for (call, users) in [
        ("get-user", "50"),
        ("stream-users", "20"),
        ("create-user", "10"),
        ("list-users", "10"),
    ] {
        let json = bench(
            [
                "bench",
                "grpc",
                "--addr",
                &addr,
                "--call",
                call,
                "--concurrency",
                "4",
                "--duration",
                "1s",
                "--users",
                users,
                "--token",
                &service_token,
            ]
            .map(String::from)
            .to_vec(),
        )
        .await;
        assert!(u(&json, "calls") > 0, "{json}");
        assert_eq!(u(&json, "errors"), 0, "{json}");
        assert!(f(&json, "calls_per_sec") > 0.0);
        assert!(f(&json, "p50_ms") <= f(&json, "max_ms"));
        if call == "stream-users" {
            let snapshot = u(&json, "snapshot_users");
            assert!(snapshot >= 20, "{json}");
            assert_eq!(u(&json, "users_received"), u(&json, "calls") * snapshot);
        } else if call == "list-users" {
            // Pages of 50 from at least the 10 seeded (and the users created meanwhile).
            assert!(
                u(&json, "users_received") >= u(&json, "calls") * 10,
                "{json}"
            );
        } else {
            assert_eq!(u(&json, "users_received"), u(&json, "calls"));
        }
    }
    // Every created user is stored (and under a unique email).
    let stored = app
        .database
        .list_users(
            &switchboard::domain::SearchFilter::parse("bench-").unwrap(),
            1,
            None,
        )
        .await
        .unwrap()
        .total_count;
    assert!(stored > 0, "CreateUser calls stored users");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_grpc_reports_failed_calls_by_code_and_fails_when_most_fail() {
    // The server's default per-client rate limit refuses most of a load test's calls.
    let db = TestDb::sqlite();
    let settings = test_settings(&db);
    let app = spawn_app_with(db, settings).await;
    let addr = format!("http://{}", app.grpc_addr);
    let service_token = token("bench", None);
    let finished = run_bench(&[
        "bench",
        "grpc",
        "--addr",
        &addr,
        "--token",
        &service_token,
        "--concurrency",
        "4",
        "--duration",
        "2s",
        "--users",
        "1",
    ])
    .await;
    assert!(!finished.status.success(), "{}", finished.stdout);
    assert!(
        finished.stderr.contains("most calls failed"),
        "{}",
        finished.stderr
    );
    let json: Value = serde_json::from_str(finished.stdout.lines().last().unwrap()).unwrap();
    let limited = u(&json["errors_by_code"], "RESOURCE_EXHAUSTED");
    assert!(limited * 2 > u(&json, "calls"), "{json}");
    assert_eq!(
        u(&json, "ok") + u(&json, "errors"),
        u(&json, "calls"),
        "{json}"
    );
    assert!(
        finished.stdout.contains("FAILED calls"),
        "the summary shows the failures: {}",
        finished.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ws_reports_a_member_that_never_reads_as_closed_and_the_others_lose_nothing() {
    let db = TestDb::sqlite();
    let mut settings = server_settings(&db);
    settings.websocket.rate_per_second = 1e6;
    settings.websocket.rate_burst = 1_000_000;
    // A member that never reads never answers a ping either: it is closed after the pong
    // timeout, however much of its traffic the kernel's socket buffers absorb. Readers
    // answer a ping every half second; 5 s of silence holds on a busy machine.
    settings.websocket.ping_interval = Duration::from_millis(500);
    settings.websocket.pong_timeout = Duration::from_secs(5);
    let app = spawn_app_with(db, settings).await;
    let json = bench(
        [
            "bench",
            "ws",
            "--url",
            &format!("ws://{}/ws", app.http_addr),
            "--clients",
            "8",
            "--publishers",
            "1",
            "--stalled",
            "1",
            "--connect-concurrency",
            "3",
            "--rate",
            "50",
            "--duration",
            "9s",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(u(&json, "connect_errors"), 0, "{json}");
    assert_eq!(u(&json, "stalled_closed"), 1, "{json}");
    assert_eq!(u(&json, "closed_by_server"), 0, "the readers stay: {json}");
    assert_eq!(u(&json, "lost"), 0, "{json}");
    assert_eq!(
        u(&json, "expected_deliveries"),
        u(&json, "sent") * 8,
        "the stalled member is not counted: {json}"
    );
}

#[tokio::test]
async fn bench_ws_refuses_bad_options_and_unreachable_servers_clearly() {
    let bad = tokio::task::spawn_blocking(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut command = switchboard(dir.path());
        command.args(["bench", "ws", "--url", "http://x", "--clients", "1"]);
        run_within(command, Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("ws:// or wss://"), "{}", bad.stderr);

    let no_concurrency = run_bench(&[
        "bench",
        "ws",
        "--url",
        "ws://127.0.0.1:9/ws",
        "--connect-concurrency",
        "0",
    ])
    .await;
    assert!(!no_concurrency.status.success());
    assert!(
        no_concurrency
            .stderr
            .contains("--connect-concurrency must be at least 1"),
        "{}",
        no_concurrency.stderr
    );

    let unreachable = tokio::task::spawn_blocking(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut command = switchboard(dir.path());
        // Port 9 (discard) is closed on loopback.
        command.args([
            "bench",
            "ws",
            "--url",
            "ws://127.0.0.1:9/ws",
            "--clients",
            "2",
        ]);
        run_within(command, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert!(!unreachable.status.success());
    assert!(
        unreachable.stderr.contains("no connection could be opened"),
        "{}",
        unreachable.stderr
    );
}

#[tokio::test]
async fn bench_ws_names_the_rate_limit_when_the_server_refuses_upgrades() {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.rate_limit_per_second = 0.01;
    settings.rate_limit_burst = 1;
    let app = spawn_app_with(db, settings).await;
    assert_eq!(app.get_status("/rooms").await, 200, "takes the only token");
    let url = format!("ws://{}/ws", app.http_addr);
    let refused = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let mut command = switchboard(dir.path());
        command.args(["bench", "ws", "--url", &url, "--clients", "2"]);
        run_within(command, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("rate limit exceeded")
            && refused
                .stderr
                .contains("raise it, e.g. `--rate-limit 1000000`"),
        "{}",
        refused.stderr
    );
}

/// Fanout driven by a backend: publishers send through the server API (gRPC, then HTTP)
/// and every subscriber gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ws_publishes_through_the_server_api() {
    let db = TestDb::sqlite();
    let settings = server_settings(&db);
    let app = spawn_app_with(db, settings).await;
    let service = token("bench-backend", Some("service"));
    for via in ["grpc", "http"] {
        let json = bench(
            [
                "bench",
                "ws",
                "--url",
                &format!("ws://{}/ws", app.http_addr),
                "--grpc-url",
                &format!("http://{}", app.grpc_addr),
                "--publish-via",
                via,
                "--api-token",
                &service,
                "--room-prefix",
                via,
                "--clients",
                "10",
                "--publishers",
                "2",
                "--rate",
                "40",
                "--duration",
                "1s",
            ]
            .map(String::from)
            .to_vec(),
        )
        .await;
        let (sent, expected, delivered) = (
            u(&json, "sent"),
            u(&json, "expected_deliveries"),
            u(&json, "delivered"),
        );
        assert!(sent >= 20, "{via}: {json}");
        assert_eq!(expected, sent * 10, "{via}: {json}");
        assert_eq!(delivered, expected, "{via} loses nothing: {json}");
        assert_eq!(u(&json, "refused"), 0, "{via}: {json}");
    }
    // Without a token the run refuses to start, and says why.
    let finished = run_bench(&[
        "bench",
        "ws",
        "--url",
        &format!("ws://{}/ws", app.http_addr),
        "--publish-via",
        "http",
        "--clients",
        "2",
        "--duration",
        "1s",
    ])
    .await;
    assert!(!finished.status.success());
    assert!(
        finished.stderr.contains("--api-token"),
        "{}",
        finished.stderr
    );
}

/// `bench grpc --call subscribe`: streaming subscribers fed by one publisher through the
/// server API lose nothing under a light load, and their delivery latency is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_grpc_measures_streaming_subscribers() {
    let db = TestDb::sqlite();
    let settings = server_settings(&db);
    let app = spawn_app_with(db, settings).await;
    let json = bench(
        [
            "bench",
            "grpc",
            "--addr",
            &format!("http://{}", app.grpc_addr),
            "--call",
            "subscribe",
            "--concurrency",
            "5",
            "--rate",
            "50",
            "--duration",
            "1s",
            "--token",
            &token("bench-backend", Some("service")),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(json["call"], "Subscribe");
    let (published, expected, delivered) = (
        u(&json, "published"),
        u(&json, "expected_deliveries"),
        u(&json, "delivered"),
    );
    assert!(published >= 25, "{json}");
    assert_eq!(expected, published * 5, "{json}");
    assert_eq!(delivered, expected, "{json}");
    assert_eq!(u(&json, "lost"), 0);
    assert!(f(&json, "p50_ms") > 0.0, "{json}");
}
