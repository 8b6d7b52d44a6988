//! What the cluster-wide services cost (release build, loopback, Redis on 127.0.0.1:6379
//! or `REDIS_URL`; the client shares the machine's cores):
//!
//! - rate-limit decisions: the node-local token buckets against the Redis GCRA script —
//!   one after another (latency) and 64 in flight (decisions/s);
//! - the added latency per HTTP request: `GET /stats` on a single server and on a
//!   cluster node (one Redis round trip per decision);
//! - `GetUser` with and without the user cache, on SQLite and (when reachable)
//!   PostgreSQL: one caller, and 50 concurrent callers over 1,000 users.
//!
//! `cargo bench --bench cluster`; the figures are in the README.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::{stream::FuturesUnordered, StreamExt};
use support::{start_server_with, BenchServer, Client};
use switchboard::{
    actors::rate_limit::{ClusterLimits, Quota, RateLimiters},
    config::DatabaseUrl,
    grpc::pb::{CreateUserRequest, GetUserRequest},
};

const QUOTA: Quota = Quota {
    per_second: 1e9,
    burst: 1_000_000_000,
};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, samples: &mut [Duration]) {
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{name}: mean {mean:?}, p50 {:?}, p99 {:?} ({} samples)",
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        samples.len()
    );
}

async fn decisions(name: &str, limiters: &RateLimiters) {
    let mut samples = Vec::with_capacity(20_000);
    for i in 0..20_000 {
        let started = Instant::now();
        limiters.check(format!("sub:k{}", i % 1000)).await.unwrap();
        samples.push(started.elapsed());
    }
    report(&format!("rate_limit/{name}/one_at_a_time"), &mut samples);
    let total = 100_000;
    let started = Instant::now();
    let mut in_flight: FuturesUnordered<_> = FuturesUnordered::new();
    for i in 0..total {
        if in_flight.len() == 64 {
            let decision: Result<_, actix::MailboxError> = in_flight.next().await.unwrap();
            decision.unwrap();
        }
        in_flight.push(limiters.check(format!("sub:k{}", i % 1000)));
    }
    while let Some(decision) = in_flight.next().await {
        decision.unwrap();
    }
    println!(
        "rate_limit/{name}/64_in_flight: {:.0} decisions/s",
        total as f64 / started.elapsed().as_secs_f64()
    );
}

fn rate_limit_decisions(redis: &str) {
    actix_rt::System::new().block_on(async {
        let (local, arbiters) = RateLimiters::start(QUOTA, 4, 100_000);
        decisions("local", &local).await;
        let connection = redis::Client::open(redis)
            .unwrap()
            .get_connection_manager()
            .await;
        match connection {
            Ok(connection) => {
                let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
                let (limiters, more) = RateLimiters::start(QUOTA, 4, 100_000);
                let cluster = limiters.cluster_wide(ClusterLimits::new(connection, &prefix, QUOTA));
                decisions("redis", &cluster).await;
                assert_eq!(cluster.stats().fallback_decisions, 0, "Redis answered");
                more.iter().for_each(|a| {
                    a.stop();
                });
            }
            Err(error) => println!("rate_limit/redis: skipped (no Redis at {redis}: {error})"),
        }
        arbiters.iter().for_each(|a| {
            a.stop();
        });
    });
}

async fn http_latency(name: &str, server: &BenchServer) {
    let http = reqwest::Client::new();
    let url = format!("http://{}/stats", server.http);
    let token = switchboard::auth::JwtAuth::new(
        &switchboard::config::JwtSecret::parse(support::SECRET).unwrap(),
    )
    .issue("bench", Duration::from_secs(3600), None)
    .unwrap();
    for _ in 0..500 {
        http.get(&url).bearer_auth(&token).send().await.unwrap();
    }
    let mut samples = Vec::with_capacity(5_000);
    for _ in 0..5_000 {
        let started = Instant::now();
        let response = http.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        samples.push(started.elapsed());
    }
    report(&format!("http_stats/{name}"), &mut samples);
}

async fn seed(client: &mut Client) -> Vec<String> {
    let requests = futures_util::stream::iter((0..1000).map(|i| CreateUserRequest {
        name: format!("user {i}"),
        email: format!("user{i}@example.com"),
        ..Default::default()
    }));
    let created = client
        .bulk_create_users(requests)
        .await
        .unwrap()
        .into_inner();
    created.users.into_iter().map(|u| u.id).collect()
}

async fn get_user(name: &str, server: &BenchServer) {
    let mut client = support::grpc_client(server.grpc).await;
    let ids = seed(&mut client).await;
    let mut samples = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let id = ids[(i * 7919) % ids.len()].clone();
        let started = Instant::now();
        client.get_user(GetUserRequest { id }).await.unwrap();
        samples.push(started.elapsed());
    }
    report(&format!("get_user/{name}/one_caller"), &mut samples);
    let per_caller = 2_000;
    let mut callers = Vec::new();
    for _ in 0..50 {
        callers.push(support::grpc_client(server.grpc).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = callers
        .into_iter()
        .enumerate()
        .map(|(n, mut client)| {
            let ids = ids.clone();
            tokio::spawn(async move {
                for i in 0..per_caller {
                    let id = ids[(n * 131 + i * 7919) % ids.len()].clone();
                    client.get_user(GetUserRequest { id }).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "get_user/{name}/50_callers: {:.0} calls/s",
        (50 * per_caller) as f64 / started.elapsed().as_secs_f64()
    );
}

fn main() {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    rate_limit_decisions(&redis);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let single = start_server_with(DatabaseUrl::Sqlite(dir.path().join("single.db")), |_| {});
    runtime.block_on(http_latency("single_node", &single));
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let clustered = start_server_with(DatabaseUrl::Sqlite(dir.path().join("node.db")), |s| {
        s.cluster.redis_url = Some(redis.clone());
        s.cluster.prefix = prefix.clone();
    });
    runtime.block_on(http_latency("cluster_node", &clustered));

    for (cache, size) in [("cache", 10_000), ("no_cache", 0)] {
        let path = dir.path().join(format!("{cache}.db"));
        let server = start_server_with(DatabaseUrl::Sqlite(path), |s| {
            s.database.user_cache_size = size;
        });
        runtime.block_on(get_user(&format!("sqlite/{cache}"), &server));
    }
    let mut databases = Vec::new();
    for (cache, size) in [("cache", 10_000), ("no_cache", 0)] {
        let Some((url, name)) = runtime.block_on(support::postgres_database()) else {
            println!("get_user/postgres: skipped (no PostgreSQL)");
            break;
        };
        databases.push(name);
        let server = start_server_with(url.parse().unwrap(), |s| {
            s.database.user_cache_size = size;
        });
        runtime.block_on(get_user(&format!("postgres/{cache}"), &server));
    }
    runtime.block_on(support::drop_databases(&databases));
}
