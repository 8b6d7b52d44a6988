-- The sender's display name as it was when the message was relayed (a guest's chosen
-- name, a token's `name` claim), so history shows names rather than raw ids. NULL for
-- senders without one and for messages stored before this column existed.
ALTER TABLE messages ADD COLUMN sender_name TEXT;
ALTER TABLE private_messages ADD COLUMN sender_name TEXT;
