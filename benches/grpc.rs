//! gRPC throughput against a real server (SQLite, release build, loopback):
//! unary `GetUser` with 50 concurrent callers, `StreamUsers` over a 100,000-user snapshot,
//! and one `BulkCreateUsers` call of 100,000 users.
//! `cargo bench --bench grpc`; the figures are in the README.

#[path = "support/mod.rs"]
mod support;

use std::{net::SocketAddr, time::Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use support::{start_server, Client};
use switchboard::grpc::pb::{CreateUserRequest, GetUserRequest, StreamUsersRequest};

/// Concurrent unary callers.
const CONCURRENCY: usize = 50;
/// Users in the snapshot and the bulk create.
const USERS: usize = 100_000;

async fn client(addr: SocketAddr) -> Client {
    support::grpc_client(addr).await
}

fn requests(prefix: &str, count: usize) -> impl futures_util::Stream<Item = CreateUserRequest> {
    let prefix = prefix.to_owned();
    futures_util::stream::iter((0..count).map(move |i| CreateUserRequest {
        name: format!("{prefix} {i}"),
        email: format!("{prefix}{i}@example.com"),
        ..Default::default()
    }))
}

fn grpc(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_server(&dir).grpc;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("grpc");

    // One call storing 100,000 users (also the snapshot for StreamUsers below).
    let started = Instant::now();
    let created = runtime.block_on(async {
        let mut users = client(addr).await;
        users
            .bulk_create_users(requests("user", USERS))
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(created.created_count as usize, USERS);
    let elapsed = started.elapsed();
    println!(
        "grpc/bulk_create_100k: {elapsed:?} ({:.0} users/s)",
        USERS as f64 / elapsed.as_secs_f64()
    );
    let ids: Vec<String> = created.users.into_iter().map(|u| u.id).take(1000).collect();

    group.throughput(Throughput::Elements(1));
    group.bench_function("get_user_50_concurrent", |b| {
        let clients: Vec<Client> = runtime.block_on(async {
            let mut clients = Vec::new();
            for _ in 0..CONCURRENCY {
                clients.push(client(addr).await);
            }
            clients
        });
        b.iter_custom(|iterations| {
            let per_caller = (iterations as usize).div_ceil(CONCURRENCY);
            runtime.block_on(async {
                let started = Instant::now();
                let tasks: Vec<_> = clients
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(n, mut users)| {
                        let ids = ids.clone();
                        tokio::spawn(async move {
                            for i in 0..per_caller {
                                let id = ids[(n * per_caller + i) % ids.len()].clone();
                                users.get_user(GetUserRequest { id }).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                // Normalise to the requested count (callers did a whole share each).
                started
                    .elapsed()
                    .mul_f64(iterations as f64 / (per_caller * CONCURRENCY) as f64)
            })
        });
    });

    group.sample_size(10);
    group.throughput(Throughput::Elements(USERS as u64));
    group.bench_function("stream_users_snapshot_100k", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut users = client(addr).await;
                let started = Instant::now();
                for _ in 0..iterations {
                    let mut stream = users
                        .stream_users(StreamUsersRequest::default())
                        .await
                        .unwrap()
                        .into_inner();
                    for _ in 0..USERS {
                        stream.message().await.unwrap().expect("a user");
                    }
                }
                started.elapsed()
            })
        });
    });
    group.finish();
}

criterion_group!(benches, grpc);
criterion_main!(benches);
