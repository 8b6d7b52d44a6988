//! GraphQL throughput against a real server (SQLite, warm, loopback):
//! `users(limit: 50) { posts { title } }` from 8 concurrent HTTP clients, and the SQL
//! statements each request costs. `cargo bench --bench graphql`; figures in the README.

#[path = "support/mod.rs"]
mod support;

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchboard::domain::{Email, NewPost, NewUser, PostContent, PostTitle, Tags, UserName};

/// Concurrent HTTP clients.
const CONCURRENCY: usize = 8;
const QUERY: &str = "{ users(limit: 50) { posts { title } } }";

fn graphql(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let server = support::start_server(&dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let users: Vec<NewUser> = (0..200)
            .map(|i| NewUser {
                name: UserName::parse(&format!("User {i}")).unwrap(),
                email: Email::parse(&format!("user{i}@example.com")).unwrap(),
                age: None,
                metadata: Default::default(),
            })
            .collect();
        for user in server.database.bulk_create_users(users).await.unwrap() {
            for n in 0..3 {
                server
                    .database
                    .create_post(NewPost {
                        author_id: user.id,
                        title: PostTitle::parse(&format!("Post {n}")).unwrap(),
                        content: PostContent::parse("text").unwrap(),
                        tags: Tags::parse(Vec::new()).unwrap(),
                        published: true,
                    })
                    .await
                    .unwrap();
            }
        }
    });
    let url = format!("http://{}/graphql", server.http);
    let http = reqwest::Client::new();
    let body = serde_json::json!({ "query": QUERY });

    let before = server.database.stats().total_queries;
    runtime.block_on(async {
        for _ in 0..100 {
            let response = http.post(&url).json(&body).send().await.unwrap();
            assert!(response.status().is_success());
        }
    });
    let per_request = (server.database.stats().total_queries - before) as f64 / 100.0;
    println!("graphql/users_50_posts: {per_request} SQL statements per request");

    let mut group = c.benchmark_group("graphql");
    group.throughput(Throughput::Elements(1));
    group.bench_function("users_50_posts_8_concurrent", |b| {
        b.iter_custom(|iterations| {
            let per_client = (iterations as usize).div_ceil(CONCURRENCY);
            runtime.block_on(async {
                let started = Instant::now();
                let tasks: Vec<_> = (0..CONCURRENCY)
                    .map(|_| {
                        let (http, url, body) = (http.clone(), url.clone(), body.clone());
                        tokio::spawn(async move {
                            for _ in 0..per_client {
                                let response = http.post(&url).json(&body).send().await.unwrap();
                                response.bytes().await.unwrap();
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                started
                    .elapsed()
                    .mul_f64(iterations as f64 / (per_client * CONCURRENCY) as f64)
            })
        });
    });
    group.finish();
}

criterion_group!(benches, graphql);
criterion_main!(benches);
