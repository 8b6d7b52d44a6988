//! `GET /subscriptions`: GraphQL over WebSocket, in the `graphql-transport-ws` protocol or
//! the legacy `graphql-ws` one.
//!
//! juniper_graphql_ws runs each protocol's state machine (init, operations, keep-alives);
//! this module is the transport around it, so the same admission rules hold here as on
//! `POST /graphql`:
//! - the subprotocol is chosen only among those the client offered;
//! - frames are size-limited by the length their header announces ([`FrameLimit`]);
//! - every operation passes [`cost::check`] (fragment checks and the cost limit) before
//!   juniper sees it;
//! - every message takes a token from the connection's bucket (`--ws-rate`/`--ws-burst`,
//!   as chat connections do): a refused operation is answered with a `RATE_LIMITED` error,
//!   and ten refusals in a row close the connection with `1008`.

use std::{convert::Infallible, sync::Arc, time::Instant};

use actix_web::{
    dev,
    http::header::{self, HeaderValue},
    web, FromRequest, HttpRequest, HttpResponse,
};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use juniper::{DefaultScalarValue, ScalarValue as _, Variables};
use juniper_graphql_ws::{graphql_transport_ws, graphql_ws, ArcSchema, ConnectionConfig};
use serde_json::{json, Value};

use super::graphql::{context, identify, refusal_error};
use crate::{
    actors::session::protocol::MAX_RATE_STRIKES,
    graphql::cost,
    http::{frame_limit::FrameLimit, HttpState},
    rate::TokenBucket,
};

/// The protocols served (a client that offers both gets the one it lists first).
const PROTOCOLS: [&str; 2] = [TransportWs::NAME, LegacyWs::NAME];

/// Upgrades the connection and serves it on the worker that accepted it.
pub async fn subscriptions(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, actix_web::Error> {
    let protocol = match negotiate(&req) {
        Ok(protocol) => protocol,
        Err(error) => return Ok(HttpResponse::BadRequest().json(json!({ "error": error }))),
    };
    let limit = state.chat.settings.max_message_size;
    let limited: actix_http::BoxedPayloadStream = Box::pin(FrameLimit::new(stream, limit));
    let payload = web::Payload::from_request(&req, &mut dev::Payload::from(limited)).await?;
    let (mut response, session, messages) = actix_ws::handle(&req, payload)?;
    let messages = messages
        .max_frame_size(limit)
        .aggregate_continuations()
        .max_continuation_size(limit);
    if let Some(name) = protocol.answer {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(name),
        );
    }
    let state = state.into_inner();
    let schema = ArcSchema(state.graphql.schema.clone());
    let init = {
        let state = state.clone();
        move |params: Variables<DefaultScalarValue>| async move {
            let token = ["authorization", "Authorization", "token"]
                .iter()
                .find_map(|key| {
                    params
                        .get(*key)
                        .and_then(|v| v.as_scalar()?.try_to_string())
                });
            let context = context(&state, identify(&state, token.as_deref()));
            if let Err(reason) = &context.identity {
                return Err(InitRefused(reason.clone()));
            }
            // juniper would also close a connection whose client sends no `ping` within
            // the interval — but graphql-ws clients do not ping by default (its reference
            // server never asks them to), so liveness is checked with WebSocket pings in
            // `serve` instead, as on `/ws`.
            Ok(ConnectionConfig::new(context)
                .with_max_in_flight_operations(state.graphql.max_operations_per_connection)
                .with_keep_alive_interval(state.graphql.keep_alive)
                .with_keep_alive_timeout(std::time::Duration::ZERO))
        }
    };
    let admission = Admission::new(&state);
    if protocol.name == TransportWs::NAME {
        let connection = graphql_transport_ws::Connection::new(schema, init);
        actix_web::rt::spawn(serve::<TransportWs, _>(
            connection, session, messages, admission,
        ));
    } else {
        let connection = graphql_ws::Connection::new(schema, init);
        actix_web::rt::spawn(serve::<LegacyWs, _>(
            connection, session, messages, admission,
        ));
    }
    Ok(response)
}

