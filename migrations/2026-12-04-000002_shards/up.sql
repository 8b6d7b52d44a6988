-- Sharding. In the primary database: which shards exist (by location, never a password),
-- which shard owns each slot, this deployment's id (the prefix of its two-phase-commit
-- global ids) and the coordinator's commit decisions. On each shard: the email index that
-- keeps emails unique across shards (normalised email -> user id, on the email's shard).
-- Without shards these tables stay empty. Every database gets the same schema.
CREATE TABLE shard_map (
    shard_index  INTEGER PRIMARY KEY NOT NULL,
    location     TEXT NOT NULL
);

CREATE TABLE shard_slots (
    slot         INTEGER PRIMARY KEY NOT NULL,
    shard_index  INTEGER NOT NULL
);

CREATE TABLE shard_deployment (
    id           TEXT PRIMARY KEY NOT NULL,
    created_at   TIMESTAMP NOT NULL
);

-- A row here is the commit decision of a distributed transaction: committing its insert
-- is the commit point. Recovery commits prepared transactions with a row and rolls back
-- those without (presumed abort), then deletes rows nothing refers to any more.
CREATE TABLE tx_decisions (
    gid          TEXT PRIMARY KEY NOT NULL,
    participants TEXT NOT NULL,
    created_at   TIMESTAMP NOT NULL
);

CREATE TABLE user_emails (
    email        TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL
);
