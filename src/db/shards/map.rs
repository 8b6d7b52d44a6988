//! Slot hashing and the shard map kept in the primary database.
//!
//! A key (a user id, a normalised email, a room id) hashes to one of [`SLOTS`] slots with
//! CRC-32 (IEEE), a fixed standard function, so the same key lands on the same slot on every
//! platform and Rust release. Slots map to shards through `shard_slots` in the primary,
//! written at the first start: moving a slot later is a row update plus copying its rows
//! (not built yet), never a rehash.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::{
    config::DatabaseUrl,
    db::{
        schema::{shard_deployment, shard_map, shard_slots},
        Database, DbError,
    },
};

/// How many slots keys hash into (as Vitess and Citus: many more slots than shards).
pub const SLOTS: u16 = 4096;

/// The slot of `key`.
pub fn slot_of(key: &str) -> u16 {
    (crc32fast::hash(key.as_bytes()) % u32::from(SLOTS)) as u16
}

/// Which shard owns each slot, and this deployment's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    /// Generated at the first start; prefixes every two-phase-commit global id, so
    /// recovery never touches another deployment's prepared transactions.
    pub deployment: String,
    /// Each shard's location (`host:port/dbname`), by shard index.
    pub locations: Vec<String>,
    /// The owning shard of each slot.
    slots: Vec<u16>,
}

/// Why the configured shards do not match the stored map.
#[derive(Debug, thiserror::Error)]
pub enum ShardMapError {
    /// The shard list changed since the map was written.
    #[error(
        "the configured shards differ from the shard map in the primary database: {0}. \
         Moving slots between shards is not supported yet; start with the same \
         --database-shards, in the same order"
    )]
    Changed(String),
    /// The map could not be read or written.
    #[error("cannot read or write the shard map: {0}")]
    Db(#[from] DbError),
}

impl ShardMap {
    /// A new map spreading the slots over `locations` in contiguous ranges.
    pub fn new(deployment: String, locations: Vec<String>) -> Self {
        let n = locations.len().max(1) as u32;
        let slots = (0..u32::from(SLOTS))
            .map(|slot| (slot * n / u32::from(SLOTS)) as u16)
            .collect();
        Self {
            deployment,
            locations,
            slots,
        }
    }

    /// The shard owning `key`.
    pub fn shard_of(&self, key: &str) -> usize {
        usize::from(self.slots[usize::from(slot_of(key))])
    }

