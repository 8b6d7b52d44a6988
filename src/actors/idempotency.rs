//! Idempotent publishes: the server API's `Publish` with an idempotency key answers a
//! retry with the first call's result instead of relaying the message again. This actor
//! remembers, per key, a publish under way (later callers wait for it) or its result, for
//! [`WINDOW`]; it holds at most [`MAX_KEYS`] keys (the oldest go first).

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use actix::prelude::*;
use tokio::sync::oneshot;

/// How long a key's result is remembered.
pub const WINDOW: Duration = Duration::from_secs(600);

/// Keys remembered at most.
pub const MAX_KEYS: usize = 100_000;

/// A publish's result: the offset and the room's epoch.
pub type Published = (u64, String);

enum Entry {
    /// Under way; these callers wait for its result.
    Pending(Vec<oneshot::Sender<Published>>),
    /// Done, with this result.
    Done(Published),
}

/// The actor. One per node (keys are per node: a retry that reaches another node of a
/// cluster is not recognised — documented).
#[derive(Default)]
pub struct Idempotency {
    entries: HashMap<String, Entry>,
    /// Keys in the order they were claimed, for expiry and the cap.
    order: VecDeque<(Instant, String)>,
}

impl Actor for Idempotency {
    type Context = Context<Self>;
}

impl Idempotency {
    fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.order.front() {
            let expired = now.duration_since(*at) > WINDOW || self.order.len() > MAX_KEYS;
            if !expired {
                break;
            }
            if matches!(self.entries.get(key), Some(Entry::Done(..))) {
                self.entries.remove(key);
            }
            self.order.pop_front();
        }
    }
}

/// Claim `key`: `Ok(())` — go ahead and [`Remember`] the result; `Err(result)` — the
/// first call's result (awaited if it is still under way; an error if it failed).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), oneshot::Receiver<Published>>")]
pub struct Claim(pub String);

impl Handler<Claim> for Idempotency {
    type Result = Result<(), oneshot::Receiver<Published>>;

    fn handle(&mut self, Claim(key): Claim, _ctx: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        self.expire(now);
        match self.entries.get_mut(&key) {
            Some(Entry::Pending(waiters)) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                Err(rx)
            }
            Some(Entry::Done(result)) => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(result.clone());
                Err(rx)
            }
            None => {
                self.entries.insert(key.clone(), Entry::Pending(Vec::new()));
                self.order.push_back((now, key));
                Ok(())
            }
        }
    }
}

/// The claimed publish finished: its result (`None`: it failed, and the key is free
/// again; the callers waiting get an error and may retry).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Remember {
    /// The claimed key.
    pub key: String,
    /// What the publish answered.
    pub result: Option<Published>,
}

impl Handler<Remember> for Idempotency {
    type Result = ();

    fn handle(&mut self, msg: Remember, _ctx: &mut Self::Context) {
        let waiters = match self.entries.remove(&msg.key) {
            Some(Entry::Pending(waiters)) => waiters,
            _ => Vec::new(),
        };
        if let Some(result) = msg.result {
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
            self.entries.insert(msg.key, Entry::Done(result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_retry_gets_the_first_result_and_a_failure_frees_the_key() {
        let keys = Idempotency::default().start();
        assert!(keys.send(Claim("k".into())).await.unwrap().is_ok());
        let waiting = keys.send(Claim("k".into())).await.unwrap().unwrap_err();
        keys.send(Remember {
            key: "k".into(),
            result: Some((7, "e".into())),
        })
        .await
        .unwrap();
        assert_eq!(waiting.await.unwrap(), (7, "e".to_owned()));
        let again = keys.send(Claim("k".into())).await.unwrap().unwrap_err();
        assert_eq!(again.await.unwrap(), (7, "e".to_owned()));

        assert!(keys.send(Claim("f".into())).await.unwrap().is_ok());
        let waiting = keys.send(Claim("f".into())).await.unwrap().unwrap_err();
        keys.send(Remember {
            key: "f".into(),
            result: None,
        })
        .await
        .unwrap();
        assert!(waiting.await.is_err(), "told the first one failed");
        assert!(
            keys.send(Claim("f".into())).await.unwrap().is_ok(),
            "free again"
        );
    }
}
