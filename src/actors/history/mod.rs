//! The history writer: stores relayed room messages in batches, off the delivery path.
//!
//! The hub hands each message over with `try_send` and never waits. Messages gather in
//! memory until a batch is full or the flush interval has passed, then one transaction
//! writes them. While a batch is being written the writer handles nothing else, so new
//! messages queue in its mailbox and form the next, larger batch: a slow database makes
//! batches bigger, never fanout slower. A failed write keeps its messages and is retried
//! after a pause; past `max_pending` waiting messages, new ones are dropped (and counted)
//! rather than letting memory grow without bound.
//!
//! One bad row must not wedge everything behind it. When a batch is refused, the writer
//! asks whether the database takes an empty transaction right now: if not, the database
//! is failing and the whole batch waits. If it does, the batch's data is at fault: the
//! batch is halved and each half written on its own, down to the single rows the
//! database refuses, which are dropped, counted (`rejected`) and logged as errors. (The
//! edges already refuse what is known to be unstorable, such as NUL in text.)
//!
//! Reads ([`Replay`], [`LastMessages`]) merge what is stored with what still waits in
//! memory, so a message is found from the moment it was relayed.

pub mod messages;

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

mod store;

use actix::{
    Actor, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, MessageResult,
    ResponseFuture, WrapFuture,
};
use chrono::Utc;

pub use messages::*;

use crate::{
    config::HistorySettings,
    db::{Database, DbError},
    domain::{StoredMessage, StoredPrivate},
};

/// Pause before a failed batch is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long after a refused row `/health` keeps warning about it.
const REJECTION_WARNS_FOR: Duration = Duration::from_secs(300);
/// Flush intervals the oldest waiting message may age before `/health` warns.
const BEHIND_AFTER_FLUSHES: u32 = 10;

/// Owns the messages waiting to be written and the retention schedule. Start one per server.
pub struct HistoryWriter {
    db: Database,
    settings: HistorySettings,
    pending: VecDeque<StoredMessage>,
    pending_private: Vec<StoredPrivate>,
    /// A flush is scheduled.
    armed: bool,
    /// No write before this, after a failure.
    backoff_until: Option<Instant>,
    pruning: bool,
    stats: HistoryStats,
    /// The last write's error, while writes fail.
    failing: Option<String>,
    /// When a row was last refused.
    last_rejected: Option<Instant>,
}

impl HistoryWriter {
    /// A writer storing into `db` under `settings`.
    pub fn new(db: Database, settings: HistorySettings) -> Self {
        Self {
            db,
            settings,
            pending: VecDeque::new(),
            pending_private: Vec::new(),
            armed: false,
            backoff_until: None,
            pruning: false,
            stats: HistoryStats::default(),
            failing: None,
            last_rejected: None,
        }
    }

    fn waiting(&self) -> usize {
        self.pending.len() + self.pending_private.len()
    }

    /// Writes a full batch now, or makes sure one is written within the flush interval.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.waiting() == 0 {
            return;
        }
        let backing_off = self.backoff_until.is_some_and(|t| Instant::now() < t);
        if self.waiting() >= self.settings.batch_size && !backing_off {
            self.write(ctx);
        } else if !self.armed {
            self.armed = true;
            let delay = match self.backoff_until {
                Some(until) => until.saturating_duration_since(Instant::now()),
                None => self.settings.flush_interval,
            };
            ctx.run_later(delay, |writer, ctx| {
                writer.armed = false;
                writer.write(ctx);
            });
        }
    }

    /// Writes one batch, holding every other message until the transaction ends.
    fn write(&mut self, ctx: &mut Context<Self>) {
        if self.waiting() == 0 {
            return;
        }
        let (batch, privates) = self.take(self.settings.batch_size);
        let db = self.db.clone();
        let written =
            store::store(db, batch, privates)
                .into_actor(self)
                .map(|outcome, writer, ctx| {
                    writer.count(&outcome);
                    match outcome.unwritten {
                        None => {
                            writer.backoff_until = None;
                            writer.failing = None;
                        }
                        Some(unwritten) => {
                            writer.stats.failed_writes += 1;
                            tracing::warn!(
                                error = %unwritten.error,
                                messages = unwritten.messages.len() + unwritten.privates.len(),
                                "history write failed; will retry"
                            );
                            writer.failing = Some(unwritten.error.to_string());
                            writer.backoff_until = Some(Instant::now() + RETRY_AFTER);
                            for message in unwritten.messages.into_iter().rev() {
                                writer.pending.push_front(message);
                            }
                            writer.pending_private.splice(0..0, unwritten.privates);
                            writer.enforce_bound();
                        }
                    }
                    writer.schedule(ctx);
                });
        ctx.wait(written);
    }

    /// Counts what a write stored and refused.
    fn count(&mut self, outcome: &store::Stored) {
        self.stats.written += outcome.written as u64;
        for rejected in &outcome.rejected {
            self.stats.rejected += 1;
            self.last_rejected = Some(Instant::now());
            tracing::error!(
                message = %rejected.id,
                error = %rejected.error,
                "the database refused a history row; it is dropped"
            );
        }
    }

    /// What `/health` should warn about, if anything.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(error) = &self.failing {
            problems.push(format!("writes are failing: {error}"));
        }
        let behind = self.pending.front().map(|oldest| {
            (Utc::now() - oldest.created_at)
                .to_std()
                .unwrap_or_default()
        });
        let allowed = self.settings.flush_interval * BEHIND_AFTER_FLUSHES;
        if let Some(behind) = behind.filter(|behind| *behind > allowed) {
            problems.push(format!(
                "the oldest waiting message is {} ms old",
                behind.as_millis()
            ));
        }
        if let Some(at) = self.last_rejected {
            if at.elapsed() < REJECTION_WARNS_FOR {
                problems.push(format!(
                    "a row was refused {} s ago ({} in all)",
                    at.elapsed().as_secs(),
                    self.stats.rejected
                ));
            }
        }
        problems
    }

    /// Takes up to `limit` waiting room messages, oldest first, and every waiting private one.
    fn take(&mut self, limit: usize) -> (Vec<StoredMessage>, Vec<StoredPrivate>) {
        let take = self.pending.len().min(limit);
        let batch = self.pending.drain(..take).collect();
        (batch, std::mem::take(&mut self.pending_private))
    }

    /// Drops the oldest waiting messages beyond `max_pending`.
    fn enforce_bound(&mut self) {
        while self.waiting() > self.settings.max_pending {
            if self.pending.pop_front().is_none() && self.pending_private.pop().is_none() {
                break;
            }
            self.stats.dropped += 1;
        }
    }

    fn prune(&mut self, ctx: &mut Context<Self>) {
        let (keep, max_age) = (self.settings.max_messages, self.settings.max_age);
        if self.pruning || (keep.is_none() && max_age.is_none()) {
            return;
        }
        self.pruning = true;
        let cutoff = max_age.and_then(|age| {
            chrono::Duration::from_std(age)
                .ok()
                .and_then(|age| Utc::now().checked_sub_signed(age))
        });
        let db = self.db.clone();
        ctx.spawn(
            async move { db.prune_history(keep, cutoff).await }
                .into_actor(self)
                .map(|result, writer, _| {
                    writer.pruning = false;
                    match result {
                        Ok(0) => {}
                        Ok(deleted) => {
                            writer.stats.pruned += deleted;
                            tracing::debug!(deleted, "history pruned");
                        }
                        Err(error) => tracing::warn!(%error, "history pruning failed"),
                    }
                }),
        );
    }

    /// Waiting messages of `room` in `after+1..=upto`, by offset.
    fn waiting_in(
        &self,
        room: &crate::domain::RoomId,
        after: u64,
        upto: u64,
    ) -> Vec<StoredMessage> {
        self.pending
            .iter()
            .filter(|m| &m.room == room && m.offset > after && m.offset <= upto)
            .cloned()
            .collect()
    }
}

