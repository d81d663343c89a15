-- Presence: whether each device is connected now, and why each connection status changed.
ALTER TABLE statuses ADD COLUMN reason text;
ALTER TABLE devices ADD COLUMN online boolean NOT NULL DEFAULT false;
