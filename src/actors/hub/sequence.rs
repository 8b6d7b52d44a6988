//! Room numbering that never hands out an offset twice, not even across a crash.
//!
//! A room's numbering opens on its first join: one statement reserves the next
//! [`FIRST_RESERVATION`] offsets in the database (`rooms.reserved_offset`) and the hub
//! numbers messages from that range without asking again. When half of the range is used,
//! the next one is reserved in the background; a room that runs out before it arrives gets
//! its messages held (in order) until it does, and its later reservations double. When the
//! room has had no member for `history.room_idle`, or the server stops cleanly, the unused
//! rest of the range is handed back, so offsets continue without a gap. After a crash the
//! rest is simply skipped: offsets jump, and a client's `since_offset` from before the jump
//! is answered `recovered: false` — but no offset ever names two messages.
//!
//! The hub runs these statements itself, at most [`MAX_STATEMENTS`] at a time (never
//! through the history writer, so a reservation never waits behind a batch), and keeps
//! numbering for at most [`MAX_IDLE_ROOMS`] rooms without members: what a guest can make
//! the server remember is bounded. A hub without a database (benchmarks) numbers in memory.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use tokio::sync::oneshot;

use super::{Hub, Join};
use crate::{
    actors::broker::{
        rooms::{OpenRoom, RoomPosition},
        Broker, SubscribeRoomNow,
    },
    chat::{command::Post, SessionId},
    db::{Database, DbError, Reservation},
    domain::RoomId,
};

/// Opens a room's numbering in cluster mode: subscribes to its channel first (so no
/// later message is missed), then reads where Redis stands (creating the room's state,
/// continuing after the database's highest offset, when Redis has none).
async fn cluster_open(
    db: Database,
    broker: actix::Addr<Broker>,
    room: RoomId,
) -> Result<RoomPosition, DbError> {
    let unavailable = |e: String| DbError::Unavailable(format!("cluster: {e}"));
    tokio::time::timeout(STATEMENT_TIMEOUT, async {
        broker
            .send(SubscribeRoomNow(room.clone()))
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let seed = db.room_offset_floor(&room).await?;
        broker
            .send(OpenRoom { room, seed })
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|e| unavailable(e.to_string()))
    })
    .await
    .unwrap_or_else(|_| Err(unavailable("opening the room timed out".into())))
}

/// Offsets reserved when a room's numbering opens.
pub const FIRST_RESERVATION: u64 = 1024;
/// The largest reservation; rooms that keep running out get ever larger ones up to this.
const MAX_RESERVATION: u64 = 1 << 20;
/// Rooms without members whose numbering is kept, at most (the longest idle go first).
pub const MAX_IDLE_ROOMS: usize = 10_000;
/// Numbering statements running at once, at most.
const MAX_STATEMENTS: usize = 2;
/// Messages one room holds while waiting for its next reservation, at most.
const MAX_HELD: usize = 10_000;
/// A reservation that takes longer counts as failed (its joins and messages are told).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reserves `count` offsets of `room`, bounded by [`STATEMENT_TIMEOUT`].
async fn reserve(db: Database, room: RoomId, count: u64) -> Result<Reservation, DbError> {
    tokio::time::timeout(STATEMENT_TIMEOUT, db.reserve_offsets(&room, count))
        .await
        .unwrap_or_else(|_| {
            Err(DbError::Unavailable(format!(
                "reserving offsets took longer than {STATEMENT_TIMEOUT:?}"
            )))
        })
}

/// One room's numbering.
pub(super) struct Sequence {
    /// The last offset handed out.
    last: u64,
    /// The end of the range in use.
    end: u64,
    /// The next range, once reserved.
    spare: Option<Reservation>,
    /// The lowest offset the numbering may be handed back to: below it, offsets may have
    /// been reserved by someone else between our ranges.
    floor: u64,
    /// Offsets asked for by the next reservation.
    chunk: u64,
    /// A reservation statement is under way.
    extending: bool,
    /// Since when the room has had no member.
    idle_since: Option<Instant>,
    /// Messages waiting for the next range, oldest first.
    pub(super) held: VecDeque<(SessionId, Post)>,
    /// In cluster mode: the room's epoch in Redis.
    pub(super) epoch: Option<String>,
}

