//! Route groups, one file each.

pub mod graphql;
pub mod graphql_ws;
pub mod health;
pub mod metrics;
pub mod page;
pub mod rooms;
pub mod ws;
