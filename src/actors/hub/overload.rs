//! Overload: load shed at the door instead of at the subscribers.
//!
//! A *slow consumer* is one member behind while the room's others keep up: it is closed
//! (1008) when its queue is full, as ever. *Overload* is the server itself behind: more
//! than a tenth of a room's members are behind at once (their queues more than an eighth
//! full), or the hub's own mailbox is backing up (a message reaches the hub more than
//! `--ws-overload-lag`, [`LAG_HIGH`] by default, after its session sent it). Then closing members would turn an overload
//! into a reconnect storm; instead publishes are refused — the publisher gets an `error`
//! frame with `metadata.code: "overloaded"` and a `retry_after_ms`, no ack, and nothing is
//! relayed — until the queues have drained (a fiftieth or fewer of the members behind, the
//! hub's lag under a fifth of its limit). Members whose queue is full while their room is overloaded
//! get the frame all the same (their queue may briefly hold more than its bound: the
//! refusals stop it growing), so nothing is skipped. A member that is behind and has not
//! taken a single frame for `--ws-stall-timeout` does not read at all, overload or not: it
//! is closed as a slow consumer ([`Hub::check_progress`], once a second), so nobody can
//! stall a room by joining it and never reading.

use std::time::{Duration, Instant};

use bytestring::ByteString;
use serde_json::json;

use super::{Failure, Hub, Room};
use crate::{
    chat::{Frame, SessionId},
    domain::RoomId,
};

/// Rooms smaller than this are never "overloaded": their slow members are slow consumers.
pub const MIN_MEMBERS: usize = 8;
/// The default hub lag that starts refusing publishes everywhere (`--ws-overload-lag`);
/// they are taken again once the lag is under a fifth of it.
pub const LAG_HIGH: Duration = Duration::from_millis(100);
/// What publishers are told to wait.
pub const RETRY_AFTER: Duration = Duration::from_millis(200);
/// How often an overloaded room's members are counted again while publishes are refused.
const RECOUNT_EVERY: Duration = Duration::from_millis(5);
/// How often members' progress is checked.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// More than this share of a room behind is overload (not a few slow consumers).
fn overloaded(behind: usize, members: usize) -> bool {
    members >= MIN_MEMBERS && behind * 10 > members
}

/// At most this share behind, the room has drained.
fn drained(behind: usize, members: usize) -> bool {
    members < MIN_MEMBERS || behind * 50 <= members
}

/// Counts an overloaded room's members that are behind again; it is overloaded no more
/// once it has drained.
fn recount(room: &mut Room, limits: super::Limits, now: Instant) {
    room.load.behind = room.members.values().filter(|m| m.behind(limits)).count();
    room.load.counted = Some(now);
    if drained(room.load.behind, room.members.len()) {
        room.load.overloaded_since = None;
    }
}

/// A room's load, as its last fanout (or a recount) found it.
#[derive(Debug, Default)]
pub(super) struct Load {
    /// Members whose queue was more than an eighth full.
    behind: usize,
    /// Since when publishes to the room have been refused.
    overloaded_since: Option<Instant>,
    /// When `behind` was counted.
    counted: Option<Instant>,
}

impl Load {
    /// Whether the room is refusing publishes.
    pub(super) fn overloaded(&self) -> bool {
        self.overloaded_since.is_some()
    }
}

/// The hub's own lag, from the age of the messages it handles.
#[derive(Debug)]
pub(super) struct Lag {
    /// Publishes are refused everywhere.
    pub(super) lagging: bool,
    /// The age of the last publish handled.
    pub(super) last: Duration,
    /// The age that starts refusals.
    high: Duration,
    /// A publish was handled since the last progress check.
    observed: bool,
}

impl Default for Lag {
    fn default() -> Self {
        Self::new(LAG_HIGH)
    }
}

impl Lag {
    /// Refusals from a lag of `high`, until it is under a fifth of that.
    pub(super) fn new(high: Duration) -> Self {
        Self {
            lagging: false,
            last: Duration::ZERO,
            high,
            observed: false,
        }
    }

    /// Notes the age of a publish; answers whether the hub is too far behind to take it.
    fn observe(&mut self, age: Duration) -> bool {
        self.last = age;
        self.observed = true;
        self.lagging = if self.lagging {
            age > self.high / 5
        } else {
            age > self.high
        };
        self.lagging
    }

    /// At a progress check: with no publish since the last one there is no backlog to
    /// shed (the check itself ran), so the hub is not behind any more.
    fn check(&mut self) {
        if !self.observed {
            self.lagging = false;
        }
        self.observed = false;
    }
}

impl Hub {
    /// Whether a publish into `room_id`, sent `age` ago, may go ahead; if not, the
    /// publisher is told to retry later.
    pub(super) fn admit_publish(
        &mut self,
        session: SessionId,
        room_id: &RoomId,
        age: Duration,
    ) -> bool {
        let now = Instant::now();
        let mut overloaded = self.lag.observe(age);
        if !overloaded {
            overloaded = self.room_overloaded(room_id, now);
        }
        if overloaded {
            self.stats.publishes_refused += 1;
            let retry = RETRY_AFTER.as_millis() as u64;
            let refusal = Frame::error(format!(
                "the server is overloaded: message not relayed; retry in {retry} ms"
            ))
            .room(room_id.clone())
            .details(json!({ "code": "overloaded", "retry_after_ms": retry }));
            self.reply(session, &refusal);
        }
        !overloaded
    }