impl Sequence {
    fn opened(range: Reservation) -> Self {
        Self {
            last: range.after,
            end: range.end,
            spare: None,
            floor: range.after,
            chunk: FIRST_RESERVATION,
            extending: false,
            idle_since: None,
            held: VecDeque::new(),
            epoch: None,
        }
    }

    /// Numbering in memory only, for a hub without a database.
    fn volatile() -> Self {
        Self::opened(Reservation {
            after: 0,
            end: u64::MAX,
        })
    }

    /// The last offset handed out (0 before the room's first message).
    pub(super) fn last(&self) -> u64 {
        self.last
    }

    /// In cluster mode: `offset` was delivered here (offsets come from Redis).
    pub(super) fn delivered(&mut self, offset: u64) {
        self.last = self.last.max(offset);
    }

    /// The next offset, or `None` while the reserved ranges are used up.
    fn next(&mut self) -> Option<u64> {
        if self.last >= self.end {
            let spare = self.spare.take()?;
            if spare.after != self.end {
                self.floor = spare.after;
            }
            self.last = spare.after;
            self.end = spare.end;
        }
        self.last += 1;
        Some(self.last)
    }

    /// Whether the next range should be reserved now: half of this one is used.
    fn wants_more(&self) -> bool {
        !self.extending && self.spare.is_none() && self.end - self.last <= self.chunk / 2
    }

    /// What to hand back: numbering continues after the returned offset, and the range
    /// reserved in the database ends at the second.
    fn hand_back(&self) -> (u64, u64) {
        match self.spare {
            // Someone else's range lies between ours: only the spare can be handed back.
            Some(spare) if spare.after != self.end => (spare.after, spare.end),
            Some(spare) => (self.last.max(self.floor), spare.end),
            None => (self.last.max(self.floor), self.end),
        }
    }
}

/// A numbering statement.
enum Statement {
    /// Reserve a room's first range, then let its waiting joins in.
    Open(RoomId),
    /// Reserve a room's next range.
    Extend(RoomId, u64),
    /// Hand back unused offsets: (room, used up to, reserved up to).
    Return(Vec<(RoomId, u64, u64)>),
}

/// The hub's numbering state.
pub(super) struct Numbering {
    /// Where reservations are made; `None`: in memory only.
    db: Option<Database>,
    /// Numbering of rooms with members, and of idle ones for a while.
    pub(super) rooms: HashMap<RoomId, Sequence>,
    /// Rooms whose numbering is being opened, with the joins waiting for it.
    opening: HashMap<RoomId, Vec<Join>>,
    /// Rooms that lost their last member, oldest first (stale entries are skipped).
    idle: VecDeque<(RoomId, Instant)>,
    /// Idle rooms (with `idle_since` set).
    idle_count: usize,
    /// Statements waiting for a free slot.
    queue: VecDeque<Statement>,
    /// Statements running.
    running: usize,
    /// How long a room without members keeps its numbering.
    room_idle: Duration,
    /// Told once every statement has finished (a clean stop waits for the hand-backs).
    drained: Vec<oneshot::Sender<()>>,
    /// A clean stop is under way: numbering whose next range is being reserved is handed
    /// back once the range arrives.
    draining: bool,
    /// In cluster mode: Redis numbers the rooms (through the broker); a room's numbering
    /// here only follows what was delivered, and is dropped with its last member.
    pub(super) cluster: Option<actix::Addr<Broker>>,
}

impl Numbering {
    /// In memory only (no database).
    pub(super) fn volatile() -> Self {
        Self {
            db: None,
            rooms: HashMap::new(),
            opening: HashMap::new(),
            idle: VecDeque::new(),
            idle_count: 0,
            queue: VecDeque::new(),
            running: 0,
            room_idle: Duration::from_secs(60),
            drained: Vec::new(),
            draining: false,
            cluster: None,
        }
    }

    /// Reserving offsets in `db`; rooms without members keep their numbering `room_idle`.
    pub(super) fn durable(db: Database, room_idle: Duration) -> Self {
        Self {
            db: Some(db),
            room_idle,
            ..Self::volatile()
        }
    }

    /// How often idle rooms are looked at.
    pub(super) fn sweep_every(&self) -> Duration {
        (self.room_idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(15))
    }

    /// Rooms whose numbering is kept.
    pub(super) fn len(&self) -> usize {
        self.rooms.len()
    }
}

