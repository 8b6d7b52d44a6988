CREATE TABLE posts (
    id          TEXT PRIMARY KEY NOT NULL,
    author_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title       TEXT NOT NULL,
    content     TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '[]',
    published   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMP NOT NULL
);

-- Posts by author (batched for many authors at once) in creation order.
CREATE INDEX posts_author_id_created_at_idx ON posts (author_id, created_at, id);
