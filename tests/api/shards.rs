//! Sharded data on a private PostgreSQL cluster (a primary and three shards, with
//! `max_prepared_transactions` set): where rows land, the email index staying exact under
//! concurrent writes, a part that cannot prepare, and recovery of in-doubt transactions.
//! The whole gRPC user suite also runs sharded (`grpc_users::*::sharded`).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use switchboard::grpc::pb::{CreateUserRequest, DeleteUserRequest, UpdateUserRequest};
use tonic::Code;

use crate::{grpc_users::client, helpers::TestDb};

/// A server on `db` whose per-client rate limits do not get in the way of a test that
/// makes hundreds of calls as one client.
async fn lifted(db: TestDb) -> crate::helpers::TestApp {
    let mut settings = crate::helpers::test_settings(&db);
    settings.rate_limit_per_second = 100_000.0;
    settings.rate_limit_burst = 100_000;
    crate::helpers::spawn_app_with(db, settings).await
}

/// Every row of `sql`'s answer on the database at `url`, as text.
async fn rows(url: &str, sql: &str) -> Vec<Vec<String>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("the shard answers");
    let driver = tokio::spawn(connection);
    let messages = client.simple_query(sql).await.expect("the query runs");
    drop(client);
    let _ = driver.await;
    messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The URL of a PostgreSQL database setting.
fn pg_url(url: &switchboard::config::DatabaseUrl) -> String {
    match url {
        switchboard::config::DatabaseUrl::Postgres(url) => url.clone(),
        other => panic!("not PostgreSQL: {other}"),
    }
}

/// Leaves a prepared transaction `gid` on the database at `url` that inserted `email` into
/// the email index, as a server that died mid-commit would.
async fn prepare_in_doubt(url: &str, gid: &str, email: &str) {
    crate::helpers::pg_admin(
        url,
        &format!(
            "BEGIN; INSERT INTO user_emails VALUES ('{email}', 'x'); \
             PREPARE TRANSACTION '{gid}';"
        ),
    )
    .await
    .unwrap();
}

/// Logs the commit decision of transaction `gid` (touching `participants`) in the primary.
async fn log_decision(primary: &str, gid: &str, participants: &str) {
    crate::helpers::pg_admin(
        primary,
        &format!(
            "INSERT INTO tx_decisions VALUES ('{gid}', '{participants}', now() AT TIME ZONE 'UTC')"
        ),
    )
    .await
    .unwrap();
}

fn create(name: &str, email: &str) -> CreateUserRequest {
    CreateUserRequest {
        name: name.into(),
        email: email.into(),
        ..Default::default()
    }
}

/// Users (id → email) and email index rows (email → id) across `shards`, and how many
/// users each shard holds; fails if any shard still has a prepared transaction.
async fn contents(
    shards: &[String],
) -> (
    BTreeMap<String, String>,
    BTreeMap<String, String>,
    Vec<usize>,
) {
    let (mut users, mut index, mut counts) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for url in shards {
        let found = rows(url, "SELECT id, email FROM users").await;
        counts.push(found.len());
        users.extend(found.into_iter().map(|r| (r[0].clone(), r[1].clone())));
        index.extend(
            rows(url, "SELECT email, user_id FROM user_emails")
                .await
                .into_iter()
                .map(|r| (r[0].clone(), r[1].clone())),
        );
        let prepared = rows(
            url,
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
        )
        .await;
        assert!(prepared.is_empty(), "left prepared on {url}: {prepared:?}");
    }
    (users, index, counts)
}

/// Each user has its index row and each index row its user.
fn assert_index_exact(users: &BTreeMap<String, String>, index: &BTreeMap<String, String>) {
    let from_users: BTreeMap<String, String> = users
        .iter()
        .map(|(id, email)| (email.clone(), id.clone()))
        .collect();
    assert_eq!(
        &from_users, index,
        "the email index matches the users exactly"
    );
}

