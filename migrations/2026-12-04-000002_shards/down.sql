DROP TABLE user_emails;
DROP TABLE tx_decisions;
DROP TABLE shard_deployment;
DROP TABLE shard_slots;
DROP TABLE shard_map;