impl Hub {
    /// The last offset handed out in `room` (0 before its first message).
    pub(super) fn top(&self, room: &RoomId) -> u64 {
        self.numbering.rooms.get(room).map_or(0, Sequence::last)
    }

    /// Lets `join` in at once when its room's numbering is open; otherwise holds it until
    /// the numbering opens (`false`).
    pub(super) fn numbering_ready(&mut self, join: &Join) -> bool {
        let numbering = &mut self.numbering;
        if let Some(sequence) = numbering.rooms.get_mut(&join.room) {
            if sequence.idle_since.take().is_some() {
                numbering.idle_count -= 1;
            }
            return true;
        }
        if numbering.db.is_none() {
            numbering
                .rooms
                .insert(join.room.clone(), Sequence::volatile());
            return true;
        }
        let waiting = numbering.opening.entry(join.room.clone()).or_default();
        waiting.push(join.clone());
        if waiting.len() == 1 {
            numbering
                .queue
                .push_back(Statement::Open(join.room.clone()));
        }
        false
    }

    /// Numbers `post`, or holds it until the room's next range arrives (`None`). One
    /// lookup on the way of every message; the next range is asked for when due.
    pub(super) fn number(&mut self, session: SessionId, post: Post) -> Option<(u64, Post)> {
        let Numbering {
            db, rooms, queue, ..
        } = &mut self.numbering;
        let Some(sequence) = rooms.get_mut(&post.room) else {
            // Cannot happen: a room with members has numbering. Refuse rather than guess.
            let room = post.room;
            self.error(session, format!("room `{room}` is not open; join it again"));
            return None;
        };
        let offset = if sequence.held.is_empty() {
            sequence.next()
        } else {
            None
        };
        if offset.is_none() {
            if sequence.held.len() >= MAX_HELD {
                let room = post.room;
                self.error(
                    session,
                    format!("room `{room}` is busy; the message was not relayed, send it again"),
                );
                return None;
            }
            if sequence.held.is_empty() {
                // Ran out before the next range arrived: ask for more next time.
                sequence.chunk = (sequence.chunk * 2).min(MAX_RESERVATION);
            }
        }
        if db.is_some() && sequence.wants_more() {
            sequence.extending = true;
            queue.push_back(Statement::Extend(post.room.clone(), sequence.chunk));
        }
        match offset {
            Some(offset) => Some((offset, post)),
            None => {
                sequence.held.push_back((session, post));
                None
            }
        }
    }

    /// The room lost its last member: its numbering is kept for `room_idle`.
    pub(super) fn went_idle(&mut self, room: &RoomId) {
        let numbering = &mut self.numbering;
        if numbering.cluster.is_some() {
            // Unsubscribed: what this node knew of the room goes stale. Opened again on
            // the next join.
            numbering.rooms.remove(room);
            return;
        }
        let Some(sequence) = numbering.rooms.get_mut(room) else {
            return;
        };
        if sequence.idle_since.is_some() {
            return;
        }
        let now = Instant::now();
        sequence.idle_since = Some(now);
        numbering.idle_count += 1;
        numbering.idle.push_back((room.clone(), now));
        if numbering.idle_count > MAX_IDLE_ROOMS {
            self.forget_idle(|_| true, 1);
        }
    }

    /// Hands back the numbering of up to `at_most` idle rooms, longest idle first, while
    /// `expired(idle_since)` holds.
    fn forget_idle(&mut self, expired: impl Fn(Instant) -> bool, at_most: usize) {
        let numbering = &mut self.numbering;
        let mut returned = Vec::new();
        while returned.len() < at_most {
            let Some((room, since)) = numbering.idle.front().cloned() else {
                break;
            };
            let current = numbering.rooms.get(&room).and_then(|s| s.idle_since);
            if current != Some(since) {
                numbering.idle.pop_front(); // rejoined (or forgotten) since
                continue;
            }
            if !expired(since) {
                break;
            }
            numbering.idle.pop_front();
            numbering.idle_count -= 1;
            if let Some(sequence) = numbering.rooms.remove(&room) {
                if !sequence.extending {
                    let (used, end) = sequence.hand_back();
                    returned.push((room, used, end));
                }
                // (An extension under way reserves more; that range is simply skipped.)
            }
        }
        if numbering.db.is_some() && numbering.cluster.is_none() && !returned.is_empty() {
            numbering.queue.push_back(Statement::Return(returned));
        }
        if numbering.rooms.capacity() > 64 && numbering.rooms.capacity() > 4 * numbering.rooms.len()
        {
            numbering.rooms.shrink_to_fit();
            numbering.idle.shrink_to_fit();
        }
    }

