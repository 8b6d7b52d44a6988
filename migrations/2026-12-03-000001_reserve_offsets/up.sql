-- Offsets reserved ahead of use, so that no offset is handed out twice even after a crash:
-- a room's numbering continues after `reserved_offset`, the highest offset that may have
-- been handed out (the server hands back what it did not use at a clean stop).
ALTER TABLE rooms ADD COLUMN reserved_offset BIGINT NOT NULL DEFAULT 0;
UPDATE rooms SET reserved_offset = last_offset;
