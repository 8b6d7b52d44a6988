//! `switchboard bench ws`: fanout load over the seed-compatible chat protocol.
//!
//! Subscribers join rooms round-robin; publishers (extra connections, one room each,
//! round-robin) post at a fixed total rate. Each payload carries the publisher, a
//! sequence number and the send time, so every subscriber measures end-to-end latency
//! without parsing JSON. Only `join` and room messages are used, so any server speaking
//! the seed's protocol can be measured (joins it does not confirm are detected).

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use futures_util::{stream, FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::{net::TcpStream, sync::watch};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

use super::report::{latency_histogram, merge, progress_bar, Sampler, Timeline};

mod connect;
mod outcome;

use connect::{open, JoinWait};
pub use outcome::rss_kib;
use outcome::Outcome;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Marks a load payload: `sb1 <publisher> <sequence> <sent µs> <padding>`.
const MARKER: &str = "sb1 ";

/// Options of `switchboard bench ws`.
#[derive(Debug, Clone, clap::Args)]
pub struct WsBenchArgs {
    /// The server's WebSocket URL, e.g. `ws://127.0.0.1:8080/ws` (publishers connect
    /// here, and subscribers unless `--subscribe-url` is given).
    #[arg(long)]
    pub url: String,
    /// Where subscribers connect instead, round-robin when repeated: other nodes of a
    /// cluster, to measure delivery across nodes.
    #[arg(long = "subscribe-url", value_name = "URL")]
    pub subscribe_urls: Vec<String>,
    /// Subscribing connections (1–100000).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Rooms the subscribers are spread over, round-robin.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishing connections (one room each, round-robin); 0 holds idle connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Extra subscribers that join (round-robin) and then never read: the server should
    /// close them as slow consumers while the others lose nothing. Not counted in the
    /// deliveries; reported as `stalled_closed`.
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// Messages per second over all publishers.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Payload (`content`) bytes per message (at least 32).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// How long to publish (at most 1h).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Longest wait after publishing for deliveries still in flight.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Idle time after connecting, before publishing (e.g. to read the server's memory).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// A JWT passed as `?token=`; guests otherwise.
    #[arg(long)]
    pub token: Option<String>,
    /// Handshakes in flight at once while connecting (as common load tools do).
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Prefix of the room names.
    #[arg(long, default_value = "bench")]
    pub room_prefix: String,
    /// Write a self-contained HTML report here.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// The server's process id (same machine): its resident memory is reported before
    /// connecting, with every connection open, and per connection.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// How publishers send: over their own WebSocket (`ws`), or as a backend through the
    /// server API — gRPC `ChatService/Publish` (`grpc`, needs `--grpc-url`) or
    /// `POST /api/v1/publish` (`http`, on `--url`'s host). `grpc` and `http` need an
    /// `--api-token` whose role is `service` or `admin`.
    #[arg(long, value_enum, default_value_t = PublishVia::Ws)]
    pub publish_via: PublishVia,
    /// The gRPC server for `--publish-via grpc`, e.g. `http://127.0.0.1:50051`.
    #[arg(long, value_name = "URL")]
    pub grpc_url: Option<String>,
    /// The backend's JWT (role `service` or `admin`) for `--publish-via grpc|http`; the
    /// WebSocket connections keep using `--token` (or connect as guests).
    #[arg(long, value_name = "JWT")]
    pub api_token: Option<String>,
}

/// How `bench ws` publishers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishVia {
    /// Their own WebSocket connections.
    Ws,
    /// gRPC `switchboard.chat.v1.ChatService/Publish`.
    Grpc,
    /// `POST /api/v1/publish`.
    Http,
}

/// Calls a server-API publisher may have in flight.
const API_IN_FLIGHT: usize = 64;

impl WsBenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        for url in std::iter::once(&self.url).chain(&self.subscribe_urls) {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                bail!("--url and --subscribe-url must be ws:// or wss:// URLs, got `{url}`");
            }
        }
        if self.clients == 0 || self.clients > 100_000 {
            bail!("--clients must be from 1 to 100000");
        }
        if self.rooms == 0 || self.rooms > self.clients {
            bail!("--rooms must be from 1 to --clients ({})", self.clients);
        }
        if self.publishers > 10_000 || self.stalled > 10_000 {
            bail!("--publishers and --stalled must be at most 10000");
        }
        if self.publishers > 0 && !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1e7) {
            bail!("--rate must be above 0 and at most 10000000 messages per second");
        }
        if !(32..=1 << 20).contains(&self.size) {
            bail!("--size must be from 32 to 1048576 bytes");
        }
        if self.duration > Duration::from_secs(3600) || self.drain > Duration::from_secs(600) {
            bail!("--duration is at most 1h and --drain at most 10m");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        if self.publish_via != PublishVia::Ws && self.api_token.is_none() {
            bail!("--publish-via grpc|http needs --api-token (a token whose role is `service`)");
        }
        if self.publish_via == PublishVia::Grpc && self.grpc_url.is_none() {
            bail!("--publish-via grpc needs --grpc-url, e.g. http://127.0.0.1:50051");
        }
        Ok(())
    }

    fn room(&self, index: usize) -> String {
        format!("{}-{}", self.room_prefix, index % self.rooms)
    }
}