    /// Forgets rooms idle for longer than `room_idle`.
    pub(super) fn sweep(&mut self, ctx: &mut Context<Self>) {
        let room_idle = self.numbering.room_idle;
        let now = Instant::now();
        self.forget_idle(|since| now.duration_since(since) >= room_idle, usize::MAX);
        self.run_statements(ctx);
    }

    /// Hands back every room's unused offsets (a clean stop); `done` is told when every
    /// statement has finished.
    pub(super) fn return_all(&mut self, ctx: &mut Context<Self>, done: oneshot::Sender<()>) {
        let numbering = &mut self.numbering;
        numbering.draining = true;
        let rooms: Vec<RoomId> = numbering
            .rooms
            .iter()
            .filter(|(_, sequence)| !sequence.extending)
            .map(|(room, _)| room.clone())
            .collect();
        let returned: Vec<_> = rooms
            .into_iter()
            .filter_map(|room| {
                let (used, end) = numbering.rooms.remove(&room)?.hand_back();
                Some((room, used, end))
            })
            .collect();
        numbering.idle.clear();
        numbering.idle_count = 0;
        if numbering.db.is_some() && numbering.cluster.is_none() && !returned.is_empty() {
            numbering.queue.push_back(Statement::Return(returned));
        }
        numbering.drained.push(done);
        self.run_statements(ctx);
        self.tell_drained();
    }

