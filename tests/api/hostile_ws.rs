//! WebSocket frames built to bloat the server: a header announcing far more than the size
//! limit must be refused before its payload is buffered, on `/ws` and `/subscriptions`.

use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{spawn_app, TestApp};

/// Opens a WebSocket on `path` by hand (so the test can write any bytes it likes) and
/// returns the socket with whatever followed the `101` answer.
async fn raw_upgrade(app: &TestApp, path: &str, extra_headers: &str) -> (TcpStream, Vec<u8>) {
    let mut socket = TcpStream::connect(app.http_addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n",
        app.http_addr
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
            .await
            .expect("the upgrade is answered")
            .unwrap();
        assert!(n > 0, "the server closed during the upgrade");
        received.extend_from_slice(&buf[..n]);
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (socket, received[head_end..].to_vec())
}

/// A masked text frame header announcing `length` bytes (64-bit length form).
fn huge_header(length: u64) -> Vec<u8> {
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&length.to_be_bytes());
    header.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    header
}

/// Sends the huge header and then a stream of payload, as an attacker would; the server
/// must close with 1009 without waiting for the frame.
async fn refused_before_buffering(app: &TestApp, path: &str, headers: &str) {
    let (mut socket, pending) = raw_upgrade(app, path, headers).await;
    socket.write_all(&huge_header(1 << 40)).await.unwrap();
    let (mut reader, mut writer) = socket.into_split();
    // Keep streaming 8 MiB of "payload" while waiting for the close; writes fail once the
    // server has dropped the connection, which is fine.
    let flood = tokio::spawn(async move {
        let chunk = vec![0x55u8; 64 * 1024];
        for _ in 0..128 {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
        }
        writer
    });
    let code = read_close(&mut reader, pending).await;
    assert_eq!(
        code,
        Some(1009),
        "{path}: the oversize frame is refused with 1009"
    );
    flood.abort();
    assert_eq!(app.get_status("/livez").await, 200);
}

/// Reads server frames until a close frame and returns its code (`None` when the
/// connection ends without one).
async fn read_close(reader: &mut (impl AsyncRead + Unpin), mut pending: Vec<u8>) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(code) = parse_close(&mut pending) {
            return code;
        }
        let read = tokio::time::timeout_at(deadline, reader.read(&mut buf))
            .await
            .expect("the server closes in time, without waiting for the frame");
        match read {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// Drops whole non-close frames from `pending`; `Some(code)` once a close frame is there.
fn parse_close(pending: &mut Vec<u8>) -> Option<Option<u16>> {
    while pending.len() >= 2 {
        let (length, header) = match pending[1] & 0x7F {
            126 if pending.len() >= 4 => {
                (usize::from(u16::from_be_bytes([pending[2], pending[3]])), 4)
            }
            127 if pending.len() >= 10 => (
                u64::from_be_bytes(pending[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            short => (usize::from(short), 2),
        };
        if pending.len() < header + length {
            return None;
        }
        if pending[0] & 0x0F == 0x8 {
            return Some(
                (length >= 2).then(|| u16::from_be_bytes([pending[header], pending[header + 1]])),
            );
        }
        pending.drain(..header + length);
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_frame_announcing_too_much_is_refused_before_it_is_buffered() {
    let app = spawn_app().await;
    refused_before_buffering(&app, "/ws", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_frame_announcing_too_much_is_refused_before_it_is_buffered() {
    let app = spawn_app().await;
    refused_before_buffering(
        &app,
        "/subscriptions",
        "Sec-WebSocket-Protocol: graphql-transport-ws\r\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_within_the_limit_still_work_after_the_guard() {
    // The guard follows frame boundaries: a sequence of ordinary frames split anywhere
    // still reaches the session intact.
    let app = spawn_app().await;
    let (mut socket, pending) = raw_upgrade(&app, "/ws", "").await;
    let mut bytes = Vec::new();
    for room in ["a", "b", "c"] {
        let text = format!(r#"{{"type":"join","room_id":"{room}"}}"#);
        bytes.push(0x81);
        bytes.push(0x80 | text.len() as u8);
        let mask = [1u8, 2, 3, 4];
        bytes.extend_from_slice(&mask);
        bytes.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
    for piece in bytes.chunks(5) {
        socket.write_all(piece).await.unwrap();
        socket.flush().await.unwrap();
    }
    let mut pending = pending;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut joined = 0;
    while joined < 3 {
        let n = tokio::time::timeout_at(deadline, socket.read(&mut buf))
            .await
            .expect("three join confirmations in time")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        pending.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&pending);
        joined = ["joined a", "joined b", "joined c"]
            .iter()
            .filter(|j| text.contains(*j))
            .count();
    }
}
