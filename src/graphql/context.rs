//! The per-request context: handles to the data layer and actors, and who is asking.

use actix::Addr;

use crate::{
    actors::{events::Events, saga::Saga},
    auth::Claims,
    db::Database,
};

/// What resolvers need. Cloning copies a few handles.
#[derive(Clone)]
pub struct Context {
    /// The data layer.
    pub db: Database,
    /// Domain events (for subscriptions).
    pub events: Addr<Events>,
    /// Runs sagas (a user's deletion).
    pub sagas: Addr<Saga>,
    /// The caller: `Ok(None)` without a token, `Err(reason)` with a bad one.
    pub identity: Result<Option<Claims>, String>,
}

impl juniper::Context for Context {}