/// Counters every connection task updates.
#[derive(Default)]
struct Shared {
    delivered: AtomicU64,
    error_frames: AtomicU64,
    closed_by_server: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, text: &str) {
        self.error_frames.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert_with(|| text.chars().take(300).collect());
    }
}

/// What one subscriber saw.
struct Received {
    delivered: u64,
    latency: Option<Histogram<u32>>,
}

/// Runs the benchmark and prints its summary and JSON line.
pub fn run(args: WsBenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let connections = (args.clients + args.publishers + args.stalled) as u64;
    let limit = rlimit::increase_nofile_limit(connections + 256)
        .context("cannot raise the open-file limit")?;
    if limit < connections + 64 {
        bail!(
            "cannot open {connections} connections: the open-file limit is {limit} \
             (raise the hard limit, e.g. `ulimit -Hn {}`, or use fewer --clients)",
            connections + 256
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(bench(args))?;
    outcome.print_and_save()
}

async fn bench(args: WsBenchArgs) -> anyhow::Result<Outcome> {
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let rss_before = args.server_pid.and_then(rss_kib);
    let with_token = |url: &String| match &args.token {
        Some(token) => format!(
            "{url}{}token={token}",
            if url.contains('?') { '&' } else { '?' }
        ),
        None => url.clone(),
    };
    let url = with_token(&args.url);
    let subscribe_urls: Vec<String> = if args.subscribe_urls.is_empty() {
        vec![url.clone()]
    } else {
        args.subscribe_urls.iter().map(with_token).collect()
    };
    let subscribe_url = |i: usize| subscribe_urls[i % subscribe_urls.len()].clone();

    // The first subscriber tells whether this server confirms joins.
    let progress = progress_bar(
        (args.clients + args.publishers) as u64,
        "connecting {pos}/{len} {wide_bar}",
    );
    let first = open(&subscribe_url(0), &args.room(0), JoinWait::Probe).await;
    let joins_confirmed = matches!(first, Ok((_, true)));
    let wait = if joins_confirmed {
        JoinWait::Confirmed
    } else {
        JoinWait::No
    };
    let mut connect_errors = 0u64;
    let mut first_connect_error = None;
    let mut subscribers = Vec::new();
    let mut per_room = vec![0u64; args.rooms];
    match first {
        Ok((ws, _)) => {
            per_room[0] += 1;
            subscribers.push(tokio::spawn(subscribe(ws, shared.clone(), stop_rx.clone())));
        }
        Err(error) => {
            connect_errors += 1;
            first_connect_error = Some(format!("{error:#}"));
        }
    }
    progress.inc(1);
    let mut opened = stream::iter(1..args.clients)
        .map(|i| {
            let (url, room) = (subscribe_url(i), args.room(i));
            async move { (i, open(&url, &room, wait).await) }
        })
        .buffer_unordered(args.connect_concurrency);
    while let Some((i, result)) = opened.next().await {
        progress.inc(1);
        match result {
            Ok((ws, _)) => {
                per_room[i % args.rooms] += 1;
                subscribers.push(tokio::spawn(subscribe(ws, shared.clone(), stop_rx.clone())));
            }
            Err(error) => {
                connect_errors += 1;
                first_connect_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    drop(opened);
    let mut stalled = Vec::new();
    for s in 0..args.stalled {
        match open(&subscribe_url(s), &args.room(s), wait).await {
            Ok((ws, _)) => stalled.push(ws),
            Err(error) => {
                connect_errors += 1;
                first_connect_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    let mut publishers = Vec::new();
    let api = match args.publish_via {
        PublishVia::Ws => None,
        via => Some(ApiPublisher::connect(&args, via).await?),
    };
    for p in 0..args.publishers {
        let room_index = p % args.rooms;
        if let Some(api) = &api {
            publishers.push((room_index, Sender::Api(api.clone())));
            progress.inc(1);
            continue;
        }
        match open(&url, &args.room(room_index), wait).await {
            Ok((ws, _)) => publishers.push((room_index, Sender::Ws(ws))),
            Err(error) => {
                connect_errors += 1;
                first_connect_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    if subscribers.is_empty() {
        bail!(
            "no connection could be opened to {}: {}",
            args.url,
            first_connect_error.unwrap_or_default()
        );
    }
    // Let presence traffic from the joins settle before measuring.
    tokio::time::sleep(Duration::from_millis(300).max(args.hold)).await;
    let rss_held = args.server_pid.and_then(rss_kib);

    // Publish.
    let base = Instant::now();
    let per_publisher = args.rate / publishers.len().max(1) as f64;
    let publish_tasks: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(id, (room_index, ws))| {
            let (room, shared) = (args.room(room_index), shared.clone());
            let plan = Plan {
                id,
                room,
                per_second: per_publisher,
                duration: args.duration,
                size: args.size,
            };
            let stop = stop_rx.clone();
            let refused = Arc::new(AtomicU64::new(0));
            let counted = refused.clone();
            let task = tokio::spawn(async move {
                let sent = match ws {
                    Sender::Ws(ws) => publish(ws, plan, shared, counted, stop).await,
                    Sender::Api(api) => api.publish(plan, shared, counted, stop).await,
                };
                (room_index, sent)
            });
            (task, refused)
        })
        .collect();
    let timeline_task = tokio::spawn(sample(shared.clone(), stop_rx.clone(), args.duration));
    let mut sent = 0;
    // Per publisher: its room's subscribers, what it sent, and what the server refused
    // for overload (told to the publisher, never relayed: not expected, not lost).
    let mut published = Vec::new();
    for (task, refused) in publish_tasks {
        let (room_index, count) = task.await?;
        sent += count;
        published.push((per_room[room_index], count, refused));
    }
    let expected_now = |published: &[(u64, u64, Arc<AtomicU64>)]| {
        published
            .iter()
            .map(|(members, count, refused)| {
                count.saturating_sub(refused.load(Ordering::Relaxed)) * members
            })
            .sum::<u64>()
    };
    let publish_time = base
        .elapsed()
        .min(args.duration.max(Duration::from_millis(1)));
    let drain_until = Instant::now() + args.drain;
    while shared.delivered.load(Ordering::Relaxed) < expected_now(&published)
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected = expected_now(&published);
    let refused = published
        .iter()
        .map(|(_, _, refused)| refused.load(Ordering::Relaxed))
        .sum();
    let _ = stop_tx.send(true);
    let timeline = timeline_task.await?;
    let stalled_closed = count_closed(stalled).await;

    let mut latency = latency_histogram();
    let mut delivered = 0;
    for task in subscribers {
        let received = task.await?;
        delivered += received.delivered;
        if let Some(h) = &received.latency {
            merge(&mut latency, h);
        }
    }
    let subscribers = per_room.iter().sum::<u64>() as usize;
    Ok(Outcome {
        rss_kib: rss_before.zip(rss_held),
        args,
        subscribers,
        connect_errors,
        first_connect_error,
        joins_confirmed,
        sent,
        refused,
        stalled_closed,
        expected,
        delivered,
        publish_time,
        latency,
        timeline,
        shared,
    })
}

/// The send time (µs since the run's base) in a load payload frame.
fn sent_at(frame: &str) -> Option<u64> {
    let start = frame.find(MARKER)? + MARKER.len();
    let mut fields = frame[start..].splitn(4, ' ');
    let _publisher = fields.next()?;
    let _sequence = fields.next()?;
    fields.next()?.parse().ok()
}

/// Reads until told to stop, counting load payloads and their latency. Frames already
/// buffered are handled without touching the shared counters or the stop signal; both are
/// visited only when the socket has nothing more, so the tool's cost per delivery stays
/// small next to the server's.
async fn subscribe(mut ws: Ws, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> Received {
    let mut received = Received {
        delivered: 0,
        latency: None,
    };
    // Payloads carry µs since the process-wide base; publishers use the same clock.
    let base = *BASE.get_or_init(Instant::now);
    let mut unreported = 0u64;
    loop {
        let message = match ws.next().now_or_never() {
            Some(message) => message,
            None => {
                if unreported > 0 {
                    shared.delivered.fetch_add(unreported, Ordering::Relaxed);
                    unreported = 0;
                }
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    message = ws.next() => message,
                }
            }
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                if let Some(sent) = sent_at(&text) {
                    let now = base.elapsed().as_micros() as u64;
                    let histogram = received.latency.get_or_insert_with(latency_histogram);
                    let _ = histogram.record(now.saturating_sub(sent).max(1));
                    received.delivered += 1;
                    unreported += 1;
                } else if text.contains("\"type\":\"error\"") {
                    shared.error(&text);
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                shared.closed_by_server.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    shared.delivered.fetch_add(unreported, Ordering::Relaxed);
    received
}

/// The process-wide time base payload timestamps count from.
static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// How one publisher sends.
enum Sender {
    /// Its own WebSocket.
    Ws(Ws),
    /// The server API (shared by every publisher).
    Api(ApiPublisher),
}

/// A backend publishing through the server API.
#[derive(Clone)]
enum ApiPublisher {
    Grpc(
        crate::grpc::pb::chat::chat_service_client::ChatServiceClient<tonic::transport::Channel>,
        Arc<str>,
    ),
    Http(reqwest::Client, Arc<str>, Arc<str>),
}

impl ApiPublisher {
    async fn connect(args: &WsBenchArgs, via: PublishVia) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let token = args.api_token.clone().unwrap_or_default();
        let bearer: Arc<str> = format!("Bearer {token}").into();
        match via {
            PublishVia::Grpc => {
                let url = args.grpc_url.clone().unwrap_or_default();
                let channel = tonic::transport::Endpoint::from_shared(url.clone())
                    .with_context(|| format!("--grpc-url `{url}`"))?
                    .connect()
                    .await
                    .with_context(|| format!("cannot reach {url}"))?;
                Ok(Self::Grpc(
                    crate::grpc::pb::chat::chat_service_client::ChatServiceClient::new(channel),
                    bearer,
                ))
            }
            _ => {
                let base = args
                    .url
                    .replacen("wss://", "https://", 1)
                    .replacen("ws://", "http://", 1);
                let base = base.trim_end_matches("/ws").trim_end_matches('/');
                Ok(Self::Http(
                    reqwest::Client::new(),
                    format!("{base}/api/v1/publish").into(),
                    bearer,
                ))
            }
        }
    }

    /// Sends one message; `Err(overloaded)` tells a refusal to retry from a failure.
    async fn send(&self, room: String, content: String) -> Result<(), (bool, String)> {
        match self {
            Self::Grpc(client, bearer) => {
                let mut request = tonic::Request::new(crate::grpc::pb::chat::PublishRequest {
                    room,
                    content,
                    ..Default::default()
                });
                if let Ok(value) = bearer.parse() {
                    request.metadata_mut().insert("authorization", value);
                }
                client
                    .clone()
                    .publish(request)
                    .await
                    .map(|_| ())
                    .map_err(|status| {
                        (
                            status.code() == tonic::Code::Unavailable,
                            format!("{:?}: {}", status.code(), status.message()),
                        )
                    })
            }
            Self::Http(client, url, bearer) => {
                let response = client
                    .post(&**url)
                    .header("authorization", &**bearer)
                    .json(&serde_json::json!({ "room": room, "content": content }))
                    .send()
                    .await
                    .map_err(|error| (false, error.to_string()))?;
                let status = response.status();
                if status.is_success() {
                    return Ok(());
                }
                let text = response.text().await.unwrap_or_default();
                Err((
                    status.as_u16() == 503 || status.as_u16() == 429,
                    format!("{status}: {text}"),
                ))
            }
        }
    }

    /// Publishes at the planned rate (up to [`API_IN_FLIGHT`] calls in flight); returns
    /// how many were sent.
    async fn publish(
        self,
        plan: Plan,
        shared: Arc<Shared>,
        refused: Arc<AtomicU64>,
        mut stop: watch::Receiver<bool>,
    ) -> u64 {
        let mut pacer = Pacer::new(&plan);
        let slots = Arc::new(tokio::sync::Semaphore::new(API_IN_FLIGHT));
        let mut sent = 0u64;
        while let Some(due) = pacer.due(&plan, &mut stop).await {
            while sent < due {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let content = pacer.payload(&plan, sent);
                let (api, room) = (self.clone(), plan.room.clone());
                let (shared, refused) = (shared.clone(), refused.clone());
                tokio::spawn(async move {
                    match api.send(room, content).await {
                        Ok(()) => {}
                        Err((true, _)) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err((false, error)) => shared.error(&error),
                    }
                    drop(slot);
                });
                sent += 1;
            }
        }
        // Every call answered before the count is final.
        let _ = slots.acquire_many(API_IN_FLIGHT as u32).await;
        sent
    }
}

/// Paces a publisher: how many messages are due by now, and their payloads.
struct Pacer {
    base: Instant,
    start: Instant,
    ticker: tokio::time::Interval,
    padding: String,
}

impl Pacer {
    fn new(plan: &Plan) -> Self {
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Self {
            base: *BASE.get_or_init(Instant::now),
            start: Instant::now(),
            ticker,
            padding: "x".repeat(plan.size),
        }
    }

    /// Waits for the next millisecond tick; how many messages should have gone out by
    /// now, or `None` once the plan's time is up or the run stops (catching up in bursts
    /// when the timer is late).
    async fn due(&mut self, plan: &Plan, stop: &mut watch::Receiver<bool>) -> Option<u64> {
        tokio::select! {
            biased;
            _ = stop.changed() => return None,
            _ = self.ticker.tick() => {}
        }
        let elapsed = self.start.elapsed();
        (elapsed < plan.duration).then(|| (elapsed.as_secs_f64() * plan.per_second).ceil() as u64)
    }

    /// Message `sequence`'s payload: marker, publisher, sequence, send time, padding.
    fn payload(&self, plan: &Plan, sequence: u64) -> String {
        let now = self.base.elapsed().as_micros();
        let mut content = format!("{MARKER}{} {sequence} {now} ", plan.id);
        let fill = plan.size.saturating_sub(content.len());
        content.push_str(&self.padding[..fill]);
        content
    }
}

struct Plan {
    id: usize,
    room: String,
    per_second: f64,
    duration: Duration,
    size: usize,
}

/// Publishes at the planned rate for the planned time (catching up in bursts when the
/// timer is late); returns how many messages were sent.
async fn publish(
    ws: Ws,
    plan: Plan,
    shared: Arc<Shared>,
    refused: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let (mut sink, mut source) = ws.split();
    let reader_shared = shared.clone();
    let reader = tokio::spawn(async move {
        // Acks, errors and other publishers' messages: read so the server never waits.
        while let Some(Ok(message)) = source.next().await {
            if let Message::Text(text) = message {
                if text.contains("\"type\":\"error\"") {
                    // Switchboard's push-back under overload: not relayed, not acked.
                    if text.contains("\"code\":\"overloaded\"") {
                        refused.fetch_add(1, Ordering::Relaxed);
                    } else {
                        reader_shared.error(&text);
                    }
                }
            }
        }
    });
    let mut pacer = Pacer::new(&plan);
    let mut sent = 0u64;
    'publishing: while let Some(due) = pacer.due(&plan, &mut stop).await {
        while sent < due {
            let content = pacer.payload(&plan, sent);
            let frame = format!(
                "{{\"type\":\"message\",\"room_id\":{},\"content\":\"{content}\"}}",
                Value::String(plan.room.clone())
            );
            if sink.feed(Message::text(frame)).await.is_err() {
                break 'publishing;
            }
            sent += 1;
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    // Keep reading acks until the run ends, then close.
    tokio::spawn(async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
        let _ = sink.close().await;
        reader.abort();
    });
    sent
}

/// How many of the stalled connections the server has closed: each is read now, and one
/// that ends (a close frame, or the connection dropped) within two seconds of reading
/// whatever had queued counts.
async fn count_closed(stalled: Vec<Ws>) -> u64 {
    let checks = stalled.into_iter().map(|mut ws| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return 0u64,
                Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => return 1,
                Ok(Some(Ok(_))) => {}
            }
        }
    });
    futures_util::future::join_all(checks)
        .await
        .into_iter()
        .sum()
}

/// Deliveries per interval from the start of publishing until the run stops.
async fn sample(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    duration: Duration,
) -> Timeline {
    let mut sampler = Sampler::new(duration, "delivered");
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = sampler.tick() => {}
        }
        sampler.record(shared.delivered.load(Ordering::Relaxed));
    }
    sampler.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_timestamps_are_found_in_any_frame_shape() {
        let ours = r#"{"id":"x","type":"message","from":"u","content":"sb1 3 17 123456 xxxx","room_id":"r","offset":9}"#;
        assert_eq!(sent_at(ours), Some(123_456));
        let seed =
            r#"{"type":"message","from":"client_1","content":"sb1 0 0 42 ","timestamp":"t"}"#;
        assert_eq!(sent_at(seed), Some(42));
        assert_eq!(sent_at(r#"{"type":"join"}"#), None);
        assert_eq!(sent_at(r#"{"content":"sb1 1 2 notanumber x"}"#), None);
    }
}
