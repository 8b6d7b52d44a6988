//! Leaving the cluster on a graceful stop: once the hub has closed its sessions, the
//! presence changes they caused are let finish, whatever presence is left of this node
//! is taken out (with leave events, as for a dead node), its session places are given
//! back, and it is struck from the node set — the other nodes see the leave events at
//! once, not after the dead-node timeout.

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{presence, Broker, ClusterUnavailable};

/// Leave the cluster (the server is stopping). Answers how many users' presence was
/// left to take out (0 when every session's leave went out by itself).
#[derive(Debug, Message)]
#[rtype(result = "Result<usize, ClusterUnavailable>")]
pub struct LeaveCluster;

impl Broker {
    /// A presence change or place release started: [`LeaveCluster`] waits for it.
    pub(super) fn begin_change(&mut self) {
        self.in_flight += 1;
    }

    /// A change started with [`begin_change`](Self::begin_change) finished.
    pub(super) fn end_change(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            for waiter in self.settled.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Handler<LeaveCluster> for Broker {
    type Result = ResponseFuture<Result<usize, ClusterUnavailable>>;

    fn handle(&mut self, _msg: LeaveCluster, _ctx: &mut Self::Context) -> Self::Result {
        self.leaving = true;
        let settled = if self.in_flight == 0 {
            None
        } else {
            let (done, settled) = oneshot::channel();
            self.settled.push(done);
            Some(settled)
        };
        let (redis, prefix) = (self.commands.clone(), self.settings.prefix.clone());
        let (node, limit) = (self.stats.node.clone(), self.presence_limit);
        Box::pin(async move {
            if let Some(settled) = settled {
                let _ = settled.await;
            }
            let leave = |room: &crate::domain::RoomId, user: &str, name: Option<&str>| {
                crate::actors::hub::presence_event(room, "leave", user, name)
                    .encode()
                    .to_string()
            };
            let left =
                presence::reap(redis.clone(), prefix.clone(), node.clone(), limit, leave).await?;
            presence::reap_sessions(redis.clone(), &prefix, &node).await?;
            let mut redis = redis;
            let _: i64 = redis::cmd("ZREM")
                .arg(format!("{prefix}:nodes"))
                .arg(&node)
                .query_async(&mut redis)
                .await
                .map_err(|e| ClusterUnavailable(e.to_string()))?;
            let _: i64 = redis::cmd("DEL")
                .arg(format!("{prefix}:node:{node}:info"))
                .query_async(&mut redis)
                .await
                .map_err(|e| ClusterUnavailable(e.to_string()))?;
            Ok(left)
        })
    }
}
