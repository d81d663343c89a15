-- Presence: whether each device is connected now, and why each connection status changed.
ALTER TABLE statuses ADD COLUMN reason TEXT;
ALTER TABLE devices ADD COLUMN online INTEGER NOT NULL DEFAULT 0;
