//! [`FrameLimit`]: a WebSocket size limit that applies to the length a frame *announces*.
//!
//! actix-http's WebSocket codec checks its size limit only once a whole frame has arrived,
//! and until then keeps everything that follows the header (it even reserves room for up
//! to the limit at once). A client that announces a frame of 2^40 bytes and then streams
//! can make the server buffer without bound. `FrameLimit` sits between the connection's
//! byte stream and the codec: it follows the frame boundaries in the incoming bytes (it
//! reads only headers, and skips over payloads by counting) and ends the stream with
//! [`PayloadError::Overflow`] as soon as a header announces more than the limit — before
//! any of that frame's payload is passed on.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use actix_http::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

/// Longest frame header: 2 bytes, an 8-byte extended length and a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Where the reader is in the incoming byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Inside a frame header; `have` of its bytes are in `header`.
    Header { header: [u8; MAX_HEADER], have: u8 },
    /// Inside a payload, with this many bytes to go.
    Payload { remaining: u64 },
    /// An oversize header was found; the error is due at the next poll.
    Refusing,
    /// The error has been given; the stream is over.
    Done,
}

impl Position {
    const START: Self = Position::Header {
        header: [0; MAX_HEADER],
        have: 0,
    };
}

/// The outcome of scanning one chunk.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// Every frame header in the chunk is within the limit.
    Fine,
    /// A header announcing too much starts at this offset of the chunk (0 when it started
    /// in an earlier chunk): the bytes before it belong to earlier frames.
    Oversize { header_start: usize },
}

/// Follows frame boundaries in a WebSocket byte stream (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Tracker {
    position: Position,
    max_payload: u64,
}

impl Tracker {
    fn new(max_payload: usize) -> Self {
        Self {
            position: Position::START,
            max_payload: u64::try_from(max_payload).unwrap_or(u64::MAX),
        }
    }

    /// Moves over `chunk`, stopping at the first header that announces too much.
    fn scan(&mut self, chunk: &[u8]) -> Scan {
        let mut at = 0;
        while at < chunk.len() {
            match &mut self.position {
                Position::Payload { remaining } => {
                    let skip = (*remaining).min((chunk.len() - at) as u64);
                    *remaining -= skip;
                    at += skip as usize;
                    if *remaining == 0 {
                        self.position = Position::START;
                    }
                }
                Position::Header { header, have } => {
                    let start = at.saturating_sub(usize::from(*have));
                    header[usize::from(*have)] = chunk[at];
                    *have += 1;
                    at += 1;
                    let Some(length) = announced_length(&header[..usize::from(*have)]) else {
                        continue;
                    };
                    if length > self.max_payload {
                        self.position = Position::Refusing;
                        return Scan::Oversize {
                            header_start: start,
                        };
                    }
                    self.position = if length == 0 {
                        Position::START
                    } else {
                        Position::Payload { remaining: length }
                    };
                }
                Position::Refusing | Position::Done => return Scan::Fine,
            }
        }
        Scan::Fine
    }
}

/// The payload length a complete header announces, or `None` while it is incomplete.
fn announced_length(header: &[u8]) -> Option<u64> {
    let [_, second, rest @ ..] = header else {
        return None;
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (extended, length) = match second & 0x7F {
        126 => (
            2,
            rest.get(..2)
                .map(|b| u64::from(u16::from_be_bytes([b[0], b[1]]))),
        ),
        127 => (
            8,
            rest.get(..8)
                .map(|b| u64::from_be_bytes(b.try_into().expect("eight bytes"))),
        ),
        short => (0, Some(u64::from(short))),
    };
    (rest.len() >= extended + mask).then_some(length).flatten()
}

/// A byte stream cut off at the first WebSocket frame header announcing more than the limit.
pub struct FrameLimit<S> {
    inner: S,
    tracker: Tracker,
}

impl<S> FrameLimit<S> {
    /// Wraps the incoming bytes of an upgraded connection; frames may carry at most
    /// `max_payload` bytes.
    pub fn new(inner: S, max_payload: usize) -> Self {
        Self {
            inner,
            tracker: Tracker::new(max_payload),
        }
    }
}

impl<S> Stream for FrameLimit<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.tracker.position {
            Position::Refusing => {
                self.tracker.position = Position::Done;
                return Poll::Ready(Some(Err(PayloadError::Overflow)));
            }
            Position::Done => return Poll::Ready(None),
            Position::Header { .. } | Position::Payload { .. } => {}
        }
        let chunk = match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => chunk,
            other => return other,
        };
        match self.tracker.scan(&chunk) {
            Scan::Fine => Poll::Ready(Some(Ok(chunk))),
            // Earlier frames in the same chunk still reach the codec; the error follows.
            Scan::Oversize { header_start } if header_start > 0 => {
                Poll::Ready(Some(Ok(chunk.slice(..header_start))))
            }
            Scan::Oversize { .. } => {
                self.tracker.position = Position::Done;
                Poll::Ready(Some(Err(PayloadError::Overflow)))
            }
        }
    }
}

