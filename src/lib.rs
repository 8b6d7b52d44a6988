//! Switchboard: a realtime server.
//!
//! Browsers talk in rooms over WebSocket, services drive it over gRPC, front-ends query and
//! subscribe over GraphQL, and operators watch it over HTTP. All state lives in actix
//! actors; the HTTP and gRPC servers are thin front doors that translate wire formats into
//! actor messages and data-layer calls.
//!
//! # Layout
//! - [`config`]: typed, layered settings (defaults < TOML file < environment < flags).
//! - [`cli`]: the `switchboard` command line (`serve`, `migrate`, `token`).
//! - [`startup`]: [`startup::Application`] binds listeners, opens the database, starts the
//!   servers and shuts them down gracefully.
//! - [`telemetry`]: log output and request ids.
//! - [`domain`]: newtypes that parse untrusted input once, at the edge.
//! - [`db`]: the data layer over PostgreSQL and embedded SQLite, with migrations and
//!   query statistics.
//! - [`auth`]: HS256 JWTs shared by every front door.
//! - [`chat`]: the WebSocket chat protocol: identities, client commands, outbound frames.
//! - [`actors`]: the actors that own all runtime state: the chat [`actors::hub::Hub`] and
//!   one [`actors::session::Session`] per WebSocket.
//! - [`http`]: actix-web routes and middleware.
//! - [`metrics`]: Prometheus metrics for `/metrics`.
//! - [`rate`]: the token bucket shared by per-connection and per-client rate limits.
//! - [`grpc`]: the tonic server and its generated code.
//! - [`graphql`]: the juniper schema served at `/graphql`.

pub mod actors;
pub mod auth;
pub mod chat;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod graphql;
pub mod grpc;
pub mod http;
pub mod loadtest;
pub mod metrics;
pub mod rate;
pub mod server_api;
pub mod startup;
pub mod telemetry;
