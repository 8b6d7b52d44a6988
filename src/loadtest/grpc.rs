//! `switchboard bench grpc`: `GetUser`, `CreateUser` or `ListUsers` unary calls, or
//! `StreamUsers` snapshots, against a UserService, with the same summary, JSON line and
//! HTML report as `bench ws`.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::Map;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, Endpoint},
    Request, Status,
};

use super::report::{latency_histogram, merge, Percentiles, Report, Sampler, Timeline};
use crate::grpc::pb::{
    user_service_client::UserServiceClient, CreateUserRequest, GetUserRequest, ListUsersRequest,
    StreamUsersRequest,
};

/// Which call to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GrpcCall {
    /// Unary `GetUser` of random seeded users.
    GetUser,
    /// `StreamUsers`: each call reads the whole snapshot, then the next starts.
    StreamUsers,
    /// Unary `CreateUser` of new users (unique emails); with shards most are two-phase.
    CreateUser,
    /// `ListUsers`: the first page of `--page-size` users (a fan-out across shards).
    ListUsers,
    /// `ChatService/Subscribe`: `--concurrency` streams on one room fed by one publisher
    /// at `--rate`; delivery latency and loss (the token needs role `service`).
    Subscribe,
}

/// Options of `switchboard bench grpc`.
#[derive(Debug, Clone, clap::Args)]
pub struct GrpcBenchArgs {
    /// The server's gRPC address, e.g. `http://127.0.0.1:50051`.
    #[arg(long)]
    pub addr: String,
    /// The call to measure.
    #[arg(long, value_enum, default_value = "get-user")]
    pub call: GrpcCall,
    /// Calls in flight at once (1–1000).
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// How long to call (at most 1h).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Users created first with `BulkCreateUsers` (at most 1000000).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Users per `ListUsers` page (list-users).
    #[arg(long, default_value_t = 50)]
    pub page_size: i32,
    /// Messages per second the publisher sends (subscribe).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// A JWT for the `authorization` header (the UserService requires one).
    #[arg(long)]
    pub token: String,
    /// Write a self-contained HTML report here.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
}

type Client = UserServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds the `authorization` header to every call.
#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Runs the benchmark and prints its summary and JSON line.
pub fn run(args: GrpcBenchArgs) -> anyhow::Result<()> {
    if !(1..=1000).contains(&args.concurrency) {
        bail!("--concurrency must be from 1 to 1000");
    }
    if args.users > 1_000_000 || args.duration > Duration::from_secs(3600) {
        bail!("--users is at most 1000000 and --duration at most 1h");
    }
    if args.call == GrpcCall::GetUser && args.users == 0 {
        bail!("get-user needs users to fetch: --users must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.call == GrpcCall::Subscribe {
        if !(args.rate > 0.0 && args.rate <= 100_000.0) {
            bail!("--rate must be above 0 and at most 100000 messages per second");
        }
        return runtime.block_on(super::grpc_subscribe::bench(args));
    }
    runtime.block_on(bench(args))
}

async fn client(args: &GrpcBenchArgs) -> anyhow::Result<Client> {
    let channel = Endpoint::from_shared(args.addr.clone())
        .with_context(|| format!("`{}` is not a valid address", args.addr))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.addr))?;
    let header: MetadataValue<Ascii> = format!("Bearer {}", args.token)
        .parse()
        .context("the token is not a valid header value")?;
    Ok(UserServiceClient::with_interceptor(channel, Bearer(header))
        .max_decoding_message_size(64 * 1024 * 1024))
}

