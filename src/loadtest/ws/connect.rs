//! Opening one load connection: the upgrade, the welcome, the join (and whether the
//! server confirms joins), with errors in words.

use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{
    self,
    protocol::{frame::coding::CloseCode, WebSocketConfig},
    Message,
};

use super::Ws;

/// Longest wait for a welcome or a join confirmation.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first join waits to learn whether the server confirms joins.
const JOIN_PROBE: Duration = Duration::from_secs(2);

/// Added to a refusal that came from the server's rate limit.
const RATE_LIMIT_HINT: &str =
    " (the server's rate limit: raise it, e.g. `--rate-limit 1000000` on switchboard)";

/// Whether to wait for a join confirmation.
#[derive(Debug, Clone, Copy)]
pub(super) enum JoinWait {
    /// Wait briefly for a confirmation; a server that sends none is fine.
    Probe,
    /// The server confirms joins: wait for it.
    Confirmed,
    /// The server does not confirm joins.
    No,
}

/// Connects, waits for the welcome frame, joins `room`; answers whether the join was confirmed.
pub(super) async fn open(url: &str, room: &str, wait: JoinWait) -> anyhow::Result<(Ws, bool)> {
    // Small read buffers (the default is 128 KiB per connection) and no Nagle delay on
    // the publishers' small writes.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let (mut ws, _) = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
        .await
        .context("timed out connecting")?
        .map_err(describe)?;
    next_text(&mut ws, HANDSHAKE_TIMEOUT, |_| true)
        .await
        .context("no welcome frame")?;
    let join = json!({"type": "join", "room_id": room}).to_string();
    ws.send(Message::text(join)).await?;
    let is_confirmation = |v: &Value| v["type"] == "join" && v["room_id"] == room;
    let confirmed = match wait {
        JoinWait::No => false,
        JoinWait::Probe => next_text(&mut ws, JOIN_PROBE, is_confirmation)
            .await
            .is_ok(),
        JoinWait::Confirmed => {
            next_text(&mut ws, HANDSHAKE_TIMEOUT, is_confirmation)
                .await
                .context("the join was not confirmed")?;
            true
        }
    };
    Ok((ws, confirmed))
}

/// A connection error in words, with the HTTP status when the upgrade was refused.
fn describe(error: tungstenite::Error) -> anyhow::Error {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let hint = if status.as_u16() == 429 {
                RATE_LIMIT_HINT
            } else {
                ""
            };
            anyhow::anyhow!("the upgrade was refused with HTTP {status}{hint}")
        }
        other => anyhow::anyhow!("{other}"),
    }
}

/// The next text frame that `wanted` accepts, within `limit`.
async fn next_text(
    ws: &mut Ws,
    limit: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("timed out")?
            .context("the connection closed")??;
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if value["type"] == "error" {
                    bail!("the server answered with an error: {}", value["content"]);
                }
                if wanted(&value) {
                    return Ok(value);
                }
            }
            Message::Close(frame) => {
                // Switchboard refuses upgrades over its rate limit with 1013 (try again later).
                let limited = frame.as_ref().is_some_and(|f| f.code == CloseCode::Again);
                let hint = if limited { RATE_LIMIT_HINT } else { "" };
                bail!("the server closed the connection: {frame:?}{hint}")
            }
            _ => {}
        }
    }
}
