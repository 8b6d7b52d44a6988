//! Hub fanout: how long until every member of a room has a message, as the room grows.
//!
//! The hub runs on its own arbiter as in the server; members are minimal actors on another
//! arbiter (as sessions live on the HTTP workers) that count what they receive. Messages go
//! out in chunks, each waited for until fully delivered, so no mailbox grows without bound
//! and the figure is end-to-end: one serialisation, one mailbox push per member, one
//! handling per member. `cargo bench --bench fanout`; the figures are in the README.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::{Actor, Addr, Arbiter, AsyncContext, Context, Handler};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard::{
    actors::hub::{Connect, GetStats, Hub, Join, Outbox, RoomMessage, ToSession},
    chat::{command::Post, Identity, SessionId},
    domain::RoomId,
};
use tokio::sync::Notify;

/// Room sizes measured.
const ROOM_SIZES: [usize; 3] = [100, 1_000, 10_000];
/// Messages in flight at once.
const CHUNK: u64 = 32;

/// Frames delivered so far, and a signal when a target count is reached.
#[derive(Default)]
struct Delivered {
    count: AtomicU64,
    target: AtomicU64,
    reached: Notify,
}

/// A member that counts every frame (and takes it off its outbox, as a session does).
struct Sink(Arc<Delivered>, Arc<Outbox>);

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<ToSession> for Sink {
    type Result = ();

    fn handle(&mut self, msg: ToSession, _ctx: &mut Self::Context) {
        if let ToSession::Frame(frame) = &msg {
            self.1.taken(1, frame.len());
        }
        let count = self.0.count.fetch_add(1, Ordering::AcqRel) + 1;
        if count == self.0.target.load(Ordering::Acquire) {
            self.0.reached.notify_one();
        }
    }
}

/// A hub (on its own arbiter) with one room of `members` sinks plus a sender. The members
/// are sessions of one user, so joining sends no presence events (which would cost
/// members² frames to set up); the relay path measured is the same.
async fn room_of(
    members: usize,
    arbiters: &(Arbiter, Arbiter),
    room: &RoomId,
    delivered: &Arc<Delivered>,
) -> (Addr<Hub>, SessionId) {
    let hub = Hub::start_in_arbiter(&arbiters.0.handle(), |_| Hub::new(usize::MAX));
    let sender = SessionId::new();
    for i in 0..=members {
        let session = if i == 0 { sender } else { SessionId::new() };
        let delivered = delivered.clone();
        let (outbox_tx, outbox_rx) = std::sync::mpsc::channel();
        Sink::start_in_arbiter(&arbiters.1.handle(), move |ctx| {
            ctx.set_mailbox_capacity(4 * CHUNK as usize);
            let outbox = Arc::new(Outbox::new(ctx.address().recipient()));
            let _ = outbox_tx.send(outbox.clone());
            Sink(delivered, outbox)
        });
        let outbox = outbox_rx.recv().expect("the sink starts");
        hub.send(Connect {
            session,
            identity: Identity::user(if i == 0 { "sender" } else { "member" }, false),
            addr: outbox,
        })
        .await
        .unwrap()
        .unwrap();
        hub.do_send(Join {
            session,
            room: room.clone(),
            since: None,
        });
    }
    hub.send(GetStats).await.unwrap();
    (hub, sender)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_fanout");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    let system = actix_rt::System::new();
    let arbiters = system.block_on(async { (Arbiter::new(), Arbiter::new()) });
    let room = RoomId::parse("bench").unwrap();
    let content = "x".repeat(100);

    for members in ROOM_SIZES {
        let delivered = Arc::new(Delivered::default());
        let (hub, sender) = system.block_on(room_of(members, &arbiters, &room, &delivered));
        // Setting up delivered a confirmation per join and one presence event (the
        // member user's arrival, to the sender).
        let mut expected = members as u64 + 2;
        let mut wait_for_all = |count: u64| {
            expected += count * (members as u64 + 1); // each member's frame + the sender's ack
            delivered.target.store(expected, Ordering::Release);
            if delivered.count.load(Ordering::Acquire) < expected {
                system.block_on(delivered.reached.notified());
            }
        };
        wait_for_all(0);
        group.throughput(Throughput::Elements(members as u64));
        group.bench_with_input(
            BenchmarkId::new("room_message", members),
            &members,
            |b, _| {
                b.iter_custom(|iterations| {
                    let started = Instant::now();
                    let mut left = iterations;
                    while left > 0 {
                        let chunk = left.min(CHUNK);
                        for _ in 0..chunk {
                            hub.do_send(RoomMessage {
                                sent: std::time::Instant::now(),
                                session: sender,
                                post: Post {
                                    kind: "message".into(),
                                    room: room.clone(),
                                    content: content.clone(),
                                    metadata: None,
                                },
                            });
                        }
                        wait_for_all(chunk);
                        left -= chunk;
                    }
                    started.elapsed()
                });
            },
        );
        let stats = system.block_on(hub.send(GetStats)).unwrap();
        assert_eq!(stats.slow_consumer_disconnects, 0, "a member fell behind");
    }
    group.finish();
    arbiters.0.stop();
    arbiters.1.stop();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