/// Refusal of a subscription connection's `connection_init`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InitRefused(String);

/// The protocol a client gets.
#[derive(Debug, PartialEq, Eq)]
struct Negotiated {
    /// The protocol spoken.
    name: &'static str,
    /// The `Sec-WebSocket-Protocol` to answer with: only one the client offered.
    answer: Option<&'static str>,
}

/// Picks the protocol: the first the client offered that we serve — its order is its
/// preference (RFC 6455 §4.2.2: the answer must be one of the offered values). Clients
/// that offer both and cannot read the answer fall back to their first choice (gql reads
/// the header case-sensitively), so honouring that order keeps both sides on one protocol. A client that offers none gets
/// `graphql-transport-ws` and no header; one that offers only others is refused (answering
/// without a header would make a browser fail the connection anyway, with less of a
/// reason): `Err` says why.
fn negotiate(req: &HttpRequest) -> Result<Negotiated, String> {
    let offered: Vec<&str> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(Negotiated {
            name: TransportWs::NAME,
            answer: None,
        });
    }
    offered
        .iter()
        .find_map(|name| PROTOCOLS.iter().find(|ours| *ours == name))
        .map(|name| Negotiated {
            name,
            answer: Some(name),
        })
        .ok_or_else(|| {
            format!(
                "none of the offered subprotocols ({}) is served here; offer {} or {}",
                offered.join(", "),
                PROTOCOLS[0],
                PROTOCOLS[1]
            )
        })
}

/// What each message must pass before juniper sees it.
struct Admission {
    state: Arc<HttpState>,
    bucket: TokenBucket,
    strikes: u32,
}

/// What to do with one incoming message.
enum Verdict {
    /// Hand it to juniper.
    Pass,
    /// Answer the operation with these errors instead.
    Refuse { id: String, error: Value },
    /// A message without an operation over the rate limit: dropped.
    Drop,
    /// Too many refusals in a row.
    Close(CloseReason),
}

impl Admission {
    fn new(state: &Arc<HttpState>) -> Self {
        let settings = &state.chat.settings;
        Self {
            bucket: TokenBucket::new(
                settings.rate_per_second,
                settings.rate_burst,
                Instant::now(),
            ),
            state: state.clone(),
            strikes: 0,
        }
    }

    fn judge<D: Dialect>(&mut self, message: &D::In) -> Verdict {
        if D::ends_something(message) {
            // Stopping an operation or the connection is never refused.
            return Verdict::Pass;
        }
        let operation = D::operation(message);
        if !self.bucket.try_take(Instant::now()) {
            self.strikes += 1;
            if self.strikes >= MAX_RATE_STRIKES {
                return Verdict::Close(CloseReason {
                    code: CloseCode::Policy,
                    description: Some("rate limit exceeded".into()),
                });
            }
            return match operation {
                Some(operation) => Verdict::Refuse {
                    id: operation.id.to_owned(),
                    error: json!({
                        "message": "rate limit exceeded; slow down",
                        "extensions": { "code": "RATE_LIMITED" },
                    }),
                },
                None => Verdict::Drop,
            };
        }
        self.strikes = 0;
        let Some(operation) = operation else {
            return Verdict::Pass;
        };
        let graphql = &self.state.graphql;
        match cost::check_document(
            &graphql.schema,
            operation.query,
            operation.operation_name,
            operation.variables,
            graphql.max_cost,
        ) {
            Ok(_) => Verdict::Pass,
            Err(refusal) => Verdict::Refuse {
                id: operation.id.to_owned(),
                error: refusal_error(&refusal),
            },
        }
    }
}

/// The parts of an operation-starting message that admission looks at.
struct Operation<'m> {
    id: &'m str,
    query: &'m str,
    operation_name: Option<&'m str>,
    variables: &'m Variables<DefaultScalarValue>,
}

/// What to send the client.
enum Reply {
    Text(String),
    Close(CloseReason),
}

