//! Data spread over several PostgreSQL databases: slot hashing and the shard map
//! ([`map`]); the data layer routes by key through it and asks the
//! [`TxCoordinator`](crate::actors::tx::TxCoordinator) when a write spans shards.

pub mod map;
mod status;

pub use map::{slot_of, ShardMap, ShardMapError, SLOTS};
mod routing;

pub use routing::Sharding;
pub use status::{shard_status, ShardStatus};
