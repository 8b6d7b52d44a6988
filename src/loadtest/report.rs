//! What a load run measured, and how it is shown: a latency histogram, throughput over
//! time, a summary table, one JSON line, and a self-contained HTML report with SVG charts.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

/// Width of one throughput sample.
pub const SAMPLE: Duration = Duration::from_millis(250);

/// A progress bar on standard error (drawn only on a terminal).
pub fn progress_bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Samples a running total every [`SAMPLE`] into a [`Timeline`], moving a progress bar
/// over the expected run time; the caller decides when the run is over.
pub struct Sampler {
    progress: ProgressBar,
    ticker: tokio::time::Interval,
    started: std::time::Instant,
    unit: &'static str,
    last: u64,
    counts: Vec<u64>,
}

impl Sampler {
    /// Starts sampling a run expected to last `expected`; `unit` names the total
    /// (`calls`, `delivered`) in the bar's message.
    pub fn new(expected: Duration, unit: &'static str) -> Self {
        let template = "{elapsed_precise} {wide_bar} {msg}";
        let mut ticker = tokio::time::interval(SAMPLE);
        ticker.reset(); // the first tick one interval from now, not at once
        Self {
            progress: progress_bar(expected.as_millis() as u64, template),
            ticker,
            started: std::time::Instant::now(),
            unit,
            last: 0,
            counts: Vec::new(),
        }
    }

    /// Waits for the next sampling time.
    pub async fn tick(&mut self) {
        self.ticker.tick().await;
    }

    /// Records the running `total` at this sample.
    pub fn record(&mut self, total: u64) {
        self.counts.push(total.saturating_sub(self.last));
        self.last = total;
        let elapsed = self.started.elapsed().as_millis() as u64;
        self.progress.set_position(elapsed);
        self.progress.set_message(format!("{total} {}", self.unit));
    }

    /// Clears the bar; the counts per interval.
    pub fn finish(self) -> Timeline {
        self.progress.finish_and_clear();
        Timeline {
            interval: SAMPLE,
            counts: self.counts,
        }
    }
}

/// Latencies in microseconds, 1 µs to 10 min, two significant digits (about 10 KiB).
pub fn latency_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid histogram bounds")
}

/// Adds `from` into `into`, saturating instead of failing on overflowing counts.
pub fn merge(into: &mut Histogram<u32>, from: &Histogram<u32>) {
    if into.add(from).is_err() {
        for value in from.iter_recorded() {
            let _ = into.record_n(value.value_iterated_to(), value.count_at_value());
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest seen.
    pub max_ms: f64,
}

impl Percentiles {
    /// The percentiles of `histogram` (all zero when it is empty).
    pub fn of(histogram: &Histogram<u32>) -> Self {
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        if histogram.is_empty() {
            return Self {
                p50_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
            };
        }
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }

    /// Adds the four fields to a JSON object.
    pub fn insert_into(&self, object: &mut Map<String, Value>) {
        object.insert("p50_ms".into(), self.p50_ms.into());
        object.insert("p99_ms".into(), self.p99_ms.into());
        object.insert("p999_ms".into(), self.p999_ms.into());
        object.insert("max_ms".into(), self.max_ms.into());
    }
}

/// Deliveries (or calls) counted per sampling interval.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Width of one sample.
    pub interval: Duration,
    /// Count in each interval, in order.
    pub counts: Vec<u64>,
}

/// Everything a report shows.
pub struct Report<'a> {
    /// `bench ws` or `bench grpc`.
    pub title: String,
    /// Rows of the summary table, label and value.
    pub rows: Vec<(String, String)>,
    /// The JSON line.
    pub json: Map<String, Value>,
    /// Latencies.
    pub latency: &'a Histogram<u32>,
    /// Throughput over time.
    pub timeline: &'a Timeline,
    /// What the timeline counts (`deliveries`, `calls`).
    pub unit: &'static str,
}

