//! Route groups, one file each.

pub mod graphql;
pub mod health;
pub mod metrics;
pub mod page;
pub mod rooms;
pub mod ws;
