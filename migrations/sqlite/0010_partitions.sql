-- Cluster mode (PostgreSQL only; kept here so both back ends share one schema history): how far storage holds each partition of the shared stream, and the fencing
-- token of the node that writes it now. A node that claims a partition raises the token; every
-- batch checks it in its own transaction, so a node that lost the partition cannot commit.
CREATE TABLE partition_log (
    partition int PRIMARY KEY,
    stored_seq integer NOT NULL,
    lease_token integer NOT NULL,
    claimed_by text,
    claimed_at text
);
