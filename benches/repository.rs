//! Repository benchmarks on embedded SQLite (a temporary file, WAL mode, as in production).
//!
//! `cargo bench --bench repository` runs every scenario; the figures are in the README.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use switchboard::{
    config::{DatabaseSettings, DatabaseUrl},
    db::{migrate, Database},
    domain::{Email, Metadata, NewUser, SearchFilter, UserId, UserName},
};

/// Users stored before the read benchmarks run.
const SEEDED: usize = 10_000;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn new_user() -> NewUser {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    NewUser {
        name: UserName::parse(&format!("Bench User {n}")).unwrap(),
        email: Email::parse(&format!("bench{n}@example.com")).unwrap(),
        age: None,
        metadata: Metadata::default(),
    }
}

fn open(runtime: &tokio::runtime::Runtime, dir: &tempfile::TempDir) -> Database {
    let settings = DatabaseSettings {
        url: DatabaseUrl::Sqlite(dir.path().join("bench.db")),
        ..Default::default()
    };
    runtime.block_on(async {
        migrate::run_pending(&settings).await.unwrap();
        Database::connect(&settings).await.unwrap()
    })
}

fn repository(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = open(&runtime, &dir);
    let seeded: Vec<UserId> = runtime.block_on(async {
        let users = db
            .bulk_create_users((0..SEEDED).map(|_| new_user()).collect())
            .await
            .unwrap();
        users.into_iter().map(|u| u.id).collect()
    });

    let mut group = c.benchmark_group("sqlite");
    group.measurement_time(Duration::from_secs(5));

    group.throughput(Throughput::Elements(1));
    group.bench_function("insert_one", |b| {
        b.to_async(&runtime)
            .iter(|| async { db.create_user(new_user()).await.unwrap() });
    });

    group.bench_function("get_by_id", |b| {
        let mut i = 0;
        b.to_async(&runtime).iter(|| {
            i = (i + 7919) % seeded.len();
            let id = seeded[i];
            let db = &db;
            async move { db.get_user(id).await.unwrap() }
        });
    });

    group.throughput(Throughput::Elements(50));
    group.bench_function("list_page_of_50", |b| {
        b.to_async(&runtime).iter(|| async {
            db.list_users(&SearchFilter::default(), 50, None)
                .await
                .unwrap()
        });
    });
    group.bench_function("list_page_of_50_filtered", |b| {
        b.to_async(&runtime).iter(|| async {
            db.list_users(&SearchFilter::parse("user 12").unwrap(), 50, None)
                .await
                .unwrap()
        });
    });

    group.sample_size(10);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("bulk_insert_10k", |b| {
        b.to_async(&runtime).iter_batched(
            || (0..10_000).map(|_| new_user()).collect::<Vec<_>>(),
            |batch| async { db.bulk_create_users(batch).await.unwrap() },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, repository);
criterion_main!(benches);
