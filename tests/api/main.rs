//! The integration test binary: real servers on port 0, real clients.

mod breaker;
mod browser;
mod chat;
mod chat_limits;
mod cli;
mod config_errors;
mod graphql;
mod graphql_more;
mod grpc_calls;
mod grpc_health;
mod grpc_reflection;
mod grpc_stream;
mod grpc_users;
mod health;
mod helpers;
mod history;
mod loadtool;
mod metrics;
mod migrations;
mod private_pg;
mod process;
mod rate_limit;
mod repository;
mod shutdown;
mod trace_context;
mod ws_client;
