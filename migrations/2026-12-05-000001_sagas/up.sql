-- Sagas: multi-step workflows that survive crashes. In the primary database: one row per
-- saga run (its type, input, state and the lease of the server running it) and one per
-- step (state, attempts, output, last error). Written before each side effect and after it.
CREATE TABLE sagas (
    id           TEXT PRIMARY KEY NOT NULL,
    saga_type    TEXT NOT NULL,
    -- What the saga is about (e.g. the user id of a deletion): one live saga per key.
    saga_key     TEXT NOT NULL,
    -- running | compensating | completed | compensated
    state        TEXT NOT NULL,
    input        TEXT NOT NULL,
    -- Set when a step or compensation kept failing past the limit (still retried).
    stuck        BOOLEAN NOT NULL DEFAULT FALSE,
    -- The server running it, until lease_until; another may claim it after that.
    owner        TEXT,
    lease_until  TIMESTAMP,
    last_error   TEXT,
    created_at   TIMESTAMP NOT NULL,
    updated_at   TIMESTAMP NOT NULL
);

CREATE UNIQUE INDEX sagas_live_key_idx ON sagas (saga_type, saga_key) WHERE state <> 'compensated';
CREATE INDEX sagas_state_idx ON sagas (state, updated_at);

CREATE TABLE saga_steps (
    saga_id                TEXT NOT NULL,
    step_index             INTEGER NOT NULL,
    name                   TEXT NOT NULL,
    -- pending | started | done | failed | compensating | compensated
    state                  TEXT NOT NULL,
    attempts               INTEGER NOT NULL DEFAULT 0,
    compensation_attempts  INTEGER NOT NULL DEFAULT 0,
    output                 TEXT,
    last_error             TEXT,
    updated_at             TIMESTAMP NOT NULL,
    PRIMARY KEY (saga_id, step_index)
);

-- Users being deleted, and deleted ones: their tokens are refused everywhere.
CREATE TABLE user_deletions (
    user_id      TEXT PRIMARY KEY NOT NULL,
    saga_id      TEXT NOT NULL,
    created_at   TIMESTAMP NOT NULL
);

-- Finding a deleted user's messages.
CREATE INDEX messages_sender_idx ON messages (sender);
CREATE INDEX private_messages_sender_idx ON private_messages (sender);

-- Posts no longer cascade with their author: deleting a user removes the user row first
-- (the point of no return) and the posts after it, in batches. A post's author is checked
-- when the post is stored, under a lock on the author's row.
CREATE TABLE posts_v2 (
    id          TEXT PRIMARY KEY NOT NULL,
    author_id   TEXT NOT NULL,
    title       TEXT NOT NULL,
    content     TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '[]',
    published   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMP NOT NULL
);
INSERT INTO posts_v2 (id, author_id, title, content, tags, published, created_at)
    SELECT id, author_id, title, content, tags, published, created_at FROM posts;
DROP TABLE posts;
ALTER TABLE posts_v2 RENAME TO posts;
CREATE INDEX posts_author_id_created_at_idx ON posts (author_id, created_at, id);
