-- socp-tw database, schema version 4: store-and-forward (docs/MESH.md "Held messages").
-- Applied by socp_tw.services.store.migrate().
--
-- held_messages: DMs this server accepted for a user who is offline or whose server is
-- unreachable, in the order they were accepted (seq), until they are handed over or expire.
-- A row is written before the sender is told "queued", so it survives a restart or kill -9.
CREATE TABLE held_messages (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient  TEXT NOT NULL COLLATE NOCASE,
    sender     TEXT NOT NULL COLLATE NOCASE,
    ts         INTEGER NOT NULL,             -- the sender's original ts (Unix ms)
    ref        TEXT NOT NULL UNIQUE,         -- b64u(sha256(content_sig)[:16]), services/delivery.py
    ciphertext TEXT NOT NULL,
    content_sig TEXT NOT NULL,
    sender_pub TEXT NOT NULL,
    size       INTEGER NOT NULL,             -- bytes counted against the bounds
    held_at    INTEGER NOT NULL              -- Unix ms
);
CREATE INDEX held_messages_by_recipient ON held_messages (recipient, seq);

-- delivered_refs: held DMs this server delivered to its own users, kept for the retention
-- period so that a replayed (or re-sent) held delivery is recognised and not shown twice.
CREATE TABLE delivered_refs (
    ref TEXT PRIMARY KEY,
    at  INTEGER NOT NULL                     -- Unix ms
);
