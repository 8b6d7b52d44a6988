//! Log output: `tracing` with a pretty (terminal) or JSON formatter, W3C trace context for
//! requests ([`trace`]), and optional span export over OTLP/HTTP (`--otlp-endpoint`).

pub mod trace;

use std::{
    io::IsTerminal,
    sync::{
        atomic::{AtomicU64, Ordering},
        Once, OnceLock,
    },
};

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

/// Panics seen by the hook [`install_panic_hook`] installs.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Makes every panic visible to operators: counted (`switchboard_panics_total`) and logged
/// as an `error` event with its message, location and thread, before the standard hook
/// prints it. A panic in a handler or an actor ends only its own task or connection, so
/// the server stays up — the count is how anyone notices. Installed once per process.
pub fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::Relaxed);
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let location = info.location().map(ToString::to_string).unwrap_or_default();
            let thread = std::thread::current();
            tracing::error!(
                panic.message = message,
                panic.location = %location,
                thread = thread.name().unwrap_or("unnamed"),
                "panic"
            );
            previous(info);
        }));
    });
}

/// Panics counted since the hook was installed (0 without it).
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
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

#[cfg(test)]
mod panic_tests {
    #[test]
    fn the_hook_counts_panics_and_keeps_the_standard_report() {
        super::install_panic_hook();
        super::install_panic_hook(); // once per process, however often it is called
        let before = super::panics();
        let caught = std::panic::catch_unwind(|| panic!("counted by the hook"));
        assert!(caught.is_err());
        assert!(super::panics() > before);
    }
}
