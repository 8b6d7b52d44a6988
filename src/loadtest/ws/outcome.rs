//! The end of a run: the summary table, the JSON line and the HTML report.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use hdrhistogram::Histogram;
use serde_json::Map;

use super::{Shared, WsBenchArgs};
use crate::loadtest::report::{Percentiles, Report, Timeline};

/// What a run measured.
pub(super) struct Outcome {
    pub(super) args: WsBenchArgs,
    pub(super) subscribers: usize,
    pub(super) connect_errors: u64,
    pub(super) first_connect_error: Option<String>,
    pub(super) joins_confirmed: bool,
    pub(super) sent: u64,
    /// Publishes the server refused for overload (told to the publisher, not relayed).
    pub(super) refused: u64,
    /// Stalled subscribers the server closed.
    pub(super) stalled_closed: u64,
    pub(super) expected: u64,
    pub(super) delivered: u64,
    pub(super) publish_time: Duration,
    pub(super) latency: Histogram<u32>,
    pub(super) timeline: Timeline,
    pub(super) shared: Arc<Shared>,
    pub(super) rss_kib: Option<(u64, u64)>,
}

/// Fewer connections than this cannot be told apart from the allocator's and the
/// kernel's page-sized noise.
pub const MIN_CONNECTIONS_FOR_RSS: usize = 1000;

/// The server's memory per connection from its RSS before and with them open, or why it
/// cannot be told.
fn per_connection_kib(before: u64, held: u64, connections: usize) -> Result<f64, String> {
    if connections < MIN_CONNECTIONS_FOR_RSS {
        return Err(format!(
            "{connections} connections are too few; use at least {MIN_CONNECTIONS_FOR_RSS}"
        ));
    }
    if held <= before {
        return Err(
            "the server's memory did not grow (freed meanwhile, or not this server?)".into(),
        );
    }
    let per = (held - before) as f64 / connections as f64;
    Ok((per * 100.0).round() / 100.0)
}

/// Resident memory of process `pid`, in KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Outcome {
    pub(super) fn print_and_save(&self) -> anyhow::Result<()> {
        let args = &self.args;
        let lost = self.expected.saturating_sub(self.delivered);
        let seconds = self.publish_time.as_secs_f64().max(1e-9);
        let per_second = (self.delivered as f64 / seconds).round();
        let percentiles = Percentiles::of(&self.latency);
        let mut json = Map::new();
        json.insert("clients".into(), (self.subscribers as u64).into());
        json.insert("rooms".into(), (args.rooms as u64).into());
        json.insert("publishers".into(), (args.publishers as u64).into());
        json.insert("rate".into(), args.rate.into());
        json.insert("size".into(), (args.size as u64).into());
        json.insert("duration_s".into(), args.duration.as_secs_f64().into());
        json.insert("sent".into(), self.sent.into());
        json.insert("refused".into(), self.refused.into());
        json.insert("stalled".into(), (args.stalled as u64).into());
        json.insert("stalled_closed".into(), self.stalled_closed.into());
        json.insert("expected_deliveries".into(), self.expected.into());
        json.insert("delivered".into(), self.delivered.into());
        json.insert("lost".into(), lost.into());
        json.insert("deliveries_per_sec".into(), per_second.into());
        percentiles.insert_into(&mut json);
        json.insert("connect_errors".into(), self.connect_errors.into());
        let error_frames = self.shared.error_frames.load(Ordering::Relaxed);
        let closed = self.shared.closed_by_server.load(Ordering::Relaxed);
        json.insert("error_frames".into(), error_frames.into());
        json.insert("closed_by_server".into(), closed.into());
        json.insert("joins_confirmed".into(), self.joins_confirmed.into());
        let mut rows = vec![
            (
                "clients".to_owned(),
                format!(
                    "{} subscribers in {} rooms, {} publishers",
                    self.subscribers, args.rooms, args.publishers
                ),
            ),
            ("connect errors".into(), self.connect_errors.to_string()),
            (
                "sent".into(),
                format!(
                    "{} messages of {} B at {}/s for {:.1} s",
                    self.sent, args.size, args.rate, seconds
                ),
            ),
            (
                "refused".into(),
                format!(
                    "{} publishes refused for overload (not relayed)",
                    self.refused
                ),
            ),
            (
                "stalled".into(),
                format!(
                    "{} of {} non-reading subscribers closed by the server",
                    self.stalled_closed, args.stalled
                ),
            ),
            ("expected".into(), self.expected.to_string()),
            ("delivered".into(), self.delivered.to_string()),
            ("lost".into(), lost.to_string()),
            ("deliveries/s".into(), format!("{per_second}")),
            (
                "latency (ms)".into(),
                format!(
                    "p50 {}  p99 {}  p99.9 {}  max {}",
                    percentiles.p50_ms, percentiles.p99_ms, percentiles.p999_ms, percentiles.max_ms
                ),
            ),
            (
                "server".into(),
                format!(
                    "{error_frames} error frames, {closed} connections closed by the server{}",
                    if self.joins_confirmed {
                        ""
                    } else {
                        ", joins not confirmed"
                    }
                ),
            ),
        ];
        if let Some((before, held)) = self.rss_kib {
            let connections = self.subscribers + args.publishers + args.stalled;
            json.insert("rss_before_kib".into(), before.into());
            json.insert("rss_connected_kib".into(), held.into());
            let line = match per_connection_kib(before, held, connections) {
                Ok(per) => {
                    json.insert("rss_per_connection_kib".into(), per.into());
                    format!("{before} KiB before, {held} KiB connected: {per} KiB per connection")
                }
                Err(why) => {
                    json.insert("rss_per_connection_kib".into(), serde_json::Value::Null);
                    json.insert("rss_not_measured".into(), why.clone().into());
                    format!("{before} KiB before, {held} KiB connected: per connection not measured ({why})")
                }
            };
            rows.push(("server memory".into(), line));
        }
        if let Some(error) = &self.first_connect_error {
            rows.push(("first connect error".into(), error.clone()));
        }
        if let Some(error) = self
            .shared
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            rows.push(("first error frame".into(), error.clone()));
        }
        let report = Report {
            title: format!("switchboard bench ws — {}", args.url),
            rows,
            json,
            latency: &self.latency,
            timeline: &self.timeline,
            unit: "deliveries",
        };
        report.finish(args.report.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_connection_is_given_only_when_it_can_be_told() {
        assert_eq!(per_connection_kib(10_000, 130_000, 10_000), Ok(12.0));
        let few = per_connection_kib(10_000, 10_100, 20).unwrap_err();
        assert!(few.contains("20 connections are too few"), "{few}");
        let shrunk = per_connection_kib(10_000, 9_000, 5_000).unwrap_err();
        assert!(shrunk.contains("did not grow"), "{shrunk}");
    }
}
