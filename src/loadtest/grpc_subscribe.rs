//! `switchboard bench grpc --call subscribe`: `--concurrency` streaming subscribers
//! (`ChatService/Subscribe`) on one room, and one publisher (`ChatService/Publish`) at
//! `--rate` messages per second whose payloads carry their send time: delivery latency,
//! deliveries per second, and what was lost. Needs a token whose role is `service`.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::Map;
use tonic::Request;

use super::{
    grpc::GrpcBenchArgs,
    report::{latency_histogram, merge, Percentiles, Report, Sampler},
};
use crate::grpc::pb::chat::{
    chat_service_client::ChatServiceClient, PublishRequest, SubscribeRequest,
};

/// How long subscribers keep reading after the last publish, for messages in flight.
const DRAIN: Duration = Duration::from_secs(3);

fn authorized<T>(message: T, bearer: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = bearer.parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Runs the subscribe benchmark.
pub async fn bench(args: GrpcBenchArgs) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(args.addr.clone())
        .with_context(|| format!("`{}` is not a valid address", args.addr))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.addr))?;
    let bearer: Arc<str> = format!("Bearer {}", args.token).into();
    let room = format!("bench-subscribe-{}", uuid::Uuid::new_v4().simple());
    let base = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));

    // Subscribers first, each on its own stream (a few channels share the connections).
    let mut streams = Vec::new();
    for _ in 0..args.concurrency {
        let mut client = ChatServiceClient::new(channel.clone());
        let request = SubscribeRequest {
            room: room.clone(),
            since_offset: None,
            presence: false,
        };
        let stream = client
            .subscribe(authorized(request, &bearer))
            .await
            .context("Subscribe failed (the token needs role `service`)")?
            .into_inner();
        streams.push(stream);
    }
    let deadline = base + args.duration;
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let counted = delivered.clone();
            tokio::spawn(async move {
                let mut latency = latency_histogram();
                let mut received = 0u64;
                let mut ended = None;
                let until = deadline + DRAIN;
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, stream.message()).await {
                        Ok(Ok(Some(message))) => {
                            received += 1;
                            counted.fetch_add(1, Ordering::Relaxed);
                            if let Ok(sent) = message.content.parse::<u128>() {
                                let now = base.elapsed().as_micros();
                                let _ = latency.record(now.saturating_sub(sent).max(1) as u64);
                            }
                        }
                        Ok(Ok(None)) => break,
                        Ok(Err(status)) => {
                            ended = Some(status.to_string());
                            break;
                        }
                        Err(_) => break,
                    }
                }
                (received, latency, ended)
            })
        })
        .collect();

    // One publisher at the planned rate.
    let rate = if args.rate > 0.0 { args.rate } else { 100.0 };
    let publisher = {
        let (channel, bearer, room) = (channel.clone(), bearer.clone(), room.clone());
        tokio::spawn(async move {
            let mut client = ChatServiceClient::new(channel);
            let mut ticker = tokio::time::interval(Duration::from_millis(1));
            let (mut sent, mut failed, mut first_error) = (0u64, 0u64, None);
            let start = Instant::now();
            while Instant::now() < deadline {
                ticker.tick().await;
                let due = (start.elapsed().as_secs_f64() * rate).ceil() as u64;
                while sent + failed < due {
                    let content = base.elapsed().as_micros().to_string();
                    let request = PublishRequest {
                        room: room.clone(),
                        content,
                        ..PublishRequest::default()
                    };
                    match client.publish(authorized(request, &bearer)).await {
                        Ok(_) => sent += 1,
                        Err(status) => {
                            failed += 1;
                            first_error.get_or_insert_with(|| status.to_string());
                        }
                    }
                }
            }
            (sent, failed, first_error)
        })
    };

    let mut sampler = Sampler::new(args.duration + DRAIN, "deliveries");
    while Instant::now() < deadline + DRAIN {
        sampler.tick().await;
        sampler.record(delivered.load(Ordering::Relaxed));
    }
    let timeline = sampler.finish();
    let (sent, failed, first_error) = publisher.await?;
    let mut latency: Histogram<u32> = latency_histogram();
    let (mut received, mut ended_early, mut end_reason) = (0u64, 0u64, None);
    for reader in readers {
        let (count, histogram, ended) = reader.await?;
        received += count;
        merge(&mut latency, &histogram);
        if let Some(reason) = ended {
            ended_early += 1;
            end_reason.get_or_insert(reason);
        }
    }
    let expected = sent * args.concurrency as u64;
    let lost = expected.saturating_sub(received);
    let elapsed = args.duration.as_secs_f64();
    let percentiles = Percentiles::of(&latency);
    let mut json = Map::new();
    json.insert("call".into(), "Subscribe".into());
    json.insert("subscribers".into(), (args.concurrency as u64).into());
    json.insert("duration_s".into(), elapsed.into());
    json.insert("published".into(), sent.into());
    json.insert("publish_errors".into(), failed.into());
    json.insert("expected_deliveries".into(), expected.into());
    json.insert("delivered".into(), received.into());
    json.insert("lost".into(), lost.into());
    json.insert("streams_ended".into(), ended_early.into());
    json.insert(
        "deliveries_per_sec".into(),
        (received as f64 / elapsed).round().into(),
    );
    percentiles.insert_into(&mut json);
    let mut rows = vec![
        (
            "call".to_owned(),
            format!(
                "Subscribe × {}, Publish at {rate}/s on one room",
                args.concurrency
            ),
        ),
        (
            "deliveries".into(),
            format!("{received} of {expected} ({lost} lost) from {sent} published"),
        ),
        (
            "delivery latency (ms)".into(),
            format!(
                "p50 {}  p99 {}  p99.9 {}  max {}",
                percentiles.p50_ms, percentiles.p99_ms, percentiles.p999_ms, percentiles.max_ms
            ),
        ),
    ];
    if let Some(error) = first_error {
        rows.push(("first publish error".into(), error));
    }
    if let Some(reason) = end_reason {
        rows.push((format!("{ended_early} streams ended early"), reason));
    }
    Report {
        title: format!("switchboard bench grpc --call subscribe — {}", args.addr),
        rows,
        json,
        latency: &latency,
        timeline: &timeline,
        unit: "deliveries",
    }
    .finish(args.report.as_deref())?;
    if sent == 0 {
        bail!("nothing could be published; see the first publish error above");
    }
    Ok(())
}
