-- socp-tw database, schema version 2: the public channel's replicated state
-- (docs/PUBLIC-CHANNEL.md).  Applied by socp_tw.services.store.migrate().
--
-- The membership of a group is a CRDT that every server of the mesh merges:
--  * group_origins: per server that made membership events, the highest event
--    sequence number known (a grow-only counter per origin);
--    groups.version is their sum, so every join and every leave bumps it by one
--    and two servers that know the same events agree on it, whatever the order;
--  * group_member_state: per member, the newest membership event known
--    (last writer wins by lamport, then origin id, then seq).  Rows of members who
--    left stay (present = 0) so an older "join" arriving late cannot resurrect them.
-- group_members holds the current members only (present = 1), each with the group
-- key of groups.meta.key_version wrapped for it.

CREATE TABLE group_origins (
    group_id  TEXT NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
    origin_id TEXT NOT NULL,                  -- server id that made the events
    seq       INTEGER NOT NULL CHECK (seq >= 0),
    PRIMARY KEY (group_id, origin_id)
);

CREATE TABLE group_member_state (
    group_id  TEXT NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
    member_id TEXT NOT NULL,                  -- a user id, local or remote
    present   INTEGER NOT NULL CHECK (present IN (0, 1)),
    lamport   INTEGER NOT NULL CHECK (lamport >= 1),
    origin_id TEXT NOT NULL,                  -- server that made this event
    seq       INTEGER NOT NULL CHECK (seq >= 1),
    host_id   TEXT NOT NULL,                  -- server hosting the member at the event
    pubkey    TEXT,                           -- b64u(DER SPKI) of the member (joins only)
    PRIMARY KEY (group_id, member_id)
);