/// One of the two subscription protocols, as far as the transport needs to know it.
trait Dialect {
    /// The `Sec-WebSocket-Protocol` name.
    const NAME: &'static str;
    /// A parsed client message, as juniper's connection takes it.
    type In;
    /// What juniper's connection emits.
    type Out;
    /// Parses a client message.
    fn parse(text: &[u8]) -> Result<Self::In, serde_json::Error>;
    /// The answer to a message that does not parse.
    fn malformed(error: serde_json::Error) -> Reply;
    /// The operation a message starts, if it starts one.
    fn operation(message: &Self::In) -> Option<Operation<'_>>;
    /// Whether the message only stops something (never rate limited).
    fn ends_something(message: &Self::In) -> bool;
    /// The message the client's close frame stands for.
    fn terminate() -> Self::In;
    /// Whether the message is `connection_init`.
    fn is_init(message: &Self::In) -> bool;
    /// The close for a second `connection_init`, where the protocol forbids one.
    fn repeated_init() -> Option<CloseReason> {
        None
    }
    /// An operation's error message carrying `error` (the same shape in both protocols:
    /// `payload` is a list of GraphQL errors, as juniper sends them).
    fn error(id: &str, error: Value) -> String {
        json!({ "type": "error", "id": id, "payload": [error] }).to_string()
    }
    /// Encodes juniper's output.
    fn reply(output: Self::Out) -> Reply;
}

/// `graphql-transport-ws` (graphql-ws ≥ 5).
struct TransportWs;

impl Dialect for TransportWs {
    const NAME: &'static str = "graphql-transport-ws";
    type In = graphql_transport_ws::Input<DefaultScalarValue>;
    type Out = graphql_transport_ws::Output<DefaultScalarValue>;

    fn parse(text: &[u8]) -> Result<Self::In, serde_json::Error> {
        serde_json::from_slice(text).map(graphql_transport_ws::Input::Message)
    }

    fn malformed(error: serde_json::Error) -> Reply {
        // The protocol's answer to an invalid message: close with 4400.
        Reply::Close(CloseReason {
            code: CloseCode::Other(4400),
            description: Some(format!("invalid message: {error}")),
        })
    }

    fn operation(message: &Self::In) -> Option<Operation<'_>> {
        use graphql_transport_ws::{ClientMessage, Input};
        match message {
            Input::Message(ClientMessage::Subscribe { id, payload }) => Some(Operation {
                id,
                query: &payload.query,
                operation_name: payload.operation_name.as_deref(),
                variables: &payload.variables,
            }),
            _ => None,
        }
    }

    fn ends_something(message: &Self::In) -> bool {
        use graphql_transport_ws::{ClientMessage, Input};
        matches!(
            message,
            Input::Close | Input::Message(ClientMessage::Complete { .. })
        )
    }

    fn terminate() -> Self::In {
        graphql_transport_ws::Input::Close
    }

    fn is_init(message: &Self::In) -> bool {
        use graphql_transport_ws::{ClientMessage, Input};
        matches!(
            message,
            Input::Message(ClientMessage::ConnectionInit { .. })
        )
    }

    fn repeated_init() -> Option<CloseReason> {
        // The protocol's rule (juniper ignores a second init; graphql-ws closes).
        Some(CloseReason {
            code: CloseCode::Other(4429),
            description: Some("Too many initialisation requests".into()),
        })
    }

    fn reply(output: Self::Out) -> Reply {
        match output {
            graphql_transport_ws::Output::Message(message) => encode(&message),
            graphql_transport_ws::Output::Close { code, message } => Reply::Close(CloseReason {
                code: code.into(),
                description: Some(message),
            }),
        }
    }
}

/// The legacy `graphql-ws` (subscriptions-transport-ws).
struct LegacyWs;

impl Dialect for LegacyWs {
    const NAME: &'static str = "graphql-ws";
    type In = graphql_ws::ClientMessage<DefaultScalarValue>;
    type Out = graphql_ws::ServerMessage<DefaultScalarValue>;

    fn parse(text: &[u8]) -> Result<Self::In, serde_json::Error> {
        serde_json::from_slice(text)
    }