    /// How many slots each shard owns.
    pub fn slot_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.locations.len()];
        for shard in &self.slots {
            counts[usize::from(*shard)] += 1;
        }
        counts
    }

    /// Reads the map from `primary`; `None` when none was written yet.
    pub async fn load(primary: &Database) -> Result<Option<Self>, DbError> {
        let mut conn = primary.pg_conn().await?;
        let c = &mut *conn;
        let locations: Vec<(i32, String)> = shard_map::table
            .order(shard_map::shard_index)
            .load(c)
            .await?;
        if locations.is_empty() {
            return Ok(None);
        }
        let deployment: String = shard_deployment::table
            .select(shard_deployment::id)
            .first(c)
            .await?;
        let slots: Vec<(i32, i32)> = shard_slots::table.order(shard_slots::slot).load(c).await?;
        Ok(Some(Self {
            deployment,
            locations: locations.into_iter().map(|(_, l)| l).collect(),
            slots: slots.into_iter().map(|(_, s)| s as u16).collect(),
        }))
    }

    /// Reads the map from `primary`, writing it first if there is none; a stored map
    /// whose shards differ from `shards` is refused, saying what changed.
    pub async fn load_or_create(
        primary: &Database,
        shards: &[DatabaseUrl],
    ) -> Result<Self, ShardMapError> {
        let wanted: Vec<String> = shards.iter().map(DatabaseUrl::location).collect();
        let mut conn = primary.pg_conn().await?;
        let stored = {
            let c = &mut *conn;
            c.transaction::<_, diesel::result::Error, _>(async |c| {
                let locations: Vec<(i32, String)> = shard_map::table
                    .order(shard_map::shard_index)
                    .load(c)
                    .await?;
                if !locations.is_empty() {
                    let deployment: String = shard_deployment::table
                        .select(shard_deployment::id)
                        .first(c)
                        .await?;
                    let slots: Vec<(i32, i32)> =
                        shard_slots::table.order(shard_slots::slot).load(c).await?;
                    return Ok((deployment, locations, slots));
                }
                let map = ShardMap::new(new_deployment_id(), wanted.clone());
                diesel::insert_into(shard_deployment::table)
                    .values((
                        shard_deployment::id.eq(&map.deployment),
                        shard_deployment::created_at.eq(Utc::now().naive_utc()),
                    ))
                    .execute(c)
                    .await?;
                let rows: Vec<_> = map
                    .locations
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        (
                            shard_map::shard_index.eq(i as i32),
                            shard_map::location.eq(l),
                        )
                    })
                    .collect();
                diesel::insert_into(shard_map::table)
                    .values(&rows)
                    .execute(c)
                    .await?;
                let slots: Vec<_> = map
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(slot, shard)| {
                        (
                            shard_slots::slot.eq(slot as i32),
                            shard_slots::shard_index.eq(i32::from(*shard)),
                        )
                    })
                    .collect();
                for chunk in slots.chunks(1000) {
                    diesel::insert_into(shard_slots::table)
                        .values(chunk)
                        .execute(c)
                        .await?;
                }
                let locations = map
                    .locations
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i as i32, l.clone()))
                    .collect();
                let slots = map
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(slot, shard)| (slot as i32, i32::from(*shard)))
                    .collect();
                Ok((map.deployment, locations, slots))
            })
            .await
        }
        .map_err(DbError::from)?;
        let (deployment, locations, slot_rows) = stored;
        let stored: Vec<String> = locations.into_iter().map(|(_, l)| l).collect();
        if stored != wanted {
            return Err(ShardMapError::Changed(describe_change(&stored, &wanted)));
        }
        let slots: Vec<u16> = slot_rows.into_iter().map(|(_, s)| s as u16).collect();
        if slots.len() != usize::from(SLOTS)
            || slots.iter().any(|s| usize::from(*s) >= stored.len())
        {
            return Err(ShardMapError::Db(DbError::Corrupt(format!(
                "the shard map has {} slots for {} shards",
                slots.len(),
                stored.len()
            ))));
        }
        Ok(Self {
            deployment,
            locations: stored,
            slots,
        })
    }
}

/// A deployment id: 8 lowercase hex digits (gids must stay short and plain).
fn new_deployment_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// What differs between the stored and the configured shard lists.
fn describe_change(stored: &[String], wanted: &[String]) -> String {
    let added: Vec<&String> = wanted.iter().filter(|w| !stored.contains(w)).collect();
    let removed: Vec<&String> = stored.iter().filter(|s| !wanted.contains(s)).collect();
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("added {}", join(&added)));
    }
    if !removed.is_empty() {
        parts.push(format!("removed {}", join(&removed)));
    }
    if parts.is_empty() {
        parts.push(format!(
            "the order changed: stored [{}], configured [{}]",
            stored.join(", "),
            wanted.join(", ")
        ));
    }
    parts.join("; ")
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_spread() {
        // CRC-32/IEEE of fixed inputs: the same on every platform and release.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(slot_of("123456789"), (0xCBF4_3926u32 % 4096) as u16);
        let map = ShardMap::new("d".into(), vec!["a".into(), "b".into(), "c".into()]);
        assert_eq!(map.slot_counts(), [1366, 1365, 1365]);
        let mut per_shard = [0usize; 3];
        for i in 0..30_000 {
            per_shard[map.shard_of(&uuid::Uuid::from_u128(i * 7919).to_string())] += 1;
        }
        for count in per_shard {
            assert!((9_000..11_000).contains(&count), "{per_shard:?}");
        }
    }

    #[test]
    fn a_changed_shard_list_is_described() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            describe_change(&s(&["a", "b"]), &s(&["a", "b", "c"])),
            "added c"
        );
        assert_eq!(describe_change(&s(&["a", "b"]), &s(&["a"])), "removed b");
        assert!(describe_change(&s(&["a", "b"]), &s(&["b", "a"])).contains("order changed"));
    }
}