    fn tell_drained(&mut self) {
        let numbering = &mut self.numbering;
        if numbering.queue.is_empty() && numbering.running == 0 {
            for waiter in numbering.drained.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Starts queued statements while fewer than [`MAX_STATEMENTS`] run.
    pub(super) fn run_statements(&mut self, ctx: &mut Context<Self>) {
        let Some(db) = self.numbering.db.clone() else {
            self.numbering.queue.clear();
            return;
        };
        while self.numbering.running < MAX_STATEMENTS {
            let Some(statement) = self.numbering.queue.pop_front() else {
                break;
            };
            self.numbering.running += 1;
            let db = db.clone();
            match statement {
                Statement::Open(room) => match self.numbering.cluster.clone() {
                    Some(broker) => {
                        let opening = cluster_open(db, broker, room.clone());
                        ctx.spawn(opening.into_actor(self).map(move |result, hub, ctx| {
                            hub.numbering.running -= 1;
                            let (result, epoch) = match result {
                                Ok(position) => (
                                    Ok(Reservation {
                                        after: position.offset,
                                        end: u64::MAX,
                                    }),
                                    Some(position.epoch),
                                ),
                                Err(error) => (Err(error), None),
                            };
                            hub.opened(room, result, epoch, ctx);
                            hub.after_statement(ctx);
                        }));
                    }
                    None => {
                        let reserving = reserve(db, room.clone(), FIRST_RESERVATION);
                        ctx.spawn(reserving.into_actor(self).map(move |result, hub, ctx| {
                            hub.numbering.running -= 1;
                            hub.opened(room, result, None, ctx);
                            hub.after_statement(ctx);
                        }));
                    }
                },
                Statement::Extend(room, chunk) => {
                    let reserving = reserve(db, room.clone(), chunk);
                    ctx.spawn(reserving.into_actor(self).map(move |result, hub, ctx| {
                        hub.numbering.running -= 1;
                        hub.extended(&room, result, ctx);
                        hub.after_statement(ctx);
                    }));
                }
                Statement::Return(rooms) => {
                    let count = rooms.len();
                    let give_back = async move {
                        let mut failed = None;
                        for (room, used, end) in &rooms {
                            if let Err(error) = db.return_offsets(room, *used, *end).await {
                                failed = Some(error);
                            }
                        }
                        failed
                    };
                    ctx.spawn(give_back.into_actor(self).map(move |failed, hub, ctx| {
                        hub.numbering.running -= 1;
                        if let Some(error) = failed {
                            // Harmless: the unused offsets are skipped, never reused.
                            tracing::warn!(%error, rooms = count, "could not hand back room offsets");
                        }
                        hub.after_statement(ctx);
                    }));
                }
            }
        }
    }

    fn after_statement(&mut self, ctx: &mut Context<Self>) {
        self.settle();
        self.run_statements(ctx);
        self.tell_drained();
    }

    /// A room's numbering opened (or could not): its waiting joins go ahead (or are told).
    fn opened(
        &mut self,
        room: RoomId,
        result: Result<Reservation, DbError>,
        epoch: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let joins = self.numbering.opening.remove(&room).unwrap_or_default();
        match result {
            Ok(range) => {
                let mut sequence = Sequence::opened(range);
                sequence.epoch = epoch;
                self.numbering.rooms.insert(room.clone(), sequence);
                for join in joins {
                    let session = join.session;
                    self.join_now(join, ctx);
                    self.resume(session, ctx);
                }
                if !self.rooms.contains_key(&room) {
                    // Everyone who asked left meanwhile.
                    self.went_idle(&room);
                }
            }
            Err(error) => {
                tracing::warn!(%error, %room, "could not open a room's numbering");
                for join in joins {
                    self.error(
                        join.session,
                        format!("cannot join `{room}` right now ({error}); try again"),
                    );
                    self.resume(join.session, ctx);
                }
            }
        }
    }

    /// A room's next range arrived (or could not be reserved): held messages go ahead (or
    /// are refused, each sender told).
    fn extended(
        &mut self,
        room: &RoomId,
        result: Result<Reservation, DbError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(sequence) = self.numbering.rooms.get_mut(room) else {
            return; // forgotten meanwhile; the range is skipped
        };
        sequence.extending = false;
        let held = std::mem::take(&mut sequence.held);
        match result {
            Ok(range) => {
                sequence.spare = Some(range);
                for (session, post) in held {
                    self.post(session, post, None, ctx);
                }
                if self.numbering.draining {
                    if let Some(sequence) = self.numbering.rooms.remove(room) {
                        let (used, end) = sequence.hand_back();
                        let returned = vec![(room.clone(), used, end)];
                        self.numbering.queue.push_back(Statement::Return(returned));
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, %room, "could not reserve more offsets");
                for (session, _) in held {
                    self.error(
                        session,
                        format!("message not relayed: room `{room}` could not be numbered ({error}); send it again"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(after: u64, end: u64) -> Reservation {
        Reservation { after, end }
    }

    #[test]
    fn offsets_come_from_the_reserved_range_and_more_is_asked_for_at_half() {
        let mut sequence = Sequence::opened(range(40, 40 + FIRST_RESERVATION));
        assert_eq!(sequence.last(), 40);
        let half = FIRST_RESERVATION / 2;
        for expected in 41..41 + half - 1 {
            assert_eq!(sequence.next(), Some(expected));
            assert!(!sequence.wants_more(), "at {expected}");
        }
        assert_eq!(sequence.next(), Some(40 + half));
        assert!(sequence.wants_more(), "half used");
        sequence.extending = true;
        assert!(!sequence.wants_more(), "asked once");
        while sequence.last < sequence.end {
            sequence.next();
        }
        assert_eq!(
            sequence.next(),
            None,
            "used up until the next range arrives"
        );
        sequence.extending = false;
        sequence.spare = Some(range(40 + FIRST_RESERVATION, 40 + 2 * FIRST_RESERVATION));
        assert_eq!(sequence.next(), Some(41 + FIRST_RESERVATION), "contiguous");
        assert_eq!(
            sequence.hand_back(),
            (41 + FIRST_RESERVATION, 40 + 2 * FIRST_RESERVATION)
        );
    }

    #[test]
    fn a_range_reserved_after_someone_elses_is_never_handed_back_below_it() {
        let mut sequence = Sequence::opened(range(0, 10));
        for _ in 0..10 {
            sequence.next();
        }
        // Another server reserved 10..=20 in between; ours is 20..=30.
        sequence.spare = Some(range(20, 30));
        assert_eq!(
            sequence.hand_back(),
            (20, 30),
            "unused spare: back to its start"
        );
        assert_eq!(sequence.next(), Some(21));
        assert_eq!(sequence.hand_back(), (21, 30));
    }

    #[test]
    fn an_unused_new_room_hands_back_to_zero() {
        let sequence = Sequence::opened(range(0, FIRST_RESERVATION));
        assert_eq!(sequence.hand_back(), (0, FIRST_RESERVATION));
    }
}
