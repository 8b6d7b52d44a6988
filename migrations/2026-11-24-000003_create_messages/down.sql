DROP TABLE private_messages;
DROP TABLE messages;
DROP TABLE rooms;
