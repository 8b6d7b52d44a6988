//! Log output: `tracing` with a pretty (terminal) or JSON formatter, W3C trace context for
//! requests ([`trace`]), and optional span export over OTLP/HTTP (`--otlp-endpoint`).

pub mod trace;

use std::{io::IsTerminal, sync::OnceLock};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

/// The span exporter, kept so [`shutdown`] can flush it.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// An OTLP/HTTP exporter sending spans to `endpoint` (`…/v1/traces` is appended when
/// missing), batched on a background thread.
fn otlp_provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    let endpoint = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("switchboard")
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Whether spans are exported (`--otlp-endpoint` was given and the exporter started).
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// Flushes and stops span export (a no-op without `--otlp-endpoint`).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(error) = provider.shutdown() {
            eprintln!("switchboard: could not flush OTLP spans: {error}");
        }
    }
}

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. The filter is `--log-level` when given, else
/// `RUST_LOG`, else `info`. Calling it twice is harmless (the second call does nothing),
/// which lets tests start several servers in one process.
pub fn init(settings: &LogSettings) {
    let filter = settings
        .level
        .as_deref()
        .and_then(|level| EnvFilter::try_new(level).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let otel =
        settings
            .otlp_endpoint
            .as_deref()
            .and_then(|endpoint| match otlp_provider(endpoint) {
                Ok(provider) => {
                    let tracer = provider.tracer("switchboard");
                    let _ = PROVIDER.set(provider);
                    Some(tracing_opentelemetry::layer().with_tracer(tracer))
                }
                Err(error) => {
                    eprintln!("switchboard: OTLP export disabled: {error}");
                    None
                }
            });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = match settings.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stdout),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_writer(std::io::stdout),
            )
            .try_init(),
    };
}