/// Creates `count` users in batches; returns their ids.
async fn seed(client: &mut Client, count: usize) -> anyhow::Result<Vec<String>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut ids = Vec::with_capacity(count);
    for start in (0..count).step_by(10_000) {
        let end = (start + 10_000).min(count);
        let requests: Vec<CreateUserRequest> = (start..end)
            .map(|i| CreateUserRequest {
                name: format!("Bench User {i}"),
                email: format!("bench-{run}-{i}@example.com"),
                age: Some(30),
                metadata: Default::default(),
            })
            .collect();
        let response = client
            .bulk_create_users(futures_util::stream::iter(requests))
            .await
            .context("seeding users with BulkCreateUsers failed")?
            .into_inner();
        ids.extend(response.users.into_iter().map(|u| u.id));
    }
    Ok(ids)
}

struct Worker {
    calls: u64,
    errors: u64,
    /// Failed calls by status code name.
    failed: BTreeMap<&'static str, u64>,
    items: u64,
    first_error: Option<String>,
    latency: Histogram<u32>,
}

async fn bench(args: GrpcBenchArgs) -> anyhow::Result<()> {
    let mut seeder = client(&args).await?;
    let ids = Arc::new(seed(&mut seeder, args.users).await?);
    let snapshot = seeder
        .list_users(ListUsersRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .context("ListUsers failed")?
        .into_inner()
        .total_count
        .max(0) as u64;
    let calls_done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + args.duration;
    // Distinguishes this run's emails from earlier runs' against the same database.
    let started_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        // Channels multiplex; a few of them spread the load over HTTP/2 connections.
        let mut client = if w % 8 == 0 {
            client(&args).await?
        } else {
            seeder.clone()
        };
        let (ids, done, call) = (ids.clone(), calls_done.clone(), args.call);
        let (page_size, run) = (args.page_size, started_at_ms);
        workers.push(tokio::spawn(async move {
            let mut worker = Worker {
                calls: 0,
                errors: 0,
                failed: BTreeMap::new(),
                items: 0,
                first_error: None,
                latency: latency_histogram(),
            };
            let mut next = w;
            while Instant::now() < deadline {
                let began = Instant::now();
                let result = match call {
                    GrpcCall::GetUser => {
                        next = (next + 7919) % ids.len();
                        let id = ids[next].clone();
                        client.get_user(GetUserRequest { id }).await.map(|_| 1)
                    }
                    GrpcCall::StreamUsers => read_snapshot(&mut client, snapshot).await,
                    GrpcCall::CreateUser => {
                        next += 1;
                        let email = format!("bench-{run}-{w}-{next}@example.com");
                        client
                            .create_user(CreateUserRequest {
                                name: format!("Bench {w} {next}"),
                                email,
                                ..Default::default()
                            })
                            .await
                            .map(|_| 1)
                    }
                    // Measured by `grpc_subscribe`, never here.
                    GrpcCall::Subscribe => Ok(0),
                    GrpcCall::ListUsers => client
                        .list_users(ListUsersRequest {
                            page_size,
                            ..Default::default()
                        })
                        .await
                        .map(|page| page.into_inner().users.len() as u64),
                };
                match result {
                    Ok(items) => {
                        worker.items += items;
                        let us = began.elapsed().as_micros() as u64;
                        let _ = worker.latency.record(us.max(1));
                    }
                    Err(status) => {
                        worker.errors += 1;
                        *worker
                            .failed
                            .entry(crate::grpc::code_name(status.code()))
                            .or_default() += 1;
                        worker.first_error.get_or_insert_with(|| status.to_string());
                    }
                }
                worker.calls += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            worker
        }));
    }
    let timeline = sample(calls_done.clone(), deadline).await;
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let (mut calls, mut errors, mut items, mut first_error) = (0, 0, 0, None);
    let mut failed: BTreeMap<&str, u64> = BTreeMap::new();
    let mut latency = latency_histogram();
    for worker in workers {
        let worker = worker.await?;
        calls += worker.calls;
        errors += worker.errors;
        for (code, n) in worker.failed {
            *failed.entry(code).or_default() += n;
        }
        items += worker.items;
        first_error = first_error.or(worker.first_error);
        merge(&mut latency, &worker.latency);
    }
    let percentiles = Percentiles::of(&latency);
    let call_name = match args.call {
        GrpcCall::GetUser => "GetUser",
        GrpcCall::StreamUsers => "StreamUsers",
        GrpcCall::CreateUser => "CreateUser",
        GrpcCall::ListUsers => "ListUsers",
        GrpcCall::Subscribe => "Subscribe",
    };
    let ok = calls - errors;
    let per_second = (calls as f64 / elapsed).round();
    let ok_per_second = (ok as f64 / elapsed).round();
    let failed_summary = failed
        .iter()
        .map(|(code, n)| format!("{code}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let items_per_second = (items as f64 / elapsed).round();
    let mut json = Map::new();
    json.insert("call".into(), call_name.into());
    json.insert("concurrency".into(), (args.concurrency as u64).into());
    json.insert("duration_s".into(), args.duration.as_secs_f64().into());
    json.insert("calls".into(), calls.into());
    json.insert("ok".into(), ok.into());
    json.insert("errors".into(), errors.into());
    json.insert(
        "errors_by_code".into(),
        failed
            .iter()
            .map(|(code, n)| ((*code).to_owned(), (*n).into()))
            .collect::<Map<_, _>>()
            .into(),
    );
    json.insert("ok_per_sec".into(), ok_per_second.into());
    json.insert("calls_per_sec".into(), per_second.into());
    json.insert("users_received".into(), items.into());
    json.insert("users_per_sec".into(), items_per_second.into());
    json.insert("snapshot_users".into(), snapshot.into());
    percentiles.insert_into(&mut json);
    let mut rows = vec![
        (
            "call".to_owned(),
            format!("{call_name}, {} in flight", args.concurrency),
        ),
        (
            "successful calls".into(),
            format!("{ok} of {calls} in {elapsed:.1} s: {ok_per_second}/s"),
        ),
        (
            "users received".into(),
            format!("{items} ({items_per_second}/s)"),
        ),
        (
            "latency (ms)".into(),
            format!(
                "p50 {}  p99 {}  p99.9 {}  max {}",
                percentiles.p50_ms, percentiles.p99_ms, percentiles.p999_ms, percentiles.max_ms
            ),
        ),
    ];
    if errors > 0 {
        // First after the call itself, so nobody reads a rate without seeing the failures.
        rows.insert(
            1,
            (
                "FAILED calls".into(),
                format!("{errors} of {calls} ({failed_summary})"),
            ),
        );
    }
    if let Some(error) = first_error {
        rows.push(("first error".into(), error));
    }
    let report = Report {
        title: format!("switchboard bench grpc — {}", args.addr),
        rows,
        json,
        latency: &latency,
        timeline: &timeline,
        unit: "calls",
    };
    report.finish(args.report.as_deref())?;
    if errors * 2 > calls {
        bail!(
            "most calls failed: {errors} of {calls} ({failed_summary}); see the first error above"
        );
    }
    Ok(())
}

/// Opens `StreamUsers` and reads `snapshot` users (the live tail never ends on its own).
async fn read_snapshot(client: &mut Client, snapshot: u64) -> Result<u64, Status> {
    let mut stream = client
        .stream_users(StreamUsersRequest::default())
        .await?
        .into_inner();
    let mut read = 0;
    while read < snapshot {
        match stream.next().await {
            Some(Ok(_)) => read += 1,
            Some(Err(status)) => return Err(status),
            None => break,
        }
    }
    Ok(read)
}

/// Calls completed per interval until `deadline`, with a progress bar.
async fn sample(done: Arc<AtomicU64>, deadline: Instant) -> Timeline {
    let mut sampler = Sampler::new(deadline.saturating_duration_since(Instant::now()), "calls");
    while Instant::now() < deadline {
        sampler.tick().await;
        sampler.record(done.load(Ordering::Relaxed));
    }
    sampler.finish()
}