/// Whether a WebSocket read error is [`FrameLimit`]'s refusal, as the WebSocket layers
/// above report it (actix-web-actors keeps only its text, actix-ws the error itself).
pub fn is_oversize(error: &std::io::Error) -> bool {
    if let Some(PayloadError::Overflow) = error.get_ref().and_then(|e| e.downcast_ref()) {
        return true;
    }
    error.to_string() == PayloadError::Overflow.to_string()
}

#[cfg(test)]
mod tests {
    use futures_util::{stream, StreamExt};

    use super::*;

    /// A masked client frame header announcing `length` bytes.
    fn header(length: u64) -> Vec<u8> {
        let mut bytes = vec![0x81];
        match length {
            0..=125 => bytes.push(0x80 | length as u8),
            126..=0xFFFF => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(length as u16).to_be_bytes());
            }
            _ => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&length.to_be_bytes());
            }
        }
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes
    }

    fn frame(length: usize) -> Vec<u8> {
        let mut bytes = header(length as u64);
        bytes.extend(std::iter::repeat_n(b'x', length));
        bytes
    }

    /// Feeds `bytes` split at every cut of `cuts` and returns the bytes passed on and
    /// whether the stream ended with the overflow error.
    fn run(bytes: &[u8], cuts: &[usize], limit: usize) -> (Vec<u8>, bool) {
        let mut chunks = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            chunks.push(Ok(Bytes::copy_from_slice(&bytes[from..cut])));
            from = cut;
        }
        let mut limited = FrameLimit::new(stream::iter(chunks), limit);
        futures_executor_lite(async move {
            let mut passed = Vec::new();
            while let Some(item) = limited.next().await {
                match item {
                    Ok(chunk) => passed.extend_from_slice(&chunk),
                    Err(PayloadError::Overflow) => {
                        assert!(limited.next().await.is_none(), "the stream ends");
                        return (passed, true);
                    }
                    Err(other) => panic!("unexpected error {other}"),
                }
            }
            (passed, false)
        })
    }

    /// Runs a future that never waits (the test streams are always ready).
    fn futures_executor_lite<T>(future: impl std::future::Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        match future.as_mut().poll(&mut Context::from_waker(waker)) {
            Poll::Ready(value) => value,
            Poll::Pending => panic!("the test stream never waits"),
        }
    }

    #[test]
    fn frames_within_the_limit_pass_unchanged_however_they_are_split() {
        let mut bytes = frame(10);
        bytes.extend(frame(0));
        bytes.extend(frame(200));
        bytes.extend(frame(70_000));
        for cut in 0..bytes.len().min(400) {
            let (passed, refused) = run(&bytes, &[cut], 100_000);
            assert!(!refused, "cut at {cut}");
            assert_eq!(passed, bytes, "cut at {cut}");
        }
        let every_byte: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(run(&bytes, &every_byte, 100_000), (bytes.clone(), false));
    }

    #[test]
    fn a_header_announcing_too_much_ends_the_stream_before_its_payload() {
        for announced in [1u64 << 40, 65_537, 126] {
            let mut bytes = frame(5);
            let good = bytes.len();
            bytes.extend(header(announced));
            bytes.extend(std::iter::repeat_n(b'y', 1000));
            for cut in 0..bytes.len() {
                let (passed, refused) = run(&bytes, &[cut], 125);
                assert!(refused, "announced {announced}, cut at {cut}");
                // The earlier frame whole, and never a byte of the oversize frame's payload
                // (only the part of its header that arrived with an earlier chunk).
                let header_len = header(announced).len();
                let expected = if cut > good && cut < good + header_len {
                    cut
                } else {
                    good
                };
                assert_eq!(
                    passed,
                    bytes[..expected],
                    "announced {announced}, cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn only_the_overflow_error_is_taken_for_a_refusal() {
        let actix_ws_style = std::io::Error::other(PayloadError::Overflow);
        let actors_style = std::io::Error::other(PayloadError::Overflow.to_string());
        assert!(is_oversize(&actix_ws_style));
        assert!(is_oversize(&actors_style));
        assert!(!is_oversize(&std::io::Error::other("invalid utf-8")));
        assert!(!is_oversize(&std::io::Error::other(
            PayloadError::Incomplete(None)
        )));
    }
}
