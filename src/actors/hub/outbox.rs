//! [`Outbox`]: a session's outbound queue as the hub sees it.
//!
//! A session's mailbox is its connection's outbound queue. The mailbox bounds the number of
//! frames; the outbox also counts what they weigh, so one connection cannot make the server
//! hold more than `--ws-outbound-bytes` for it (twenty large `history` answers a client
//! never reads, say). The hub adds a frame's size when it queues the frame and the session
//! takes it off when it hands the frame to its connection — like a channel's length, these
//! counters are plumbing of the queue, not state of the chat; nobody else reads them.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use actix::{prelude::SendError, Recipient};
use bytestring::ByteString;

use super::ToSession;

/// Where a session's frames go, and how much waits there.
#[derive(Debug)]
pub struct Outbox {
    recipient: Recipient<ToSession>,
    /// Frames queued and not yet taken off by the session.
    frames: AtomicU32,
    /// Their bytes.
    bytes: AtomicU32,
    /// Frames the session has taken off since it started (wrapping): a member whose
    /// count does not move is not reading at all.
    taken: AtomicU32,
    /// The hub's own note at its last progress check: `taken` then (low 28 bits) and how
    /// many checks in a row found no progress while behind (high 4 bits). Kept here, not
    /// in the hub's member entry, so that entry stays in a smaller allocation.
    watch: AtomicU32,
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full (in frames or bytes): the client is not keeping up.
    Full,
    /// The session is gone.
    Closed,
}

/// How full a queue may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Frames (the mailbox's capacity).
    pub frames: u32,
    /// Bytes.
    pub bytes: u32,
}

impl Limits {
    /// No limits (a hub whose sessions set their own mailbox bounds, e.g. in benchmarks).
    pub const NONE: Limits = Limits {
        frames: u32::MAX,
        bytes: u32::MAX,
    };
}

impl Outbox {
    /// The outbox of the session reached through `recipient`.
    pub fn new(recipient: Recipient<ToSession>) -> Self {
        Self {
            recipient,
            frames: AtomicU32::new(0),
            bytes: AtomicU32::new(0),
            taken: AtomicU32::new(0),
            watch: AtomicU32::new(0),
        }
    }

