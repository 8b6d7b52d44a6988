//! Which pool SQLite should use: the data layer's bb8 pool of diesel-async
//! `SyncConnectionWrapper`s (each call one hop to tokio's blocking pool) against an r2d2
//! pool of plain `SqliteConnection`s driven from `spawn_blocking` (the design names r2d2).
//!
//! `cargo bench --bench pools`: BulkCreate of 100,000 users in one transaction, and a
//! users page with its total count (two statements), both ways. The figures are in the
//! README.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use chrono::Utc;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use diesel::{
    connection::SimpleConnection,
    prelude::*,
    r2d2::{ConnectionManager, CustomizeConnection, Pool},
};
use switchboard::{
    config::{DatabaseSettings, DatabaseUrl},
    db::{migrate, schema::users, Database},
    domain::{Email, Metadata, NewUser, SearchFilter, User, UserId, UserName},
};

const BULK: usize = 100_000;
static NEXT: AtomicU64 = AtomicU64::new(0);

fn new_user() -> NewUser {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    NewUser {
        name: UserName::parse(&format!("Pool User {n}")).unwrap(),
        email: Email::parse(&format!("pool{n}@example.com")).unwrap(),
        age: None,
        metadata: Metadata::default(),
    }
}

/// The same PRAGMAs as the data layer's connections.
#[derive(Debug)]
struct Pragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(
            "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

type Row = (
    String,
    String,
    String,
    Option<i32>,
    String,
    chrono::NaiveDateTime,
    chrono::NaiveDateTime,
);

/// The domain work `Database::bulk_create_users` does around its INSERTs — the users it
/// returns, and their rows — so both variants differ only in how they reach SQLite.
fn users_and_rows(batch: Vec<NewUser>) -> (Vec<User>, Vec<Row>) {
    let now = Utc::now();
    let users: Vec<User> = batch
        .into_iter()
        .map(|new| User {
            id: UserId::generate(),
            name: new.name,
            email: new.email,
            age: new.age,
            metadata: new.metadata,
            created_at: now,
            updated_at: now,
        })
        .collect();
    let rows = users
        .iter()
        .map(|user| {
            (
                user.id.to_string(),
                user.name.as_str().to_owned(),
                user.email.as_str().to_owned(),
                user.age.map(|a| a.get()),
                serde_json::to_string(&user.metadata).unwrap(),
                user.created_at.naive_utc(),
                user.updated_at.naive_utc(),
            )
        })
        .collect();
    (users, rows)
}

/// The data layer's duplicate check and domain work, then the rows to insert.
fn prepare_batch(batch: Vec<NewUser>) -> (Vec<User>, Vec<Row>) {
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    assert!(batch
        .iter()
        .all(|u| seen.insert(u.email.as_str().to_owned())));
    users_and_rows(batch)
}

/// Inserts `rows` in one IMMEDIATE transaction, 500 rows per statement (as the data layer).
fn insert_all(c: &mut SqliteConnection, rows: &[Row]) -> Result<(), diesel::result::Error> {
    c.immediate_transaction(|c| {
        for chunk in rows.chunks(500) {
            let values: Vec<_> = chunk
                .iter()
                .map(|(id, name, email, age, metadata, created, updated)| {
                    (
                        users::id.eq(id),
                        users::name.eq(name),
                        users::email.eq(email),
                        users::age.eq(age),
                        users::metadata.eq(metadata),
                        users::created_at.eq(created),
                        users::updated_at.eq(updated),
                    )
                })
                .collect();
            diesel::insert_into(users::table)
                .values(values)
                .execute(c)?;
        }
        Ok(())
    })
}

/// BulkCreate over r2d2: the whole transaction in one blocking task.
async fn r2d2_bulk(
    pool: &Pool<ConnectionManager<SqliteConnection>>,
    batch: Vec<NewUser>,
) -> Vec<User> {
    let (users, rows) = prepare_batch(batch);
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || insert_all(&mut pool.get().unwrap(), &rows))
        .await
        .unwrap()
        .unwrap();
    users
}

