//! GraphQL settings: document limits, subscriptions and CORS.

use std::time::Duration;

use serde::Deserialize;

use super::{at_least, ConfigError, OriginPolicy};

/// Limits and policies for `/graphql` and `/subscriptions`.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphqlSettings {
    /// Deepest selection nesting accepted.
    pub max_depth: usize,
    /// Most fields in one document.
    pub max_fields: usize,
    /// Most tokens in one document.
    pub max_tokens: usize,
    /// Highest computed cost (list fields multiply their children); a batch's documents
    /// are added together.
    pub max_cost: u64,
    /// Most operations in one batched request (a JSON array).
    pub max_batch: usize,
    /// Concurrent subscriptions on one WebSocket connection.
    pub max_subscriptions_per_connection: usize,
    /// How often a subscription connection gets a keep-alive message (`pong` or `ka`) and
    /// a WebSocket ping; a client silent for `--ws-pong-timeout` is disconnected.
    pub keep_alive: Duration,
    /// Browser origins allowed to call `/graphql` cross-origin (CORS); same host needs none.
    pub cors_origins: OriginPolicy,
}

impl Default for GraphqlSettings {
    fn default() -> Self {
        Self {
            max_depth: 10,
            max_fields: 200,
            max_tokens: 5_000,
            max_cost: 10_000,
            max_batch: 10,
            max_subscriptions_per_connection: 16,
            keep_alive: Duration::from_secs(15),
            cors_origins: OriginPolicy::SameHost,
        }
    }
}

/// Optional overrides of [`GraphqlSettings`] (the `[graphql]` TOML table, or flags).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlLayer {
    /// See [`GraphqlSettings::max_depth`].
    pub max_depth: Option<usize>,
    /// See [`GraphqlSettings::max_fields`].
    pub max_fields: Option<usize>,
    /// See [`GraphqlSettings::max_tokens`].
    pub max_tokens: Option<usize>,
    /// See [`GraphqlSettings::max_cost`].
    pub max_cost: Option<u64>,
    /// See [`GraphqlSettings::max_batch`].
    pub max_batch: Option<usize>,
    /// See [`GraphqlSettings::max_subscriptions_per_connection`].
    pub max_subscriptions_per_connection: Option<usize>,
    /// See [`GraphqlSettings::keep_alive`] (e.g. `"15s"`).
    pub keep_alive: Option<String>,
    /// See [`GraphqlSettings::cors_origins`].
    pub cors_origins: Option<Vec<String>>,
}

impl GraphqlSettings {
    /// Applies one layer, validating every value it sets.
    pub(super) fn apply(mut self, layer: GraphqlLayer) -> Result<Self, ConfigError> {
        if let Some(depth) = layer.max_depth {
            self.max_depth = at_least("graphql max depth", depth, 2)?;
        }
        if let Some(fields) = layer.max_fields {
            self.max_fields = at_least("graphql max fields", fields, 1)?;
        }
        if let Some(tokens) = layer.max_tokens {
            self.max_tokens = at_least("graphql max tokens", tokens, 10)?;
        }
        if let Some(cost) = layer.max_cost {
            self.max_cost = at_least("graphql max cost", cost as usize, 1)? as u64;
        }
        if let Some(batch) = layer.max_batch {
            self.max_batch = at_least("graphql max batch", batch, 1)?;
        }
        if let Some(ops) = layer.max_subscriptions_per_connection {
            self.max_subscriptions_per_connection =
                at_least("graphql max subscriptions per connection", ops, 1)?;
        }
        if let Some(raw) = layer.keep_alive {
            self.keep_alive = super::positive("graphql keep alive", &raw)?;
        }
        if let Some(origins) = layer.cors_origins {
            self.cors_origins = OriginPolicy::parse(&origins)?;
        }
        Ok(self)
    }
}

/// The GraphQL flags (each with an environment fallback).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GraphqlArgs {
    /// Deepest GraphQL selection nesting [default: 10].
    #[arg(long, env = "SWITCHBOARD_GRAPHQL_MAX_DEPTH", value_name = "N")]
    pub graphql_max_depth: Option<usize>,
    /// Most fields in one GraphQL document [default: 200].
    #[arg(long, env = "SWITCHBOARD_GRAPHQL_MAX_FIELDS", value_name = "N")]
    pub graphql_max_fields: Option<usize>,
    /// Most tokens in one GraphQL document [default: 5000].
    #[arg(long, env = "SWITCHBOARD_GRAPHQL_MAX_TOKENS", value_name = "N")]
    pub graphql_max_tokens: Option<usize>,
    /// Highest GraphQL document cost [default: 10000].
    #[arg(long, env = "SWITCHBOARD_GRAPHQL_MAX_COST", value_name = "N")]
    pub graphql_max_cost: Option<u64>,
    /// Most operations in one batched GraphQL request [default: 10].
    #[arg(long, env = "SWITCHBOARD_GRAPHQL_MAX_BATCH", value_name = "N")]
    pub graphql_max_batch: Option<usize>,
    /// Concurrent subscriptions per WebSocket connection [default: 16].
    #[arg(long, env = "SWITCHBOARD_GRAPHQL_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub graphql_max_subscriptions: Option<usize>,
    /// Keep-alive (and WebSocket ping) interval on subscription connections [default: 15s].
    #[arg(long, env = "SWITCHBOARD_GRAPHQL_KEEP_ALIVE", value_name = "DURATION")]
    pub graphql_keep_alive: Option<String>,
    /// Comma-separated origins allowed to call /graphql cross-origin; `*` for any
    /// [default: none].
    #[arg(
        long,
        env = "SWITCHBOARD_CORS_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGINS"
    )]
    pub cors_origins: Option<Vec<String>>,
}

impl GraphqlArgs {
    /// The layer these flags and variables form.
    pub fn layer(&self) -> GraphqlLayer {
        GraphqlLayer {
            max_depth: self.graphql_max_depth,
            max_fields: self.graphql_max_fields,
            max_tokens: self.graphql_max_tokens,
            max_cost: self.graphql_max_cost,
            max_batch: self.graphql_max_batch,
            max_subscriptions_per_connection: self.graphql_max_subscriptions,
            keep_alive: self.graphql_keep_alive.clone(),
            cors_origins: self.cors_origins.clone(),
        }
    }
}