    /// Whether `room_id` refuses publishes now (recounting its members while it does).
    fn room_overloaded(&mut self, room_id: &RoomId, now: Instant) -> bool {
        let limits = self.limits;
        let Some(room) = self.rooms.get_mut(room_id) else {
            return false;
        };
        if room.load.overloaded_since.is_none() {
            return false;
        }
        let due = room
            .load
            .counted
            .is_none_or(|at| now.duration_since(at) >= RECOUNT_EVERY);
        if due {
            recount(room, limits, now);
        } else if drained(room.load.behind, room.members.len()) {
            room.load.overloaded_since = None;
        }
        room.load.overloaded()
    }

    /// Once a second: a member that is behind and has taken no frame for the stall
    /// timeout is a slow consumer, even in an overloaded room. Overloaded rooms are
    /// counted again (and the hub's lag forgotten when nobody published), so a room whose
    /// queues drained while nobody published does not stay marked overloaded.
    pub(super) fn check_progress(&mut self) {
        let limits = self.limits;
        self.lag.check();
        let now = Instant::now();
        for room in self.rooms.values_mut().filter(|r| r.load.overloaded()) {
            recount(room, limits, now);
        }
        let checks = (self.stall_timeout.as_millis() / PROGRESS_EVERY.as_millis()).clamp(1, 15);
        for (session, member) in &self.sessions {
            if u128::from(member.addr.stalled_checks(limits)) >= checks {
                self.failed.push((*session, Failure::Slow));
            }
        }
        self.settle();
    }

    /// Sends `frame` to every member of `room` except `except`, counting who is behind:
    /// when most are, the room is overloaded and a member with a full queue gets the frame
    /// anyway; otherwise a full queue is a slow consumer.
    pub(super) fn fanout_counted(
        room: &mut Room,
        except: Option<SessionId>,
        frame: &ByteString,
        limits: super::Limits,
        failed: &mut Vec<(SessionId, Failure)>,
    ) -> u64 {
        let mut sent = 0;
        let mut behind = 0;
        let mut full = Vec::new();
        for (session, outbox) in &room.members {
            if Some(*session) == except {
                continue;
            }
            match outbox.push_frame(frame, limits) {
                Ok(()) => {
                    sent += 1;
                    behind += usize::from(outbox.behind(limits));
                }
                Err(super::Refused::Full) => {
                    behind += 1;
                    full.push(*session);
                }
                Err(super::Refused::Closed) => failed.push((*session, Failure::Closed)),
            }
        }
        let members = room.members.len();
        room.load.behind = behind;
        room.load.counted = Some(Instant::now());
        if room.load.overloaded_since.is_none() && overloaded(behind, members) {
            room.load.overloaded_since = Some(Instant::now());
        }
        for session in full {
            let outbox = &room.members[&session];
            if room.load.overloaded() && outbox.force_frame(frame, limits) {
                sent += 1;
            } else {
                failed.push((session, Failure::Slow));
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_a_tenth_of_a_room_behind_is_overload() {
        assert!(!overloaded(10, 100));
        assert!(overloaded(11, 100));
        assert!(overloaded(1, 8), "one of eight is more than a tenth");
        assert!(!overloaded(0, 8));
    }

    #[test]
    fn small_rooms_have_slow_consumers_never_overload() {
        assert!(!overloaded(7, 7));
        assert!(drained(7, 7));
    }

    #[test]
    fn an_overloaded_room_drains_only_at_a_fiftieth_behind() {
        assert!(drained(2, 100));
        assert!(!drained(3, 100));
        assert!(drained(0, 8));
        assert!(!drained(1, 8));
        // Between the two thresholds a room keeps the state it is in.
        assert!(!overloaded(5, 100) && !drained(5, 100));
    }

    #[test]
    fn the_hubs_lag_refuses_above_the_high_mark_until_under_the_low_one() {
        let ms = Duration::from_millis;
        let mut lag = Lag::new(ms(50));
        assert!(!lag.observe(ms(40)), "under the high mark: taken");
        assert!(lag.observe(ms(51)), "past it: refused");
        assert!(lag.observe(ms(30)), "still above the low mark: refused");
        assert!(lag.observe(ms(11)));
        assert!(!lag.observe(ms(10)), "at the low mark: taken again");
        assert!(!lag.observe(ms(49)));
        assert_eq!(lag.last, ms(49));

        assert!(lag.observe(ms(60)));
        lag.check();
        assert!(
            lag.lagging,
            "a publish came since the last check: still behind"
        );
        lag.check();
        assert!(!lag.lagging, "nobody published since: no backlog to shed");
    }
}