/// BulkCreate over a bare diesel-async `SyncConnectionWrapper` (no pool, no data layer):
/// tells the wrapper's cost from the data layer's.
async fn wrapper_bulk(
    conn: &tokio::sync::Mutex<
        diesel_async::sync_connection_wrapper::SyncConnectionWrapper<SqliteConnection>,
    >,
    batch: Vec<NewUser>,
) -> Vec<User> {
    let (users, rows) = prepare_batch(batch);
    let mut conn = conn.lock().await;
    conn.spawn_blocking(move |c| insert_all(c, &rows))
        .await
        .unwrap();
    users
}

/// A page of 50 and the total count over r2d2: both statements in one blocking task.
async fn r2d2_page(pool: &Pool<ConnectionManager<SqliteConnection>>) -> (usize, i64) {
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = pool.get().unwrap();
        let page: Vec<String> = users::table
            .select(users::id)
            .order((users::created_at.asc(), users::id.asc()))
            .limit(51)
            .load(&mut conn)
            .unwrap();
        let total: i64 = users::table.count().get_result(&mut conn).unwrap();
        (page.len(), total)
    })
    .await
    .unwrap()
}

fn pools(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (bb8_dir, r2d2_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let settings = |dir: &tempfile::TempDir| DatabaseSettings {
        url: DatabaseUrl::Sqlite(dir.path().join("pool.db")),
        ..Default::default()
    };
    let (bb8_settings, r2d2_settings) = (settings(&bb8_dir), settings(&r2d2_dir));
    let db = runtime.block_on(async {
        migrate::run_pending(&bb8_settings).await.unwrap();
        migrate::run_pending(&r2d2_settings).await.unwrap();
        Database::connect(&bb8_settings).await.unwrap()
    });
    let path = r2d2_dir.path().join("pool.db");
    let pool = Pool::builder()
        .max_size(10)
        .connection_customizer(Box::new(Pragmas))
        .build(ConnectionManager::<SqliteConnection>::new(
            path.to_string_lossy(),
        ))
        .unwrap();

    let mut group = c.benchmark_group("sqlite_pool");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(BULK as u64));
    group.bench_function("bulk_create_100k/bb8_sync_wrapper", |b| {
        b.to_async(&runtime).iter_batched(
            || (0..BULK).map(|_| new_user()).collect::<Vec<_>>(),
            |batch| async { db.bulk_create_users(batch).await.unwrap() },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("bulk_create_100k/r2d2_spawn_blocking", |b| {
        b.to_async(&runtime).iter_batched(
            || (0..BULK).map(|_| new_user()).collect::<Vec<_>>(),
            |batch| r2d2_bulk(&pool, batch),
            BatchSize::PerIteration,
        )
    });
    let wrapper_dir = tempfile::tempdir().unwrap();
    let wrapper_settings = settings(&wrapper_dir);
    runtime
        .block_on(migrate::run_pending(&wrapper_settings))
        .unwrap();
    let mut bare =
        SqliteConnection::establish(&wrapper_dir.path().join("pool.db").to_string_lossy()).unwrap();
    Pragmas.on_acquire(&mut bare).unwrap();
    let wrapper = tokio::sync::Mutex::new(
        diesel_async::sync_connection_wrapper::SyncConnectionWrapper::new(bare),
    );
    group.bench_function("bulk_create_100k/bare_sync_wrapper", |b| {
        b.to_async(&runtime).iter_batched(
            || (0..BULK).map(|_| new_user()).collect::<Vec<_>>(),
            |batch| wrapper_bulk(&wrapper, batch),
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("sqlite_pool");
    group.measurement_time(Duration::from_secs(5));
    let filter = SearchFilter::parse("").unwrap();
    group.bench_function("page_and_count/bb8_sync_wrapper", |b| {
        b.to_async(&runtime)
            .iter(|| async { db.list_users(&filter, 50, None).await.unwrap() })
    });
    group.bench_function("page_and_count/r2d2_spawn_blocking", |b| {
        b.to_async(&runtime).iter(|| r2d2_page(&pool))
    });
    group.bench_function("page_and_count/bare_sync_wrapper_one_hop", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut conn = wrapper.lock().await;
            conn.spawn_blocking(|c| {
                let page: Vec<String> = users::table
                    .select(users::id)
                    .order((users::created_at.asc(), users::id.asc()))
                    .limit(51)
                    .load(c)?;
                let total: i64 = users::table.count().get_result(c)?;
                Ok::<_, diesel::result::Error>((page.len(), total))
            })
            .await
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, pools);
criterion_main!(benches);
