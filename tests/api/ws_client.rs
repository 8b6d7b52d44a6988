//! A real WebSocket client (tokio-tungstenite) for the chat tests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::{auth::JwtAuth, config::JwtSecret};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, protocol::CloseFrame, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::helpers::{TestApp, TEST_JWT_SECRET};

/// How long a test waits for a frame before failing.
const WAIT: Duration = Duration::from_secs(10);

/// A token for `sub` signed with the test servers' secret.
pub fn token(sub: &str, role: Option<&str>) -> String {
    JwtAuth::new(&JwtSecret::parse(TEST_JWT_SECRET).unwrap())
        .issue(sub, Duration::from_secs(3600), role)
        .unwrap()
}

/// Why an upgrade was refused: the HTTP status and JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

/// A connected, welcomed client.
pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The welcome frame.
    pub welcome: Value,
    pub session_id: String,
    pub user_id: String,
}

impl WsClient {
    /// Connects as the token's subject and reads the welcome.
    pub async fn user(app: &TestApp, sub: &str) -> Self {
        Self::connect(app, &format!("?token={}", token(sub, None))).await
    }

    /// Connects as an admin.
    pub async fn admin(app: &TestApp, sub: &str) -> Self {
        Self::connect(app, &format!("?token={}", token(sub, Some("admin")))).await
    }

    /// Connects with this query string (e.g. `?user_id=ann`) and reads the welcome.
    pub async fn connect(app: &TestApp, query: &str) -> Self {
        Self::try_connect(app, query, &[])
            .await
            .unwrap_or_else(|refused| panic!("upgrade refused: {refused:?}"))
    }

    /// Connects with extra headers; a refused upgrade comes back as its status and body.
    pub async fn try_connect(
        app: &TestApp,
        query: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Self, Refused> {
        Self::try_connect_to(&app.http_addr.to_string(), query, headers).await
    }

    /// Connects as `sub` to a server at `addr` (`IP:PORT`), e.g. a spawned binary.
    pub async fn user_at(addr: &str, sub: &str) -> Self {
        Self::try_connect_to(addr, &format!("?token={}", token(sub, None)), &[])
            .await
            .unwrap_or_else(|refused| panic!("upgrade refused: {refused:?}"))
    }

    async fn try_connect_to(
        addr: &str,
        query: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Self, Refused> {
        let stream = raw_connect_to(addr, query, headers).await?;
        let mut client = Self {
            stream,
            welcome: Value::Null,
            session_id: String::new(),
            user_id: String::new(),
        };
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "join", "welcome: {welcome}");
        assert_eq!(welcome["from"], "system", "welcome: {welcome}");
        client.session_id = welcome["metadata"]["session_id"].as_str().unwrap().into();
        client.user_id = welcome["metadata"]["user_id"].as_str().unwrap().into();
        client.welcome = welcome;
        Ok(client)
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("the frame is sent");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.stream
            .send(Message::binary(data))
            .await
            .expect("the frame is sent");
    }

    /// The next text frame as JSON (pings are answered by the client library on the way).
    pub async fn recv(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame arrives in time")
                .expect("the connection is open")
                .expect("the frame is readable");
            match next {
                Message::Text(text) => {
                    return serde_json::from_str(&text).expect("frames are JSON");
                }
                Message::Close(frame) => panic!("closed instead of a frame: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame of type `kind`, skipping others (e.g. presence events).
    pub async fn recv_kind(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// The next `error` frame's content.
    pub async fn recv_error(&mut self) -> String {
        let frame = self.recv_kind("error").await;
        frame["content"].as_str().unwrap().to_owned()
    }

    /// Joins `room` and waits for the confirmation.
    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({ "type": "join", "room_id": room })).await;
        loop {
            let frame = self.recv().await;
            if frame["type"] == "join" && frame["room_id"] == room {
                return frame;
            }
        }
    }

    /// Reads (and drops) every frame until `stop` fires, so the client library keeps
    /// answering the server's pings; panics if the server closes meanwhile.
    pub async fn keep_reading_until(
        mut self,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) -> Self {
        loop {
            tokio::select! {
                _ = &mut stop => return self,
                frame = self.stream.next() => match frame {
                    Some(Ok(Message::Close(frame))) => panic!("closed while reading: {frame:?}"),
                    Some(Ok(_)) => {}
                    other => panic!("the connection failed while reading: {other:?}"),
                },
            }
        }
    }

    /// Reads (discarding text frames) until the server's close frame, and returns it.
    pub async fn closed(&mut self) -> CloseFrame {
        read_until_close(&mut self.stream).await
    }

    /// Asserts no text frame arrives within `quiet` (control frames are handled meanwhile).
    pub async fn assert_silent(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(text)))) => panic!("unexpected frame: {text}"),
                Ok(Some(Ok(Message::Close(frame)))) => panic!("unexpected close: {frame:?}"),
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("the connection failed: {other:?}"),
            }
        }
    }
}

/// Opens a WebSocket without reading anything.
pub async fn raw_connect(
    app: &TestApp,
    query: &str,
    headers: &[(&'static str, &str)],
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, Refused> {
    raw_connect_to(&app.http_addr.to_string(), query, headers).await
}

async fn raw_connect_to(
    addr: &str,
    query: &str,
    headers: &[(&'static str, &str)],
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, Refused> {
    let mut request = format!("ws://{addr}/ws{query}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((stream, _)) => Ok(stream),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err(Refused { status, body })
        }
        Err(other) => panic!("cannot connect: {other}"),
    }
}

/// Reads until a close frame (failing if the connection ends without one).
pub async fn read_until_close(
    stream: &mut WebSocketStream<MaybeTlsStream<TcpStream>>,
) -> CloseFrame {
    loop {
        let next = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("the close arrives in time");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => return frame,
            Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
            Some(Ok(_)) => continue,
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
}

/// Reads the raw socket to its end and returns the close frame's code and reason, without
/// answering the pings before it (the client library would answer them, and its pong
/// would hit a socket the server already closed).
pub async fn raw_close(client: WsClient) -> (u16, String) {
    use tokio::io::AsyncReadExt;

    let mut socket = match client.stream.into_inner() {
        MaybeTlsStream::Plain(socket) => socket,
        _ => unreachable!("tests use plain ws://"),
    };
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut bytes))
        .await
        .expect("the server ends the connection in time")
        .expect("the socket is readable");
    let mut rest = bytes.as_slice();
    while rest.len() >= 2 {
        let opcode = rest[0] & 0x0f;
        let (len, header) = match rest[1] & 0x7f {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                10,
            ),
            len => (len as usize, 2),
        };
        let payload = &rest[header..header + len];
        if opcode == 0x8 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
        }
        rest = &rest[header + len..];
    }
    panic!("the connection ended without a close frame");
}