    /// Queues frames weighing `bytes` in all, unless that would pass `limits`.
    pub(super) fn push(
        &self,
        message: ToSession,
        frames: u32,
        bytes: u32,
        limits: Limits,
    ) -> Result<(), Refused> {
        if self.bytes.load(Relaxed).saturating_add(bytes) > limits.bytes {
            return Err(Refused::Full);
        }
        // Counted first, so the session can never take off more than was added.
        self.frames.fetch_add(frames, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        match self.recipient.try_send(message) {
            Ok(()) => Ok(()),
            Err(error) => {
                self.frames.fetch_sub(frames, Relaxed);
                self.bytes.fetch_sub(bytes, Relaxed);
                Err(match error {
                    SendError::Full(_) => Refused::Full,
                    SendError::Closed(_) => Refused::Closed,
                })
            }
        }
    }

    /// Queues one frame.
    pub(super) fn push_frame(&self, frame: &ByteString, limits: Limits) -> Result<(), Refused> {
        let bytes = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        self.push(ToSession::Frame(frame.clone()), 1, bytes, limits)
    }

    /// Queues one frame past the mailbox's bound (an overloaded room's member, while
    /// publishes are refused), unless that would hold more than twice the byte limit.
    pub(super) fn force_frame(&self, frame: &ByteString, limits: Limits) -> bool {
        let bytes = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        if self.bytes.load(Relaxed).saturating_add(bytes) > limits.bytes.saturating_mul(2) {
            return false;
        }
        self.frames.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        self.recipient.do_send(ToSession::Frame(frame.clone()));
        true
    }

    /// Queues a control message (pulse, close) whatever the limits: it must get through.
    pub(super) fn push_control(&self, message: ToSession) {
        self.recipient.do_send(message);
    }

    /// The session handed `frames` frames weighing `bytes` to its connection.
    pub fn taken(&self, frames: usize, bytes: usize) {
        let frames = u32::try_from(frames).unwrap_or(u32::MAX);
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.frames.fetch_sub(frames, Relaxed);
        self.bytes.fetch_sub(bytes, Relaxed);
        self.taken.fetch_add(frames, Relaxed);
    }

    /// Whether more than an eighth of what `limits` allow is waiting: the client is
    /// behind (a slow consumer is closed only when its queue is full).
    pub(super) fn behind(&self, limits: Limits) -> bool {
        self.frames.load(Relaxed) > limits.frames / 8 || self.bytes.load(Relaxed) > limits.bytes / 8
    }

    /// The hub's progress check: how many checks in a row (this one included) found the
    /// session behind without having taken a frame since the last (0 when it moved).
    pub(super) fn stalled_checks(&self, limits: Limits) -> u32 {
        const TAKEN: u32 = (1 << 28) - 1;
        let taken = self.taken.load(Relaxed) & TAKEN;
        let watch = self.watch.load(Relaxed);
        let stalled = if watch & TAKEN == taken && self.behind(limits) {
            ((watch >> 28) + 1).min(15)
        } else {
            0
        };
        self.watch.store((stalled << 28) | taken, Relaxed);
        stalled
    }

    /// Frames and bytes waiting.
    pub fn queued(&self) -> (u32, u32) {
        (self.frames.load(Relaxed), self.bytes.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use actix::{Actor, AsyncContext, Context, Handler};

    use super::*;

    /// A session that is never started: what is queued for it stays queued.
    struct Parked;

    impl Actor for Parked {
        type Context = Context<Self>;
    }

    impl Handler<ToSession> for Parked {
        type Result = ();

        fn handle(&mut self, _: ToSession, _: &mut Context<Self>) {}
    }

    fn parked_outbox() -> (Outbox, Context<Parked>) {
        let mut ctx = Context::<Parked>::new();
        ctx.set_mailbox_capacity(64);
        let outbox = Outbox::new(ctx.address().recipient());
        (outbox, ctx)
    }

    const LIMITS: Limits = Limits {
        frames: 1000,
        bytes: 800,
    };

    fn frame(len: usize) -> ByteString {
        ByteString::from("x".repeat(len))
    }

    #[actix_rt::test]
    async fn what_waits_is_bounded_in_bytes_and_a_refusal_changes_nothing() {
        let (outbox, _ctx) = parked_outbox();
        for _ in 0..7 {
            outbox.push_frame(&frame(100), LIMITS).unwrap();
        }
        assert_eq!(outbox.queued(), (7, 700));
        assert_eq!(outbox.push_frame(&frame(101), LIMITS), Err(Refused::Full));
        assert_eq!(outbox.queued(), (7, 700), "a refused frame is not counted");
        outbox.push_frame(&frame(100), LIMITS).unwrap();
        assert_eq!(outbox.queued(), (8, 800), "exactly the limit is allowed");

        outbox.taken(3, 300);
        assert_eq!(outbox.queued(), (5, 500));
        outbox.push_frame(&frame(300), LIMITS).unwrap();
        assert_eq!(outbox.queued(), (6, 800));
    }

    #[actix_rt::test]
    async fn an_overloaded_rooms_frame_may_pass_the_bound_up_to_twice_the_bytes() {
        let (outbox, _ctx) = parked_outbox();
        for _ in 0..8 {
            outbox.push_frame(&frame(100), LIMITS).unwrap();
        }
        assert_eq!(outbox.push_frame(&frame(100), LIMITS), Err(Refused::Full));
        for _ in 0..8 {
            assert!(outbox.force_frame(&frame(100), LIMITS));
        }
        assert!(
            !outbox.force_frame(&frame(1), LIMITS),
            "never past twice the bytes"
        );
        assert_eq!(outbox.queued(), (16, 1600));
    }

    #[actix_rt::test]
    async fn behind_means_more_than_an_eighth_waiting_in_frames_or_bytes() {
        let (outbox, _ctx) = parked_outbox();
        outbox.push_frame(&frame(100), LIMITS).unwrap();
        assert!(!outbox.behind(LIMITS), "100 bytes is exactly an eighth");
        outbox.push_frame(&frame(1), LIMITS).unwrap();
        assert!(outbox.behind(LIMITS), "past an eighth of the bytes");
        outbox.taken(2, 101);
        assert!(!outbox.behind(LIMITS));

        let few_frames = Limits {
            frames: 16,
            bytes: u32::MAX,
        };
        for _ in 0..2 {
            outbox.push_frame(&frame(1), few_frames).unwrap();
        }
        assert!(!outbox.behind(few_frames), "2 of 16 frames is an eighth");
        outbox.push_frame(&frame(1), few_frames).unwrap();
        assert!(outbox.behind(few_frames), "3 of 16 frames is more");
    }

    #[actix_rt::test]
    async fn a_member_behind_that_takes_nothing_counts_stalled_checks_until_it_moves() {
        let (outbox, _ctx) = parked_outbox();
        assert_eq!(
            outbox.stalled_checks(LIMITS),
            0,
            "nothing waiting: not stalled"
        );
        for _ in 0..2 {
            outbox.push_frame(&frame(100), LIMITS).unwrap();
        }
        assert_eq!(
            outbox.stalled_checks(LIMITS),
            1,
            "behind, and nothing taken since"
        );
        assert_eq!(outbox.stalled_checks(LIMITS), 2);
        outbox.taken(1, 100);
        outbox.push_frame(&frame(100), LIMITS).unwrap();
        assert_eq!(
            outbox.stalled_checks(LIMITS),
            0,
            "it took a frame: progress"
        );
        for expected in 1..=15 {
            assert_eq!(outbox.stalled_checks(LIMITS), expected);
        }
        assert_eq!(outbox.stalled_checks(LIMITS), 15, "the count saturates");
        outbox.taken(2, 200);
        assert_eq!(outbox.stalled_checks(LIMITS), 0);
    }

    #[actix_rt::test]
    async fn a_gone_session_is_reported_closed_and_nothing_stays_counted() {
        let (outbox, ctx) = parked_outbox();
        drop(ctx);
        assert_eq!(outbox.push_frame(&frame(10), LIMITS), Err(Refused::Closed));
        assert_eq!(outbox.queued(), (0, 0));
    }
}
