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
