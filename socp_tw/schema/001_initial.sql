-- socp-tw database, schema version 1 (PROTOCOL.md §3).
-- Applied by socp_tw.services.store.migrate() inside one transaction, which then
-- records the version in schema_version.  Never edit a released file: add
-- NNN_description.sql with the next number instead.

CREATE TABLE schema_version (
    version INTEGER NOT NULL
);

-- Registered users (privkey_store and pake_password set) and TOFU-pinned ids of
-- other implementations' clients (both NULL).  Ids compare case-insensitively so
-- a look-alike spelling of a known id cannot be pinned beside it.
CREATE TABLE users (
    user_id       TEXT PRIMARY KEY COLLATE NOCASE,
    pubkey        TEXT NOT NULL,              -- b64u(DER SPKI), RSA-4096
    privkey_store TEXT,                       -- "socp-keystore-v1." blob (sealed by the client)
    pake_password TEXT,                       -- "socp-srp6a-v1." SRP verifier
    meta          TEXT NOT NULL DEFAULT '{}', -- JSON object
    version       INTEGER NOT NULL DEFAULT 1,
    created_at    INTEGER NOT NULL,           -- Unix ms
    CHECK ((privkey_store IS NULL) = (pake_password IS NULL))
);

CREATE TABLE groups (
    group_id   TEXT PRIMARY KEY,
    creator_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,              -- Unix ms
    meta       TEXT NOT NULL DEFAULT '{}',    -- JSON object
    version    INTEGER NOT NULL DEFAULT 0     -- bumped on every join or leave
);

CREATE TABLE group_members (
    group_id    TEXT NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
    member_id   TEXT NOT NULL,                -- a user id, local or remote
    role        TEXT NOT NULL DEFAULT 'member',
    wrapped_key TEXT,                         -- the group key wrapped for this member
    added_at    INTEGER NOT NULL,             -- Unix ms
    PRIMARY KEY (group_id, member_id)
);

-- The public channel (PROTOCOL.md §6): every user is a member.
INSERT INTO groups (group_id, creator_id, created_at, meta, version)
VALUES ('public', 'system', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), '{}', 0);
