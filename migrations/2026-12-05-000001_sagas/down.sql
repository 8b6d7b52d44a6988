CREATE TABLE posts_v1 (
    id          TEXT PRIMARY KEY NOT NULL,
    author_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title       TEXT NOT NULL,
    content     TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '[]',
    published   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMP NOT NULL
);
INSERT INTO posts_v1 (id, author_id, title, content, tags, published, created_at)
    SELECT id, author_id, title, content, tags, published, created_at FROM posts
    WHERE author_id IN (SELECT id FROM users);
DROP TABLE posts;
ALTER TABLE posts_v1 RENAME TO posts;
CREATE INDEX posts_author_id_created_at_idx ON posts (author_id, created_at, id);

DROP INDEX private_messages_sender_idx;
DROP INDEX messages_sender_idx;
DROP TABLE user_deletions;
DROP TABLE saga_steps;
DROP TABLE sagas;