    fn malformed(error: serde_json::Error) -> Reply {
        // The protocol's answer to an invalid message: a connection error, and carry on.
        let payload = json!({ "message": format!("invalid message: {error}") });
        Reply::Text(json!({ "type": "connection_error", "payload": payload }).to_string())
    }

    fn operation(message: &Self::In) -> Option<Operation<'_>> {
        match message {
            graphql_ws::ClientMessage::Start { id, payload } => Some(Operation {
                id,
                query: &payload.query,
                operation_name: payload.operation_name.as_deref(),
                variables: &payload.variables,
            }),
            _ => None,
        }
    }

    fn ends_something(message: &Self::In) -> bool {
        matches!(
            message,
            graphql_ws::ClientMessage::Stop { .. } | graphql_ws::ClientMessage::ConnectionTerminate
        )
    }

    fn terminate() -> Self::In {
        graphql_ws::ClientMessage::ConnectionTerminate
    }

    fn is_init(message: &Self::In) -> bool {
        matches!(message, graphql_ws::ClientMessage::ConnectionInit { .. })
    }

    fn reply(output: Self::Out) -> Reply {
        encode(&output)
    }
}

fn encode(message: &impl serde::Serialize) -> Reply {
    match serde_json::to_string(message) {
        Ok(text) => Reply::Text(text),
        Err(error) => Reply::Close(CloseReason {
            code: CloseCode::Error,
            description: Some(format!("could not encode a message: {error}")),
        }),
    }
}

/// Runs one connection until either side ends it.
async fn serve<D, C>(
    mut connection: C,
    mut session: actix_ws::Session,
    mut messages: actix_ws::AggregatedMessageStream,
    mut admission: Admission,
) where
    D: Dialect,
    C: Sink<D::In, Error = Infallible> + Stream<Item = D::Out> + Unpin,
{
    let mut initialised = false;
    // Liveness: a WebSocket ping every keep-alive interval; a client that sends nothing
    // (not even the pong its library answers automatically) for the pong timeout is gone.
    let (every, silent_for) = admission.heartbeat();
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let close = 'serve: loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > silent_for {
                    break Some(CloseReason {
                        code: CloseCode::Policy,
                        description: Some(format!("heartbeat timeout: nothing heard for {silent_for:?}")),
                    });
                }
                if session.ping(b"").await.is_err() {
                    return;
                }
            }
            output = connection.next() => match deliver::<D>(output, &mut session).await {
                Delivered::Sent => {}
                Delivered::Close(reason) => break Some(reason),
                Delivered::Gone => return,
            },
            message = messages.next() => {
                if matches!(message, Some(Ok(_))) {
                    last_heard = Instant::now();
                }
                let text = match message {
                    Some(Ok(AggregatedMessage::Text(text))) => text.into_bytes(),
                    Some(Ok(AggregatedMessage::Binary(bytes))) => bytes,
                    Some(Ok(AggregatedMessage::Ping(payload))) => {
                        if session.pong(&payload).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => continue,
                    Some(Ok(AggregatedMessage::Close(_))) => {
                        let _ = connection.send(D::terminate()).await;
                        break Some(CloseCode::Normal.into());
                    }
                    Some(Err(error)) => break Some(protocol_error(&error, admission.limit())),
                    // The connection is gone; dropping juniper's connection ends its operations.
                    None => break None,
                };
                let message = match D::parse(&text) {
                    Ok(message) => message,
                    Err(error) => match D::malformed(error) {
                        Reply::Text(text) => {
                            if session.text(text).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Reply::Close(reason) => break Some(reason),
                    },
                };
                if D::is_init(&message) {
                    if initialised {
                        if let Some(reason) = D::repeated_init() {
                            break Some(reason);
                        }
                    }
                    initialised = true;
                }
                match admission.judge::<D>(&message) {
                    Verdict::Pass => {
                        if connection.send(message).await.is_err() {
                            break None;
                        }
                        // What juniper answered at once goes out before the next message
                        // is read: one it answered with a close (4409, 4401, 4403…) is
                        // the last it gets — later messages, already read off the socket,
                        // never reach a connection that has decided to end — and the
                        // client sees the close for what it did first.
                        while let Some(output) = connection.next().now_or_never() {
                            match deliver::<D>(output, &mut session).await {
                                Delivered::Sent => {}
                                Delivered::Close(reason) => break 'serve Some(reason),
                                Delivered::Gone => return,
                            }
                        }
                    }
                    Verdict::Refuse { id, error } => {
                        if session.text(D::error(&id, error)).await.is_err() {
                            return;
                        }
                    }
                    Verdict::Drop => {}
                    Verdict::Close(reason) => break Some(reason),
                }
            }
        }
    };
    if let Some(reason) = close {
        let _ = session.close(Some(reason)).await;
    }
}

