-- One schema for SQLite and PostgreSQL: ids are UUIDv7 text, metadata is JSON text,
-- timestamps are TIMESTAMP (UTC, microseconds).
CREATE TABLE users (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    email       TEXT NOT NULL,
    age         INTEGER,
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  TIMESTAMP NOT NULL,
    updated_at  TIMESTAMP NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);

-- Keyset pagination walks (created_at, id).
CREATE INDEX users_created_at_id_idx ON users (created_at, id);