fn shard_urls(db: &TestDb) -> Vec<String> {
    db.settings.shards.iter().map(pg_url).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_spread_over_the_shards_and_the_email_index_stays_exact() {
    let Some(db) = TestDb::sharded(3).await else {
        return;
    };
    let shards = shard_urls(&db);
    let app = lifted(db).await;

    // 60 users from four concurrent clients.
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut users = client(&app).await;
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..15 {
                let user = users
                    .create_user(create(
                        &format!("U{w}-{i}"),
                        &format!("u{w}-{i}@example.com"),
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                ids.push(user.id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for writer in writers {
        ids.extend(writer.await.unwrap());
    }

    // Sixteen clients race for one email: exactly one gets it.
    let mut racers = Vec::new();
    for r in 0..16 {
        let mut users = client(&app).await;
        racers.push(tokio::spawn(async move {
            users
                .create_user(create(&format!("Racer {r}"), "race@example.com"))
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        }));
    }
    let mut won = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(()) => won += 1,
            Err(code) => assert_eq!(code, Code::AlreadyExists),
        }
    }
    assert_eq!(won, 1, "one email, one owner");

    // An email moves (its index row with it), a user goes (and their index row).
    let mut users = client(&app).await;
    users
        .update_user(UpdateUserRequest {
            id: ids[0].clone(),
            email: "moved@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let taken = users
        .update_user(UpdateUserRequest {
            id: ids[1].clone(),
            email: "moved@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    users
        .delete_user(DeleteUserRequest { id: ids[2].clone() })
        .await
        .unwrap();
    let freed = users.create_user(create("Again", "u0-2@example.com")).await;
    assert!(
        freed.is_ok(),
        "a deleted user's email is free again: {freed:?}"
    );

    let (stored, index, counts) = contents(&shards).await;
    assert_eq!(stored.len(), 60 + 1 - 1 + 1, "{counts:?}");
    assert!(
        counts.iter().all(|c| *c > 5),
        "spread over every shard: {counts:?}"
    );
    assert_index_exact(&stored, &index);
    assert_eq!(index.get("moved@example.com"), Some(&ids[0]));
    assert!(!stored.contains_key(&ids[2]));

    // Metrics count both kinds of write; /health lists every shard.
    let metrics = app.get_text("/metrics").await;
    let sample = |line: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} in metrics"))
    };
    assert!(sample("switchboard_tx_total{outcome=\"committed\"}") > 10);
    assert!(sample("switchboard_tx_total{outcome=\"one_phase\"}") > 0);
    let health = app.get_json("/health").await;
    let shards_check = health["checks"]["shards:inDoubt"].as_array().unwrap();
    assert_eq!(shards_check.len(), 3, "{health}");
    for shard in shards_check {
        assert_eq!(shard["status"], "pass", "{shard}");
        assert!(shard["componentId"]
            .as_str()
            .unwrap()
            .contains("/sb_shard_"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_that_cannot_prepare_leaves_nothing_anywhere() {
    let Some(db) = TestDb::sharded(3).await else {
        return;
    };
    let shards = shard_urls(&db);
    let app = lifted(db).await;
    // Touching a temporary table makes PREPARE TRANSACTION fail: every email index insert
    // now does, so a user whose row and email live on different shards cannot be created
    // (one on a single shard commits in one phase and is fine).
    for url in &shards {
        crate::helpers::pg_admin(
            url,
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN CREATE TEMP TABLE IF NOT EXISTS poison_t (x int); RETURN NEW; END $$; \
             CREATE TRIGGER poison BEFORE INSERT ON user_emails \
             FOR EACH ROW EXECUTE FUNCTION poison();",
        )
        .await
        .unwrap();
    }
    let mut users = client(&app).await;
    let (mut created, mut refused) = (BTreeSet::new(), 0);
    for i in 0..16 {
        match users
            .create_user(create(&format!("P{i}"), &format!("p{i}@example.com")))
            .await
        {
            Ok(user) => {
                created.insert(user.into_inner().id);
            }
            Err(status) => {
                assert_ne!(status.code(), Code::AlreadyExists, "{status:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "some users span two shards");
    let (stored, index, _) = contents(&shards).await;
    let stored_ids: BTreeSet<String> = stored.keys().cloned().collect();
    assert_eq!(stored_ids, created, "only the committed users exist");
    assert_index_exact(&stored, &index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_resolves_in_doubt_transactions_from_the_decision_log() {
    let Some(db) = TestDb::sharded(3).await else {
        return;
    };
    let shards = shard_urls(&db);
    let primary = pg_url(&db.settings.url);
    let app = lifted(db).await;
    let deployment = rows(&primary, "SELECT id FROM shard_deployment").await[0][0].clone();

    // Three prepared transactions on shard 0, as a crashed server would leave them: one
    // whose decision was logged, one whose was not, and one of another deployment.
    let ours = |n: u32| format!("sb_{deployment}_deadbeef_{n}");
    let foreign = "sb_zzzzzzzz_deadbeef_9_0".to_owned();
    for (gid, email) in [
        (format!("{}_0", ours(1)), "commit-me@example.com"),
        (format!("{}_0", ours(2)), "roll-me-back@example.com"),
        (foreign.clone(), "not-ours@example.com"),
    ] {
        prepare_in_doubt(&shards[0], &gid, email).await;
    }
    log_decision(&primary, &ours(1), "0").await;

    // Past the grace period (2 s), the next pass (every 0.5 s) resolves ours only.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let prepared = rows(
            &shards[0],
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid",
        )
        .await;
        if prepared == [vec![foreign.clone()]] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still in doubt: {prepared:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let emails = rows(&shards[0], "SELECT email FROM user_emails ORDER BY email").await;
    assert_eq!(emails, [vec!["commit-me@example.com".to_owned()]]);
    // The decision is forgotten once nothing refers to it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !rows(&primary, "SELECT gid FROM tx_decisions")
        .await
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the decision row stays"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = app.get_text("/metrics").await;
    for action in ["commit", "rollback"] {
        let line = format!("switchboard_tx_recoveries_total{{action=\"{action}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{line}");
    }
    crate::helpers::pg_admin(&shards[0], &format!("ROLLBACK PREPARED '{foreign}'"))
        .await
        .unwrap();
    drop(app);
}

/// Runs the binary with `args` (blocking, off the test's runtime) and returns its output.
async fn cli(args: Vec<String>) -> crate::process::Finished {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let mut command = crate::process::switchboard(dir.path());
        command.args(&args);
        crate::process::run_within(command, Duration::from_secs(60))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_shards_status_cover_the_primary_and_every_shard() {
    let Some(db) = TestDb::sharded(3).await else {
        return;
    };
    let shards = shard_urls(&db);
    let primary = pg_url(&db.settings.url);
    let database = |action: &[&str]| {
        let mut args: Vec<String> = action.iter().map(|s| (*s).to_owned()).collect();
        args.extend(["--database-url".into(), primary.clone()]);
        args.extend(["--database-shards".into(), shards.join(",")]);
        args
    };
    let run = cli(database(&["migrate", "run"])).await;
    assert!(run.status.success(), "{}", run.stderr);
    let status = cli(database(&["migrate", "status"])).await;
    assert!(status.status.success(), "{}", status.stderr);
    for header in ["primary ", "shard 0 ", "shard 1 ", "shard 2 "] {
        assert!(
            status.stdout.lines().any(|l| l.starts_with(header)),
            "{header}: {}",
            status.stdout
        );
    }
    assert!(!status.stdout.contains("pending"), "{}", status.stdout);

    let app = lifted(db).await;
    let mut users = client(&app).await;
    for i in 0..12 {
        users
            .create_user(create(&format!("S{i}"), &format!("s{i}@example.com")))
            .await
            .unwrap();
    }
    let report = cli(database(&["shards", "status"])).await;
    assert!(report.status.success(), "{}", report.stderr);
    let lines: Vec<&str> = report.stdout.lines().skip(1).collect();
    assert_eq!(lines.len(), 3, "{}", report.stdout);
    let (mut users_total, mut slots_total) = (0, 0);
    for line in lines {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[2], "yes", "{line}");
        assert!(
            !line.contains("secret") && cells[1].contains("/sb_shard_"),
            "{line}"
        );
        slots_total += cells[3].parse::<u32>().unwrap();
        users_total += cells[4].parse::<u32>().unwrap();
        assert_eq!(cells[8], "0", "nothing in doubt: {line}");
    }
    assert_eq!(slots_total, 4096);
    assert_eq!(users_total, 12);
    drop(app);
}

/// The binary serving the sharded databases of `settings`, with extra environment.
fn sharded_server(
    settings: &switchboard::config::DatabaseSettings,
    env: &[(&str, &str)],
) -> crate::process::Server {
    let dir = tempfile::tempdir().unwrap();
    let mut command = crate::process::switchboard(dir.path());
    let primary = pg_url(&settings.url);
    let shards: Vec<String> = settings.shards.iter().map(pg_url).collect();
    command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
    command.args([
        "--database-url",
        &primary,
        "--database-shards",
        &shards.join(","),
    ]);
    command.args(["--db-max-connections", "5", "--log-format", "json"]);
    command.args([
        "--tx-in-doubt-grace",
        "2s",
        "--tx-recovery-interval",
        "500ms",
    ]);
    command.args(["--jwt-secret", crate::helpers::TEST_JWT_SECRET]);
    for (key, value) in env {
        command.env(key, value);
    }
    let server = crate::process::Server::start(command);
    // The directory only holds the working directory; the data is in PostgreSQL.
    std::mem::forget(dir);
    server
}

/// A user client for the server at `addr`.
async fn client_at(addr: &str) -> crate::grpc_users::Client {
    let channel = crate::helpers::grpc_channel(addr).await;
    let token = format!("Bearer {}", crate::ws_client::token("crash-test", None));
    let add: crate::grpc_users::AddToken = Box::new(move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", token.parse().unwrap());
        Ok(request)
    });
    switchboard::grpc::pb::user_service_client::UserServiceClient::with_interceptor(channel, add)
}

/// Creates users one by one until a call hangs (the coordinator paused on a cross-shard
/// one); returns the ids created and the email of the one left hanging.
async fn create_until_paused(addr: &str) -> (BTreeSet<String>, String) {
    let mut users = client_at(addr).await;
    let mut created = BTreeSet::new();
    for i in 0..40 {
        let email = format!("c{i}@example.com");
        let call = users.create_user(create(&format!("C{i}"), &email));
        // A normal create takes milliseconds; a paused one never ends. 15 s leaves a busy
        // machine room without mistaking a slow call for the paused one.
        match tokio::time::timeout(Duration::from_secs(15), call).await {
            Ok(Ok(user)) => {
                created.insert(user.into_inner().id);
            }
            Ok(Err(status)) => panic!("{status:?}"),
            Err(_) => return (created, email),
        }
    }
    panic!("no user spanned two shards in 40 tries");
}

/// `kill -9` of the server while a cross-shard CreateUser is paused at `fault`; after a
/// restart, recovery leaves every shard consistent — committed when the decision was
/// logged, rolled back when not — and nothing prepared behind.
async fn crash_and_recover(fault: &'static str) {
    let Some(db) = TestDb::sharded(3).await else {
        return;
    };
    let shards = shard_urls(&db);
    let settings = db.settings.clone();
    let server = tokio::task::spawn_blocking({
        let settings = settings.clone();
        move || sharded_server(&settings, &[("SWITCHBOARD_FAULT_TX", fault)])
    })
    .await
    .unwrap();
    let (created, paused_email) = create_until_paused(&server.grpc_addr.clone()).await;
    let mut server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.wait_for_line(|line| line.contains("fault injection: transaction paused"));
        server
    })
    .await
    .unwrap();
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();

    // Still in doubt after the crash.
    let mut prepared = Vec::new();
    for url in &shards {
        prepared.extend(
            rows(
                url,
                "SELECT gid, database FROM pg_prepared_xacts WHERE database = current_database()",
            )
            .await,
        );
    }
    assert_eq!(
        prepared.len(),
        2,
        "both parts prepared when the process died: {prepared:?}"
    );

    let restarted = tokio::task::spawn_blocking(move || sharded_server(&settings, &[]))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut left = 0;
        for url in &shards {
            left += rows(
                url,
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
            )
            .await
            .len();
        }
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} still prepared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (stored, index, _) = contents(&shards).await;
    assert_index_exact(&stored, &index);
    let ids: BTreeSet<String> = stored.keys().cloned().collect();
    let paused_stored = index.contains_key(&paused_email);
    match fault {
        "pause-after-prepare" => {
            assert!(!paused_stored, "no decision: rolled back");
            assert_eq!(ids, created);
        }
        _ => {
            assert!(paused_stored, "decision logged: committed");
            assert_eq!(ids.len(), created.len() + 1);
        }
    }
    drop(restarted);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_prepare_and_decision_rolls_back_everywhere() {
    crash_and_recover("pause-after-prepare").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_decision_and_commit_commits_everywhere() {
    crash_and_recover("pause-after-decision").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_history_lives_on_the_rooms_shard() {
    let Some(db) = TestDb::sharded(3).await else {
        return;
    };
    let shards = shard_urls(&db);
    let primary = pg_url(&db.settings.url);
    let mut settings = crate::history::settings_with(&db, |_| {});
    settings.history.flush_interval = Duration::from_millis(20);
    let app = crate::helpers::spawn_app_with(db, settings).await;
    let mut alice = crate::ws_client::WsClient::user(&app, "alice").await;
    let rooms: Vec<String> = (0..8).map(|i| format!("room-{i}")).collect();
    for room in &rooms {
        alice.join(room).await;
        crate::history::post(&mut alice, room, 2).await;
    }
    let map = switchboard::db::shards::ShardMap::new(
        "any".into(),
        (0..3).map(|i| i.to_string()).collect(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut placed = Vec::new();
        for url in &shards {
            placed.push(
                rows(
                    url,
                    "SELECT DISTINCT room_id FROM messages ORDER BY room_id",
                )
                .await,
            );
        }
        let stored: usize = placed.iter().map(Vec::len).sum();
        if stored == rooms.len() {
            for (shard, found) in placed.iter().enumerate() {
                for room in found {
                    assert_eq!(map.shard_of(&room[0]), shard, "{room:?} on shard {shard}");
                }
            }
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stored: {placed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rows(&primary, "SELECT room_id FROM messages")
        .await
        .is_empty());
    // And a member reads it back from there.
    alice
        .send(serde_json::json!({"type": "history", "room_id": "room-3"}))
        .await;
    let history = alice.recv_kind("history").await;
    assert_eq!(history["metadata"]["count"], 2, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_shard_fails_only_what_needs_it_and_its_doubts_resolve_when_it_returns() {
    let Some(clusters) = crate::private_pg::SplitClusters::start().await else {
        return;
    };
    let (primary, shards, lone) = (&clusters.primary, &clusters.shards, &clusters.lone);
    let placeholder = TestDb::sqlite();
    let mut settings = crate::helpers::test_settings(&placeholder);
    clusters.apply(&mut settings);
    settings.rate_limit_per_second = 100_000.0;
    settings.rate_limit_burst = 100_000;
    let app = crate::helpers::spawn_app_with(placeholder, settings).await;
    let map = switchboard::db::shards::ShardMap::new(
        "any".into(),
        (0..3).map(|i| i.to_string()).collect(),
    );
    let mut users = client(&app).await;
    let mut ids = Vec::new();
    for i in 0..9 {
        let user = users
            .create_user(create(&format!("Up{i}"), &format!("up{i}@example.com")))
            .await
            .unwrap()
            .into_inner();
        ids.push(user.id);
    }

    // A transaction in doubt on shard 2, its decision logged, when shard 2 goes down.
    let deployment = rows(primary, "SELECT id FROM shard_deployment").await[0][0].clone();
    let gid = format!("sb_{deployment}_cafebabe_1");
    prepare_in_doubt(&shards[2], &format!("{gid}_2"), "doubt@example.com").await;
    log_decision(primary, &gid, "2").await;
    lone.halt();

    // Writes that need shard 2 fail with UNAVAILABLE; the others go through.
    let (mut ok, mut unavailable) = (0, 0);
    for i in 0..12 {
        match users
            .create_user(create(&format!("Down{i}"), &format!("down{i}@example.com")))
            .await
        {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(status.message().contains("shard 2"), "{status:?}");
                unavailable += 1;
            }
        }
    }
    assert!(
        ok > 0 && unavailable > 0,
        "ok {ok}, unavailable {unavailable}"
    );
    // Reads of users on the shards that are up still work.
    let on = |shard: usize| ids.iter().find(|id| map.shard_of(id) == shard).cloned();
    if let Some(id) = on(0) {
        users
            .get_user(switchboard::grpc::pb::GetUserRequest { id })
            .await
            .unwrap();
    }
    if let Some(id) = on(2) {
        let status = users
            .get_user(switchboard::grpc::pb::GetUserRequest { id })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    // One shard down does not open the database breaker; /health names the shard.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let health = app.get_json("/health").await;
        assert_eq!(
            health["checks"]["circuitBreaker:state"][0]["observedValue"],
            "closed"
        );
        if health["checks"]["shards:inDoubt"][2]["status"] == "fail" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Back up: recovery commits the doubt, and writes work everywhere again.
    lone.resume().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !rows(
        &shards[2],
        "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
    )
    .await
    .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "still in doubt");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let emails = rows(
        &shards[2],
        "SELECT email FROM user_emails WHERE user_id = 'x'",
    )
    .await;
    assert_eq!(emails, [vec!["doubt@example.com".to_owned()]]);
    for i in 0..6 {
        users
            .create_user(create(&format!("Back{i}"), &format!("back{i}@example.com")))
            .await
            .unwrap();
    }
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_across_shards_stay_exact_while_users_come_and_go() {
    let Some(db) = TestDb::sharded(3).await else {
        return;
    };
    let app = lifted(db).await;
    let mut users = client(&app).await;
    let mut stable = BTreeSet::new();
    let mut doomed = Vec::new();
    for i in 0..60 {
        let user = users
            .create_user(create(
                &format!("Stay {i}"),
                &format!("stay{i}@example.com"),
            ))
            .await
            .unwrap()
            .into_inner();
        if i % 3 == 0 {
            doomed.push(user.id);
        } else {
            stable.insert(user.id);
        }
    }
    // While the pages are read, others are created and a third of the first ones deleted.
    let mut churn = client(&app).await;
    let churning = tokio::spawn(async move {
        for (i, id) in doomed.into_iter().enumerate() {
            churn
                .create_user(create(&format!("New {i}"), &format!("new{i}@example.com")))
                .await
                .unwrap();
            churn.delete_user(DeleteUserRequest { id }).await.unwrap();
        }
    });
    let (seen, _) = crate::grpc_users::list_all(&mut users, "", 4).await;
    churning.await.unwrap();

    let ids: Vec<&String> = seen.iter().map(|u| &u.id).collect();
    let unique: BTreeSet<&String> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no user twice");
    for id in &stable {
        assert!(
            unique.contains(id),
            "{id} was there throughout and was missed"
        );
    }
    let order: Vec<(i64, i32, &String)> = seen
        .iter()
        .map(|u| {
            let at = u.created_at.as_ref().expect("a creation time");
            (at.seconds, at.nanos, &u.id)
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in creation order");
}