/// What became of one of juniper's outputs.
enum Delivered {
    /// Sent to the client.
    Sent,
    /// The connection is to close with this reason.
    Close(CloseReason),
    /// The client is gone.
    Gone,
}

/// Sends one of juniper's outputs (`None`: its stream ended) to the client.
async fn deliver<D: Dialect>(output: Option<D::Out>, session: &mut actix_ws::Session) -> Delivered {
    let Some(output) = output else {
        return Delivered::Close(CloseCode::Normal.into());
    };
    match D::reply(output) {
        Reply::Text(text) => match session.text(text).await {
            Ok(()) => Delivered::Sent,
            Err(_) => Delivered::Gone,
        },
        Reply::Close(reason) => Delivered::Close(reason),
    }
}

impl Admission {
    /// The largest message accepted.
    fn limit(&self) -> usize {
        self.state.chat.settings.max_message_size
    }

    /// How often to ping, and how long a client may stay silent.
    fn heartbeat(&self) -> (std::time::Duration, std::time::Duration) {
        (
            self.state.graphql.keep_alive,
            self.state.chat.settings.pong_timeout,
        )
    }
}

/// The close for a frame the codec (or [`FrameLimit`]) refused.
fn protocol_error(error: &actix_ws::ProtocolError, limit: usize) -> CloseReason {
    use actix_ws::ProtocolError;
    let too_big = match error {
        ProtocolError::Overflow => true,
        ProtocolError::Io(error) => crate::http::frame_limit::is_oversize(error),
        _ => false,
    };
    if too_big {
        CloseReason {
            code: CloseCode::Size,
            description: Some(format!("message too big (limit {limit} bytes)")),
        }
    } else {
        CloseReason {
            code: CloseCode::Protocol,
            description: Some(format!("protocol error: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn offered(values: &[&str]) -> Result<Negotiated, ()> {
        let mut req = TestRequest::default();
        for value in values {
            req = req.append_header((header::SEC_WEBSOCKET_PROTOCOL, *value));
        }
        negotiate(&req.to_http_request()).map_err(|_| ())
    }

    #[test]
    fn only_an_offered_subprotocol_is_answered() {
        let cases: [(&[&str], Result<Negotiated, ()>); 7] = [
            (
                &[],
                Ok(Negotiated {
                    name: "graphql-transport-ws",
                    answer: None,
                }),
            ),
            (
                &["graphql-ws"],
                Ok(Negotiated {
                    name: "graphql-ws",
                    answer: Some("graphql-ws"),
                }),
            ),
            (
                &["graphql-ws, graphql-transport-ws"],
                Ok(Negotiated {
                    name: "graphql-ws",
                    answer: Some("graphql-ws"),
                }),
            ),
            (
                &["graphql-transport-ws", "graphql-ws"],
                Ok(Negotiated {
                    name: "graphql-transport-ws",
                    answer: Some("graphql-transport-ws"),
                }),
            ),
            (
                &["bogus", "graphql-ws"],
                Ok(Negotiated {
                    name: "graphql-ws",
                    answer: Some("graphql-ws"),
                }),
            ),
            (&["bogus"], Err(())),
            (&["graphql-transport-ws-x"], Err(())),
        ];
        for (values, expected) in cases {
            assert_eq!(offered(values), expected, "{values:?}");
        }
    }
}
