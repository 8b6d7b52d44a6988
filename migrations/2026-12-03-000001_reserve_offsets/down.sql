ALTER TABLE rooms DROP COLUMN reserved_offset;
