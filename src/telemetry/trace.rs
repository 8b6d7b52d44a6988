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
    /// The caller's `tracestate` when it follows the W3C grammar (normalised: empty
    /// members and the spaces around commas dropped); otherwise none at all.
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
                tracestate: tracestate.and_then(parse_tracestate),
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

/// Most list members a `tracestate` may carry.
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest `tracestate` passed on.
const MAX_TRACESTATE_LEN: usize = 512;

/// A `tracestate` per W3C Trace Context: up to 32 `key=value` members, keys unique and
/// either `simple-key` or `tenant@system`, values of printable ASCII without `,` and `=`
/// (not ending in a space), at most 512 characters in all. A header that breaks the
/// grammar is dropped whole, as the spec asks (never passed on in part, never reflected).
fn parse_tracestate(raw: &str) -> Option<String> {
    let mut members: Vec<(&str, &str)> = Vec::new();
    for member in raw.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=')?;
        if !valid_key(key) || !valid_value(value) || members.iter().any(|(k, _)| *k == key) {
            return None;
        }
        members.push((key, value));
    }
    if members.is_empty() || members.len() > MAX_TRACESTATE_MEMBERS {
        return None;
    }
    let normalised = members
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",");
    (normalised.len() <= MAX_TRACESTATE_LEN).then_some(normalised)
}

fn key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

fn valid_key(key: &str) -> bool {
    let simple = |key: &str, max: usize, first_digit: bool| {
        let bytes = key.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= max
            && (bytes[0].is_ascii_lowercase() || first_digit && bytes[0].is_ascii_digit())
            && bytes.iter().all(|b| key_char(*b))
    };
    match key.split_once('@') {
        None => simple(key, 256, false),
        Some((tenant, system)) => simple(tenant, 241, true) && simple(system, 14, false),
    }
}

fn valid_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 256
        && bytes.last() != Some(&b' ')
        && bytes
            .iter()
            .all(|b| (0x20..=0x7E).contains(b) && *b != b',' && *b != b'=')
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

    #[test]
    fn tracestate_follows_the_w3c_grammar_or_is_dropped() {
        let cases: [(&str, Option<&str>); 15] = [
            ("congo=t61rcWkgMzE", Some("congo=t61rcWkgMzE")),
            (
                " rojo=00f067aa0ba902b7 ,, congo=t61rcWkgMzE ",
                Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
            ),
            (
                "tenant@system=x,a-b*c/d_1=y",
                Some("tenant@system=x,a-b*c/d_1=y"),
            ),
            ("1tenant@sys=v", Some("1tenant@sys=v")),
            ("", None),
            ("Upper=x", None),
            ("1abc=x", None),
            ("a=x,a=y", None),
            ("a=", None),
            ("a=x y ", Some("a=x y")),
            ("a= x", Some("a= x")),
            ("a=b=c", None),
            ("a=\u{7f}", None),
            ("noequals", None),
            ("t@toolongsystemid=x", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(parse_tracestate(raw).as_deref(), expected, "{raw:?}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse_tracestate(&many.join(",")), None, "33 members");
        assert!(
            parse_tracestate(&many[..32].join(",")).is_some(),
            "32 members"
        );
        let long = format!("a={}", "x".repeat(255));
        let big: Vec<String> = (0..3)
            .map(|i| format!("k{i}={}", "x".repeat(200)))
            .collect();
        assert!(parse_tracestate(&long).is_some());
        assert_eq!(
            parse_tracestate(&big.join(",")),
            None,
            "over 512 characters"
        );
    }
}
