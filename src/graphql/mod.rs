//! The GraphQL front door (juniper): the seed's schema on the shared data layer.
//!
//! - [`context`]: the per-request context (cheap to clone) and identity.
//! - [`objects`]: `User` and `Post`, with look-ahead prefetching so nested lists cost a
//!   constant number of queries.
//! - [`query`], [`mutation`], [`subscription`]: the roots.
//! - [`errors`]: errors with a machine-readable `extensions.code`.

pub mod context;
pub mod cost;
pub mod errors;
pub mod mutation;
pub mod objects;
pub mod query;
pub mod subscription;

pub use context::Context;

use crate::config::GraphqlSettings;
pub use mutation::Mutation;
pub use query::Query;
pub use subscription::Subscription;

/// The schema type.
pub type Schema = juniper::RootNode<Query, Mutation, Subscription>;

/// Builds the schema with its document limits (the cost limit is checked separately,
/// by [`cost::check`], before execution).
pub fn schema(settings: &GraphqlSettings) -> Schema {
    Schema::new(Query, Mutation, Subscription)
        .limit_depth(settings.max_depth)
        .limit_fields(settings.max_fields)
        .limit_tokens(settings.max_tokens)
}

/// Nesting an introspection-only document may reach: enough for the standard
/// introspection query (graphql-js' `getIntrospectionQuery()` with nine `ofType` levels).
pub const INTROSPECTION_MAX_DEPTH: usize = 20;
/// Fields an introspection-only document may select, fragments expanded.
pub const INTROSPECTION_MAX_FIELDS: usize = 1_000;

/// The schema that runs introspection-only documents (every top-level field `__schema`,
/// `__type` or `__typename`): their own, larger but still bounded, depth and field
/// budget, as graphql-js and async-graphql give introspection — it reads the schema in
/// memory, never the database. Everything else runs under [`schema`]'s limits.
pub fn introspection_schema(settings: &GraphqlSettings) -> Schema {
    Schema::new(Query, Mutation, Subscription)
        .limit_depth(settings.max_depth.max(INTROSPECTION_MAX_DEPTH))
        .limit_fields(settings.max_fields.max(INTROSPECTION_MAX_FIELDS))
        .limit_tokens(settings.max_tokens)
}