impl Report<'_> {
    /// The summary table then the JSON line, on standard output.
    pub fn print(&self) {
        println!("{}", self.title);
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (label, value) in &self.rows {
            println!("  {label:<width$}  {value}");
        }
        println!("{}", Value::Object(self.json.clone()));
    }

    /// Prints the summary and JSON line, then writes the HTML report when asked.
    pub fn finish(&self, html: Option<&Path>) -> anyhow::Result<()> {
        self.print();
        if let Some(path) = html {
            std::fs::write(path, self.html())
                .with_context(|| format!("cannot write the report to {}", path.display()))?;
            eprintln!("report written to {}", path.display());
        }
        Ok(())
    }

    fn html(&self) -> String {
        let mut rows = String::new();
        for (label, value) in &self.rows {
            let _ = write!(
                rows,
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(label),
                escape(value)
            );
        }
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
             <style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}\
             table{{border-collapse:collapse}}th{{text-align:left;padding:.2rem 1rem .2rem 0;\
             font-weight:500;color:#555}}td{{font-family:monospace}}\
             pre{{background:#f4f4f4;padding:1rem;overflow:auto}}svg{{margin:1rem 0}}</style>\
             </head><body><h1>{title}</h1><table>{rows}</table>\
             <h2>Latency</h2>{latency}<h2>Throughput</h2>{throughput}\
             <h2>JSON</h2><pre>{json}</pre></body></html>\n",
            title = escape(&self.title),
            latency = latency_svg(self.latency),
            throughput = timeline_svg(self.timeline, self.unit),
            json = escape(&Value::Object(self.json.clone()).to_string()),
        )
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 240.0;
const PAD: f64 = 40.0;

/// Bars of the latency distribution over logarithmic buckets (0.01 ms … 10 s).
fn latency_svg(histogram: &Histogram<u32>) -> String {
    // Bucket upper bounds in µs: 10, 20, 50, 100, 200, 500, …
    let mut bounds = Vec::new();
    let mut base = 10u64;
    while base <= 10_000_000 {
        bounds.extend([base, base * 2, base * 5]);
        base *= 10;
    }
    let mut counts = vec![0u64; bounds.len()];
    for value in histogram.iter_recorded() {
        let v = value.value_iterated_to();
        let slot = bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(bounds.len() - 1);
        counts[slot] += u64::from(value.count_at_value());
    }
    // Only the buckets from the fastest to the slowest call: the axis fits the data.
    let first = counts.iter().position(|c| *c > 0).unwrap_or(0);
    let last = counts.iter().rposition(|c| *c > 0).unwrap_or(0);
    let (bounds, counts) = (&bounds[first..=last], &counts[first..=last]);
    let labels: Vec<String> = bounds
        .iter()
        .map(|us| {
            let ms = *us as f64 / 1000.0;
            if ms < 1.0 {
                format!("{ms}")
            } else {
                format!("{ms:.0}")
            }
        })
        .collect();
    bars(counts, &labels, "latency (ms, upper bound)", "count")
}

fn timeline_svg(timeline: &Timeline, unit: &str) -> String {
    let per_second = timeline.interval.as_secs_f64().max(1e-9);
    let rates: Vec<u64> = timeline
        .counts
        .iter()
        .map(|c| (*c as f64 / per_second) as u64)
        .collect();
    let labels: Vec<String> = (0..rates.len())
        .map(|i| format!("{:.1}", (i + 1) as f64 * timeline.interval.as_secs_f64()))
        .collect();
    bars(&rates, &labels, "time (s)", &format!("{unit}/s"))
}

/// The top of a y axis for data reaching `max`: the nearest round value at or above it
/// (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten), so bars fill the chart.
fn axis_top(max: u64) -> u64 {
    let max = max.max(1);
    let mut power = 1u64;
    loop {
        for step in [10, 15, 20, 25, 30, 40, 50, 60, 80, 100] {
            let top = power.saturating_mul(step) / 10;
            if top >= max && top > 0 {
                return top;
            }
        }
        power = power.saturating_mul(10);
    }
}

/// `1234567` as `1.2M`, for axis labels.
fn compact(value: u64) -> String {
    let v = value as f64;
    match value {
        0..=9_999 => value.to_string(),
        10_000..=999_999 => format!("{}k", trim(v / 1e3)),
        1_000_000..=999_999_999 => format!("{}M", trim(v / 1e6)),
        _ => format!("{}G", trim(v / 1e9)),
    }
}

fn trim(v: f64) -> String {
    let text = format!("{v:.1}");
    text.trim_end_matches(".0").to_owned()
}

/// A bar chart whose y axis runs from 0 to a round value just above the data, with
/// ticks at each quarter, and every few x labels.
fn bars(values: &[u64], labels: &[String], x_title: &str, y_title: &str) -> String {
    let max = axis_top(values.iter().copied().max().unwrap_or(0));
    let n = values.len().max(1) as f64;
    let slot = (WIDTH - 2.0 * PAD) / n;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-size=\"10\" font-family=\"sans-serif\">\
         <line x1=\"{PAD}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"#999\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{bottom}\" stroke=\"#999\"/>\
         <text x=\"{PAD}\" y=\"{top_label}\">{y_title}</text>\
         <text x=\"{mid}\" y=\"{x_label}\" text-anchor=\"middle\">{x_title}</text>",
        bottom = HEIGHT - PAD,
        right = WIDTH - PAD,
        top_label = PAD - 8.0,
        mid = WIDTH / 2.0,
        x_label = HEIGHT - 6.0,
    );
    // Quarter ticks; for a top below 4, one per whole count.
    let ticks: Vec<u64> = if max >= 4 {
        (0..=4).map(|q| max * q / 4).collect()
    } else {
        (0..=max).collect()
    };
    for value in ticks {
        let y = HEIGHT - PAD - (value as f64 / max as f64) * (HEIGHT - 2.0 * PAD);
        let _ = write!(
            svg,
            "<line x1=\"{PAD}\" y1=\"{y:.1}\" x2=\"{right}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>",
            right = WIDTH - PAD,
            tx = PAD - 4.0,
            ty = y + 3.0,
            label = compact(value),
        );
    }
    let every = (values.len() / 12).max(1);
    for (i, value) in values.iter().enumerate() {
        let h = (*value as f64 / max as f64) * (HEIGHT - 2.0 * PAD);
        let x = PAD + i as f64 * slot;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"#3b7dd8\">\
             <title>{label}: {value}</title></rect>",
            y = HEIGHT - PAD - h,
            w = (slot * 0.85).max(0.5),
            label = labels.get(i).map_or("", String::as_str),
        );
        if i % every == 0 {
            let _ = write!(
                svg,
                "<text x=\"{cx:.1}\" y=\"{ty}\" text-anchor=\"middle\">{label}</text>",
                cx = x + slot / 2.0,
                ty = HEIGHT - PAD + 12.0,
                label = labels.get(i).map_or("", String::as_str),
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sampler_records_what_each_interval_added() {
        let mut sampler = Sampler::new(Duration::from_secs(1), "calls");
        for total in [5, 12, 12, 20] {
            sampler.record(total);
        }
        let timeline = sampler.finish();
        assert_eq!(timeline.counts, [5, 7, 0, 8]);
        assert_eq!(timeline.interval, SAMPLE);
    }

    #[test]
    fn percentiles_and_html_reflect_the_recorded_latencies() {
        let mut histogram = latency_histogram();
        for us in [1_000, 2_000, 3_000, 100_000] {
            histogram.record(us).unwrap();
        }
        let p = Percentiles::of(&histogram);
        assert!((p.p50_ms - 2.0).abs() < 0.05, "{p:?}");
        assert!((p.max_ms - 100.0).abs() < 1.0, "{p:?}");
        let timeline = Timeline {
            interval: Duration::from_millis(500),
            counts: vec![10, 20, 30],
        };
        let report = Report {
            title: "bench <ws>".into(),
            rows: vec![("sent".into(), "3".into())],
            json: Map::new(),
            latency: &histogram,
            timeline: &timeline,
            unit: "deliveries",
        };
        let html = report.html();
        assert!(html.contains("bench &lt;ws&gt;"), "titles are escaped");
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(
            html.contains("<title>1.5: 60</title>"),
            "30 per 0.5 s is 60/s"
        );
    }

    #[test]
    fn axes_fit_the_data() {
        assert_eq!(axis_top(0), 1);
        assert_eq!(axis_top(60), 60);
        assert_eq!(axis_top(61), 80);
        assert_eq!(axis_top(1234), 1500);
        assert_eq!(axis_top(9_100_000), 10_000_000);
        assert_eq!(compact(1500), "1500");
        assert_eq!(compact(25_000), "25k");
        assert_eq!(compact(1_250_000), "1.2M");

        // Calls between 1 and 5 ms: the latency axis spans those buckets only.
        let mut histogram = Histogram::<u32>::new(3).unwrap();
        for us in [1_200, 1_800, 3_000, 4_900] {
            histogram.record(us).unwrap();
        }
        let svg = latency_svg(&histogram);
        let x_labels: Vec<&str> = svg
            .split("<title>")
            .skip(1)
            .map(|rest| rest.split(':').next().unwrap())
            .collect();
        assert_eq!(x_labels, ["2", "5"], "{svg}");
        // The y axis tops out at the largest bar's round value, with quarter ticks.
        assert!(svg.contains("end\">2</text>"), "{svg}");
        assert_eq!(svg.matches("end\">1</text>").count(), 1, "{svg}");
        assert!(!svg.contains("10000"), "no empty buckets up to 10 s");
    }
}
