//! The gRPC front door (tonic), running on its own multi-threaded tokio runtime and
//! reaching actors through their addresses.

use std::future::Future;

use tonic::transport::{server::TcpIncoming, Server};
use tonic_health::server::HealthReporter;

/// Code generated from `proto/user_service.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("userservice");

    /// The encoded descriptor set of every proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/userservice_descriptor.bin"));
}

/// Serves gRPC on `listener` until `shutdown` resolves, then drains in-flight calls.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

/// Marks the server as not serving and closes every `Watch` stream, so clients learn of
/// the shutdown and long-lived health streams do not hold the drain open.
pub async fn withdraw_health(reporter: &mut HealthReporter) {
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    reporter.clear_service_status("").await;
}