/// Stored and waiting messages together, each offset once, oldest first.
fn merge(stored: Vec<StoredMessage>, waiting: Vec<StoredMessage>) -> Vec<StoredMessage> {
    let mut by_offset: BTreeMap<u64, StoredMessage> = BTreeMap::new();
    for message in stored.into_iter().chain(waiting) {
        by_offset.insert(message.offset, message);
    }
    by_offset.into_values().collect()
}

impl Actor for HistoryWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The hub's `try_send`s fail once this many messages queue while a batch is written.
        ctx.set_mailbox_capacity(self.settings.max_pending);
        ctx.run_interval(self.settings.prune_interval, Self::prune);
    }
}

impl Handler<Append> for HistoryWriter {
    type Result = ();

    fn handle(&mut self, Append(message): Append, ctx: &mut Self::Context) {
        self.pending.push_back(message);
        self.enforce_bound();
        self.schedule(ctx);
    }
}

impl Handler<AppendPrivate> for HistoryWriter {
    type Result = ();

    fn handle(&mut self, AppendPrivate(message): AppendPrivate, ctx: &mut Self::Context) {
        self.pending_private.push(message);
        self.enforce_bound();
        self.schedule(ctx);
    }
}

impl Handler<Replay> for HistoryWriter {
    type Result = ResponseFuture<Result<Vec<StoredMessage>, DbError>>;

    fn handle(&mut self, msg: Replay, _ctx: &mut Self::Context) -> Self::Result {
        // Everything up to `upto` was appended before this request (same mailbox), so it
        // is either waiting here now or stored by the time the query runs; a batch written
        // meanwhile shows up in both and is merged by offset.
        let waiting = self.waiting_in(&msg.room, msg.after, msg.upto);
        let db = self.db.clone();
        Box::pin(async move {
            let stored = db.history_range(&msg.room, msg.after, msg.upto).await?;
            Ok(merge(stored, waiting))
        })
    }
}

impl Handler<LastMessages> for HistoryWriter {
    type Result = ResponseFuture<Result<Vec<StoredMessage>, DbError>>;

    fn handle(&mut self, msg: LastMessages, _ctx: &mut Self::Context) -> Self::Result {
        let waiting = self.waiting_in(&msg.room, 0, msg.upto);
        let db = self.db.clone();
        Box::pin(async move {
            let stored = db.history_last(&msg.room, msg.upto, msg.limit).await?;
            let mut all = merge(stored, waiting);
            let excess = all.len().saturating_sub(msg.limit);
            all.drain(..excess);
            Ok(all)
        })
    }
}

impl Handler<Flush> for HistoryWriter {
    type Result = AtomicResponse<Self, Result<usize, DbError>>;

    fn handle(&mut self, _msg: Flush, _ctx: &mut Self::Context) -> Self::Result {
        let (batch, privates) = self.take(usize::MAX);
        let db = self.db.clone();
        AtomicResponse::new(Box::pin(
            store::store(db, batch, privates)
                .into_actor(self)
                .map(|outcome, writer, _| {
                    writer.count(&outcome);
                    match outcome.unwritten {
                        None => Ok(outcome.written),
                        Some(unwritten) => Err(unwritten.error),
                    }
                }),
        ))
    }
}

impl Handler<GetHistoryStats> for HistoryWriter {
    type Result = MessageResult<GetHistoryStats>;

    fn handle(&mut self, _msg: GetHistoryStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(HistoryStats {
            pending: self.waiting(),
            problems: self.problems(),
            ..self.stats.clone()
        })
    }
}
