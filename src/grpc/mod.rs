//! The gRPC front door (tonic), running on its own multi-threaded tokio runtime and
//! reaching actors through their addresses.

pub mod chat;
mod convert;
pub mod layer;
mod status;

pub use status::code_name;
pub mod users;

use std::future::Future;

use tonic::{
    codec::CompressionEncoding,
    service::interceptor::InterceptedService,
    transport::{server::TcpIncoming, Server},
    Request, Status,
};
use tonic_health::server::HealthReporter;

pub use users::Users;

use crate::auth::{bearer_token, Claims, JwtAuth};

/// Code generated from `proto/user_service.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("userservice");

    /// Code generated from `proto/chat_service.proto`: the server API.
    pub mod chat {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("switchboard.chat.v1");
    }

    /// The encoded descriptor set of every proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/userservice_descriptor.bin"));
}

/// Serves gRPC on `listener` until `shutdown` resolves, then drains in-flight calls.
/// Health and reflection are open to all; the user service needs a bearer token.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    users: Users,
    chat: chat::Chat,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let users = pb::user_service_server::UserServiceServer::new(users)
        // Incoming messages are bounded; outgoing ones are not, since a bulk create of
        // 100,000 users answers with all of them (about 10 MB; clients raise their own
        // decoding limit to read it).
        .max_decoding_message_size(options.max_message_size)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");
    Server::builder()
        .layer(layer::CallLayer {
            metrics: options.metrics,
            breaker: options.breaker,
            limiters: options.limiters,
            auth: options.auth.clone(),
        })
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            users,
            authenticate(options.auth.clone()),
        ))
        .add_service(InterceptedService::new(
            pb::chat::chat_service_server::ChatServiceServer::new(chat)
                .max_decoding_message_size(options.max_message_size),
            authenticate(options.auth),
        ))
        .serve_with_incoming_shutdown(
            // Small replies and stream items go out at once, not after the peer's delayed ACK.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

/// How the gRPC server is set up.
pub struct ServeOptions {
    /// Where calls are counted.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Guards the user service's database calls.
    pub breaker: actix::Addr<crate::actors::breaker::CircuitBreaker>,
    /// Per-client rate limiting (shared with HTTP).
    pub limiters: crate::actors::rate_limit::RateLimiters,
    /// Verifies bearer tokens.
    pub auth: JwtAuth,
    /// Largest incoming message, in bytes.
    pub max_message_size: usize,
}

/// Checks `authorization: Bearer <jwt>` and puts the [`Claims`] in the request extensions;
/// a missing or bad token is `UNAUTHENTICATED`.
fn authenticate(
    auth: JwtAuth,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |mut request: Request<()>| {
        // The call layer has already verified a bearer token when one was sent.
        if request.extensions().get::<Claims>().is_some() {
            return Ok(request);
        }
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
            })?
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization metadata is not text"))?;
        let token = bearer_token(header).ok_or_else(|| {
            Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
        })?;
        let claims: Claims = auth
            .verify(token)
            .map_err(|error| Status::unauthenticated(error.to_string()))?;
        request.extensions_mut().insert(claims);
        Ok(request)
    }
}

/// Marks the server as not serving and closes every `Watch` stream, so clients learn of
/// the shutdown and long-lived health streams do not hold the drain open.
pub async fn withdraw_health(reporter: &mut HealthReporter) {
    for service in HEALTH_SERVICES {
        reporter
            .set_service_status(service, tonic_health::ServingStatus::NotServing)
            .await;
        reporter.clear_service_status(service).await;
    }
}

/// The names `grpc.health.v1` reports on: the server as a whole, the user service and
/// the server API.
pub const HEALTH_SERVICES: [&str; 3] = [
    "",
    "userservice.UserService",
    "switchboard.chat.v1.ChatService",
];
