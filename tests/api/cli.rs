//! The `token` and `migrate` subcommands.

use std::time::Duration;

use switchboard::{auth::JwtAuth, config::JwtSecret};

use crate::{
    helpers::TEST_JWT_SECRET,
    process::{run_within, switchboard},
};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn token_prints_a_jwt_signed_with_the_configured_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = switchboard(dir.path());
    command
        .args(["token", "--sub", "ann", "--ttl", "2h", "--role", "admin"])
        .env("SWITCHBOARD_JWT_SECRET", TEST_JWT_SECRET);

    let run = run_within(command, LIMIT);

    assert!(run.status.success(), "{}", run.stderr);
    let auth = JwtAuth::new(&JwtSecret::parse(TEST_JWT_SECRET).unwrap());
    let claims = auth
        .verify(run.stdout.trim())
        .expect("the printed token verifies");
    assert_eq!(claims.sub, "ann");
    assert!(claims.is_admin());
    assert_eq!(claims.exp - claims.iat.unwrap(), 7200);
}

#[test]
fn token_without_a_secret_explains_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = switchboard(dir.path());
    command.args(["token", "--sub", "ann"]);
    let run = run_within(command, LIMIT);
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("SWITCHBOARD_JWT_SECRET"),
        "{}",
        run.stderr
    );
}

#[test]
fn token_rejects_a_bad_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = switchboard(dir.path());
    command.args([
        "token",
        "--sub",
        "ann",
        "--ttl",
        "0s",
        "--jwt-secret",
        TEST_JWT_SECRET,
    ]);
    let run = run_within(command, LIMIT);
    assert!(!run.status.success());
    assert!(run.stderr.contains("ttl"), "{}", run.stderr);
}

#[test]
fn migrate_run_status_and_revert_work_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let migrate = |action: &str| {
        let mut command = switchboard(dir.path());
        command.args(["migrate", action, "--database-url", "cli.db"]);
        let run = run_within(command, LIMIT);
        assert!(run.status.success(), "migrate {action}: {}", run.stderr);
        run.stdout
    };

    // Before anything exists, status and revert say so, name the path and create nothing.
    for action in ["status", "revert"] {
        let mut command = switchboard(dir.path());
        command.args(["migrate", action, "--database-url", "cli.db"]);
        let run = run_within(command, LIMIT);
        assert!(!run.status.success(), "migrate {action} on nothing");
        assert!(
            run.stderr.contains("no SQLite database at cli.db"),
            "{}",
            run.stderr
        );
        assert!(!dir.path().join("cli.db").exists(), "{action} created it");
    }
    assert!(migrate("run").contains("applied"));
    assert!(
        dir.path().join("cli.db").exists(),
        "the default-style path is used"
    );
    let applied = migrate("status");
    assert!(
        applied.lines().all(|l| l.starts_with("applied")),
        "{applied}"
    );
    assert!(migrate("run").contains("no pending migrations"));
    assert!(migrate("revert").contains("reverted"));
    assert!(migrate("status")
        .lines()
        .last()
        .unwrap()
        .starts_with("pending"));
}

/// `--help` output of `args`.
fn help(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = switchboard(dir.path());
    command.args(args).arg("--help");
    let run = run_within(command, LIMIT);
    assert!(run.status.success(), "{args:?} --help: {}", run.stderr);
    run.stdout
}

#[test]
fn each_subcommand_help_lists_only_the_flags_it_takes() {
    let token = help(&["token"]);
    for flag in [
        "--sub",
        "--ttl",
        "--role",
        "--name",
        "--jwt-secret",
        "--config",
    ] {
        assert!(token.contains(flag), "token --help names {flag}:\n{token}");
    }
    for (args, own) in [
        (&["migrate"][..], "--database-url"),
        (&["migrate", "status"][..], "--database-url"),
        (&["bench", "ws"][..], "--clients"),
    ] {
        let text = help(args);
        assert!(text.contains(own), "{args:?}:\n{text}");
        for server_only in [
            "--http-addr",
            "--ws-rate",
            "--graphql-max-depth",
            "--rate-limit",
        ] {
            assert!(
                !text.contains(server_only),
                "{args:?} lists {server_only}:\n{text}"
            );
        }
    }
    for server_only in ["--http-addr", "--ws-rate", "--database-url"] {
        assert!(!token.contains(server_only), "token lists {server_only}");
    }
    assert!(token.lines().count() < 25, "{token}");
    // The server's own flags stay on `serve` (and on the bare command, which serves).
    for args in [&["serve"][..], &[][..]] {
        let text = help(args);
        assert!(
            text.contains("--http-addr") && text.contains("--ws-rate"),
            "{args:?}"
        );
    }
}

#[test]
fn subcommand_settings_work_before_or_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    // `token`'s secret before the subcommand, too.
    let mut command = switchboard(dir.path());
    command.args([
        "--jwt-secret",
        TEST_JWT_SECRET,
        "token",
        "--sub",
        "ann",
        "--name",
        "Ann",
    ]);
    let run = run_within(command, LIMIT);
    assert!(run.status.success(), "{}", run.stderr);
    let claims = JwtAuth::new(&JwtSecret::parse(TEST_JWT_SECRET).unwrap())
        .verify(run.stdout.trim())
        .unwrap();
    assert_eq!(claims.name.as_deref(), Some("Ann"));

    // `migrate`'s database between `migrate` and the action, and after it.
    for args in [
        &["migrate", "--database-url", "a.db", "run"][..],
        &["--database-url", "b.db", "migrate", "run"][..],
    ] {
        let mut command = switchboard(dir.path());
        command.args(args);
        let run = run_within(command, LIMIT);
        assert!(run.status.success(), "{args:?}: {}", run.stderr);
    }
    assert!(dir.path().join("a.db").exists() && dir.path().join("b.db").exists());

    // `serve` takes every server flag after it.
    let mut command = switchboard(dir.path());
    command.args([
        "serve",
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
    ]);
    command.args(["--database-url", "c.db", "--jwt-secret", TEST_JWT_SECRET]);
    let server = crate::process::Server::start(command);
    assert!(
        server.http_addr.starts_with("127.0.0.1:"),
        "{}",
        server.http_addr
    );
    drop(server);
    assert!(
        dir.path().join("c.db").exists(),
        "serve used its --database-url"
    );

    // A display name that could not be shown is refused.
    let mut command = switchboard(dir.path());
    command.args([
        "token",
        "--sub",
        "ann",
        "--name",
        "",
        "--jwt-secret",
        TEST_JWT_SECRET,
    ]);
    let run = run_within(command, LIMIT);
    assert!(!run.status.success());
    assert!(run.stderr.contains("--name"), "{}", run.stderr);
}
