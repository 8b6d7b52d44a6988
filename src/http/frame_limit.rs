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

/// Where the reader is in the incoming byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next byte starts a frame header.
    First,
    /// The next byte is the header's second (mask bit and 7-bit length).
    Second,
    /// Inside the extended length; `left` bytes to go, `count` holds what came so far.
    Length,
    /// Inside the masking key; `left` bytes to go.
    Mask,
    /// Inside a payload; `count` bytes to go.
    Payload,
    /// An oversize header was found; the error is due at the next poll.
    Refusing,
    /// The error has been given; the stream is over.
    Done,
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

/// Follows frame boundaries in a WebSocket byte stream, one byte of header at a time
/// (see the module docs). Sixteen bytes: it lives as long as the connection.
#[derive(Debug, Clone, Copy)]
struct Tracker {
    /// The payload bytes still to skip, or the length being read.
    count: u64,
    /// The largest payload accepted.
    max_payload: u32,
    state: State,
    /// Header bytes still to read in the current part (extended length or mask).
    left: u8,
    /// Header bytes of the current frame seen so far.
    seen: u8,
    /// Whether the current frame has a masking key.
    masked: bool,
}

impl Tracker {
    fn new(max_payload: usize) -> Self {
        Self {
            count: 0,
            max_payload: u32::try_from(max_payload).unwrap_or(u32::MAX),
            state: State::First,
            left: 0,
            seen: 0,
            masked: false,
        }
    }

    /// Moves over `chunk`, stopping at the first header that announces too much.
    fn scan(&mut self, chunk: &[u8]) -> Scan {
        let mut at = 0;
        while at < chunk.len() {
            if self.state == State::Payload {
                let skip = self.count.min((chunk.len() - at) as u64);
                self.count -= skip;
                at += skip as usize;
                if self.count == 0 {
                    self.state = State::First;
                }
                continue;
            }
            let byte = chunk[at];
            at += 1;
            match self.state {
                State::First => {
                    self.seen = 1;
                    self.state = State::Second;
                    continue;
                }
                State::Second => {
                    self.seen = 2;
                    self.masked = byte & 0x80 != 0;
                    self.count = 0;
                    match byte & 0x7F {
                        126 => (self.left, self.state) = (2, State::Length),
                        127 => (self.left, self.state) = (8, State::Length),
                        short => self.count = u64::from(short),
                    }
                    if self.state == State::Length {
                        continue;
                    }
                }
                State::Length => {
                    self.seen += 1;
                    self.count = (self.count << 8) | u64::from(byte);
                    self.left -= 1;
                    if self.left > 0 {
                        continue;
                    }
                }
                State::Mask => {
                    self.seen += 1;
                    self.left -= 1;
                    if self.left == 0 {
                        self.start_payload();
                    }
                    continue;
                }
                State::Payload | State::Refusing | State::Done => return Scan::Fine,
            }
            // The length is known.
            if self.count > u64::from(self.max_payload) {
                self.state = State::Refusing;
                return Scan::Oversize {
                    header_start: at.saturating_sub(usize::from(self.seen)),
                };
            }
            if self.masked {
                (self.left, self.state) = (4, State::Mask);
            } else {
                self.start_payload();
            }
        }
        Scan::Fine
    }

    fn start_payload(&mut self) {
        self.state = if self.count == 0 {
            State::First
        } else {
            State::Payload
        };
    }
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
        match self.tracker.state {
            State::Refusing => {
                self.tracker.state = State::Done;
                return Poll::Ready(Some(Err(PayloadError::Overflow)));
            }
            State::Done => return Poll::Ready(None),
            _ => {}
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
                self.tracker.state = State::Done;
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
                // (only the part of its header up to the length, if that arrived with an
                // earlier chunk: the refusal comes as soon as the length is known).
                let length_end = good + header(announced).len() - 4; // before the mask
                let expected = if cut > good && cut < length_end {
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
    fn the_tracker_stays_small() {
        assert_eq!(std::mem::size_of::<Tracker>(), 16);
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
