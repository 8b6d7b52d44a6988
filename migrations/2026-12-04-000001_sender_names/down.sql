ALTER TABLE private_messages DROP COLUMN sender_name;
ALTER TABLE messages DROP COLUMN sender_name;
