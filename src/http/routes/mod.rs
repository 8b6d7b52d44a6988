//! Route groups, one file each.

pub mod admin;
pub mod api;
pub mod console;
pub mod graphql;
pub mod graphql_ws;
pub mod health;
pub mod metrics;
pub mod page;
pub mod rooms;
pub mod ws;

use actix_web::{guard, web, Route};

/// A route answering `GET` and `HEAD` (the same response; actix-http sends no body for
/// `HEAD`), as probes and uptime checkers expect of read-only pages.
pub fn get_or_head() -> Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}
