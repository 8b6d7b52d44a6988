-- Chat history. Each room numbers its messages 1, 2, 3, … (`room_offset`); `rooms` keeps
-- the last number handed out, so offsets keep rising across restarts and pruning.
CREATE TABLE rooms (
    room_id      TEXT PRIMARY KEY NOT NULL,
    last_offset  BIGINT NOT NULL,
    updated_at   TIMESTAMP NOT NULL
);

CREATE TABLE messages (
    room_id      TEXT NOT NULL,
    room_offset  BIGINT NOT NULL,
    id           TEXT NOT NULL,
    kind         TEXT NOT NULL,
    sender       TEXT NOT NULL,
    content      TEXT NOT NULL,
    metadata     TEXT,
    created_at   TIMESTAMP NOT NULL,
    PRIMARY KEY (room_id, room_offset)
);

-- Pruning by age.
CREATE INDEX messages_created_at_idx ON messages (created_at);

-- Private messages, stored only when private history is switched on.
CREATE TABLE private_messages (
    id           TEXT PRIMARY KEY NOT NULL,
    sender       TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    content      TEXT NOT NULL,
    metadata     TEXT,
    created_at   TIMESTAMP NOT NULL
);

CREATE INDEX private_messages_recipient_idx ON private_messages (recipient, created_at);
CREATE INDEX private_messages_created_at_idx ON private_messages (created_at);
