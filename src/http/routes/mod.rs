//! Route groups, one file each.

pub mod health;
