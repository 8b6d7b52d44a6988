//! Bad configuration: the binary exits non-zero within 10 s with one clear line on
//! stderr naming the problem, and never panics.

use std::{net::TcpListener, time::Duration};

use crate::{
    helpers::in_ci,
    process::{run_within, switchboard},
};

const LIMIT: Duration = Duration::from_secs(10);

/// Runs the server with `args` and checks the failure report.
fn assert_refuses_to_start(args: &[&str], env: &[(&str, &str)], expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = switchboard(dir.path());
    // Defaults through the environment, so the flags under test can override them.
    command.env("SWITCHBOARD_HTTP_ADDR", "127.0.0.1:0");
    command.env("SWITCHBOARD_GRPC_ADDR", "127.0.0.1:0");
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }

    let run = run_within(command, LIMIT);

    assert!(
        !run.status.success(),
        "{args:?} should fail; stdout: {}",
        run.stdout
    );
    assert!(run.elapsed < LIMIT, "took {:?}", run.elapsed);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one line on stderr for {args:?}, got:\n{}",
        run.stderr
    );
    assert!(
        lines[0].contains(expected),
        "stderr for {args:?} should mention `{expected}`: {}",
        lines[0]
    );
    for output in [&run.stdout, &run.stderr] {
        assert!(!output.contains("panicked"), "no panic: {output}");
        assert!(
            !output.contains("stack backtrace"),
            "no backtrace: {output}"
        );
    }
}

#[test]
fn an_unparseable_database_url_is_named() {
    assert_refuses_to_start(
        &["--database-url", "mysql://db/x"],
        &[],
        "invalid database url",
    );
    assert_refuses_to_start(
        &[],
        &[("DATABASE_URL", "postgres://host:port/db")],
        "invalid database url",
    );
}

#[test]
fn an_unreachable_postgres_is_named() {
    // Port 1 on loopback refuses connections at once.
    assert_refuses_to_start(
        &[
            "--database-url",
            "postgres://postgres@127.0.0.1:1/switchboard",
        ],
        &[],
        "cannot open the postgres database postgres://postgres@127.0.0.1:1/switchboard",
    );
}

#[test]
fn a_port_in_use_is_named() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_refuses_to_start(
        &["--http-addr", &addr],
        &[],
        &format!("cannot listen for HTTP on {addr}"),
    );
    assert_refuses_to_start(
        &["--grpc-addr", &addr],
        &[],
        &format!("cannot listen for gRPC on {addr}"),
    );
}

#[test]
fn an_unusable_sqlite_path_is_named() {
    assert_refuses_to_start(
        &["--database-url", "/nonexistent-switchboard-dir/db.sqlite"],
        &[],
        "directory /nonexistent-switchboard-dir does not exist",
    );
}

#[test]
fn an_unopenable_sqlite_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory should be.
    std::fs::write(dir.path().join("file"), b"").unwrap();
    let under_file = dir.path().join("file/db.sqlite");
    assert_refuses_to_start(
        &["--database-url", under_file.to_str().unwrap()],
        &[],
        "is not a directory",
    );
    // A directory where the database file should be.
    assert_refuses_to_start(
        &["--database-url", dir.path().to_str().unwrap()],
        &[],
        "cannot open the sqlite database",
    );
    // A file that is not a SQLite database.
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![b'x'; 4096]).unwrap();
    assert_refuses_to_start(
        &["--database-url", garbage.to_str().unwrap()],
        &[],
        "file is not a database",
    );
}

#[test]
fn bad_flag_values_are_named() {
    assert_refuses_to_start(&["--http-addr", "localhost"], &[], "invalid http address");
    assert_refuses_to_start(
        &["--shutdown-timeout", "soon"],
        &[],
        "invalid shutdown timeout",
    );
    assert_refuses_to_start(&["--jwt-secret", "short"], &[], "invalid jwt secret");
    assert_refuses_to_start(
        &["--db-max-connections", "0"],
        &[],
        "invalid database max connections",
    );
    assert_refuses_to_start(
        &[],
        &[("SWITCHBOARD_DB_CONNECT_TIMEOUT", "forever")],
        "invalid database connect timeout",
    );
}

#[test]
fn bad_websocket_settings_are_named() {
    assert_refuses_to_start(
        &["--allowed-origins", "https://ok.example,app.example.com"],
        &[],
        "invalid allowed origins",
    );
    assert_refuses_to_start(
        &["--ws-max-rooms", "0"],
        &[],
        "invalid websocket max rooms per session",
    );
    assert_refuses_to_start(
        &[],
        &[("SWITCHBOARD_WS_PONG_TIMEOUT", "0s")],
        "invalid websocket pong timeout",
    );
    assert_refuses_to_start(
        &["--ws-overload-lag", "500us"],
        &[],
        "invalid websocket overload lag",
    );
    assert_refuses_to_start(
        &["--ws-stall-timeout", "1m"],
        &[],
        "invalid websocket stall timeout",
    );
}

#[test]
fn a_bad_otlp_endpoint_is_named() {
    assert_refuses_to_start(
        &["--otlp-endpoint", "collector:4318"],
        &[],
        "invalid otlp endpoint",
    );
}

#[test]
fn bad_rate_limit_settings_are_named() {
    assert_refuses_to_start(&["--rate-limit", "0"], &[], "invalid rate limit");
    assert_refuses_to_start(
        &["--trusted-proxies", "10.0.0.1,proxy.local"],
        &[],
        "invalid trusted proxies",
    );
}

#[test]
fn a_broken_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "htp_addr = \"127.0.0.1:1\"\n").unwrap();
    assert_refuses_to_start(
        &["--config", unknown.to_str().unwrap()],
        &[],
        "unknown field `htp_addr`",
    );

    let missing = dir.path().join("missing.toml");
    assert_refuses_to_start(
        &["--config", missing.to_str().unwrap()],
        &[],
        "cannot read config file",
    );
}

#[test]
fn ci_runs_the_postgres_tests() {
    // Guards against a CI that silently skips every PostgreSQL test.
    if in_ci() {
        assert!(
            std::env::var("SWITCHBOARD_TEST_POSTGRES_URL").is_ok(),
            "CI=true requires SWITCHBOARD_TEST_POSTGRES_URL"
        );
    }
}
