//! The GraphQL front door (juniper): the seed's schema on the shared data layer.
//!
//! - [`context`]: the per-request context (cheap to clone) and identity.
//! - [`objects`]: `User` and `Post`, with look-ahead prefetching so nested lists cost a
//!   constant number of queries.
//! - [`query`], [`mutation`], [`subscription`]: the roots.
//! - [`errors`]: errors with a machine-readable `extensions.code`.

pub mod context;
pub mod errors;
pub mod mutation;
pub mod objects;
pub mod query;
pub mod subscription;

pub use context::Context;
pub use mutation::Mutation;
pub use query::Query;
pub use subscription::Subscription;

/// The schema type.
pub type Schema = juniper::RootNode<Query, Mutation, Subscription>;

/// Builds the schema with its document limits.
pub fn schema(limits: &Limits) -> Schema {
    Schema::new(Query, Mutation, Subscription)
        .limit_depth(limits.max_depth)
        .limit_fields(limits.max_fields)
        .limit_tokens(limits.max_tokens)
}

/// Limits applied to every document before it executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Deepest selection nesting.
    pub max_depth: usize,
    /// Most fields in one document.
    pub max_fields: usize,
    /// Most tokens in one document.
    pub max_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 10,
            max_fields: 200,
            max_tokens: 5_000,
        }
    }
}
