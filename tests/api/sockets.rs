//! Socket options of the connections the server accepts.

use std::{
    mem::ManuallyDrop,
    net::{SocketAddr, TcpStream},
    os::fd::FromRawFd,
};

use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::{
    helpers::{grpc_channel, spawn_app},
    ws_client::WsClient,
};

/// `TCP_NODELAY` of every socket of this process that was accepted on `local`
/// (the server runs in the test process, so its sockets are ours to inspect).
fn nodelay_of_sockets_accepted_on(local: SocketAddr) -> Vec<bool> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd is readable") {
        let Ok(entry) = entry else { continue };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // Borrowed, never closed: the server owns it.
        let socket = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        let accepted =
            socket.local_addr().is_ok_and(|addr| addr == local) && socket.peer_addr().is_ok();
        if accepted {
            if let Ok(nodelay) = socket.nodelay() {
                found.push(nodelay);
            }
        }
    }
    found
}

/// Frames are small: with Nagle's algorithm on, a frame written while the previous one is
/// unacknowledged waits for the client's delayed ACK (~40 ms), which was the whole p99 of
/// the fanout benchmark.
#[tokio::test]
async fn accepted_websocket_and_grpc_connections_send_without_nagle_delay() {
    let app = spawn_app().await;
    let _client = WsClient::user(&app, "nagle").await;
    let mut grpc = HealthClient::new(grpc_channel(app.grpc_addr).await);
    grpc.check(HealthCheckRequest {
        service: String::new(),
    })
    .await
    .expect("the health check answers");

    let http = nodelay_of_sockets_accepted_on(app.http_addr);
    assert!(!http.is_empty(), "the WebSocket connection was not found");
    assert!(http.iter().all(|&on| on), "HTTP sockets: {http:?}");
    let grpc_sockets = nodelay_of_sockets_accepted_on(app.grpc_addr);
    assert!(
        !grpc_sockets.is_empty(),
        "the gRPC connection was not found"
    );
    assert!(
        grpc_sockets.iter().all(|&on| on),
        "gRPC sockets: {grpc_sockets:?}"
    );
}
