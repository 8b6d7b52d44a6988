//! The actors that own all runtime state. Each changes state only by handling its typed
//! messages (`messages.rs` beside it); front doors hold their addresses.

pub mod api_session;
pub mod breaker;
pub mod broker;
pub mod events;
pub mod health;
pub mod history;
pub mod hub;
pub mod idempotency;
pub mod rate_limit;
pub mod saga;
pub mod session;
pub mod tx;
pub mod user_cache;
