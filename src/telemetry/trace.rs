//! W3C Trace Context (`traceparent` / `tracestate`), plus the seed's `X-Trace-ID` /
//! `X-Span-ID`: each request joins the caller's trace (or starts one) with a span id of its
//! own, logs both, and returns them so the caller can correlate.

use std::fmt;

/// A request's place in a distributed trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits, never all zero.
    pub trace_id: String,
    /// This request's span: 16 lower-case hex digits.
    pub span_id: String,
    /// The caller's span, when there was one.
    pub parent_id: Option<String>,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// The caller's `tracestate`, passed on unchanged.
    pub tracestate: Option<String>,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    if buf.iter().all(|b| *b == 0) {
        buf[0] = 1;
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl TraceContext {
    /// Joins the trace in these header values, or starts a new one. Invalid values are
    /// ignored (as the W3C spec asks), never an error.
    pub fn from_headers(
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        x_trace_id: Option<&str>,
        x_span_id: Option<&str>,
    ) -> Self {
        let span_id = random_hex(8);
        if let Some((trace_id, parent_id, flags)) = traceparent.and_then(parse_traceparent) {
            return Self {
                trace_id,
                span_id,
                parent_id: Some(parent_id),
                flags,
                tracestate: tracestate
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.len() <= 512)
                    .map(str::to_owned),
            };
        }
        let seed_trace = x_trace_id
            .map(|id| id.trim().to_ascii_lowercase())
            .filter(|id| is_hex(id, 32) && id.bytes().any(|b| b != b'0'));
        let seed_parent = x_span_id
            .map(|id| id.trim().to_ascii_lowercase())
            .filter(|id| is_hex(id, 16) && id.bytes().any(|b| b != b'0'));
        Self {
            parent_id: seed_trace.as_ref().and(seed_parent),
            trace_id: seed_trace.unwrap_or_else(|| random_hex(16)),
            span_id,
            flags: 1,
            tracestate: None,
        }
    }

    /// The `traceparent` value naming this request's span.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

impl TraceContext {
    /// Makes `span` (a request's tracing span) continue this trace in exported spans, and,
    /// when spans are exported, adopts the exported span's ids so headers, logs and the
    /// collector agree. Without `--otlp-endpoint` nothing changes.
    pub fn attach(&mut self, span: &tracing::Span) {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        if let Some(parent) = &self.parent_id {
            if let (Ok(trace_id), Ok(span_id)) =
                (TraceId::from_hex(&self.trace_id), SpanId::from_hex(parent))
            {
                let remote = SpanContext::new(
                    trace_id,
                    span_id,
                    TraceFlags::new(self.flags),
                    true,
                    TraceState::default(),
                );
                let _ =
                    span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
            }
        }
        let exported = span.context().span().span_context().clone();
        if exported.is_valid() {
            self.trace_id = exported.trace_id().to_string();
            self.span_id = exported.span_id().to_string();
        }
    }
}

/// `version-traceid-parentid-flags`; version 00 exactly, later versions by their prefix.
fn parse_traceparent(raw: &str) -> Option<(String, String, u8)> {
    let raw = raw.trim();
    let mut parts = raw.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    if !is_hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
        return None;
    }
    if !is_hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !is_hex(parent_id, 16) || parent_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !is_hex(flags, 2) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id.to_owned(), parent_id.to_owned(), flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_joined_with_a_new_span() {
        let ctx = TraceContext::from_headers(Some(PARENT), Some("vendor=x"), None, None);
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(ctx.span_id, "00f067aa0ba902b7");
        assert_eq!(ctx.tracestate.as_deref(), Some("vendor=x"));
        let out = ctx.traceparent();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let ctx = TraceContext::from_headers(Some(bad), None, None, None);
            assert_ne!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert!(ctx.parent_id.is_none(), "{bad}");
            assert!(is_hex(&ctx.trace_id, 32));
        }
    }

    #[test]
    fn the_seed_headers_are_accepted() {
        let ctx = TraceContext::from_headers(
            None,
            None,
            Some("4BF92F3577B34DA6A3CE929D0E0E4736"),
            Some("00f067aa0ba902b7"),
        );
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_id.as_deref(), Some("00f067aa0ba902b7"));
    }
}
