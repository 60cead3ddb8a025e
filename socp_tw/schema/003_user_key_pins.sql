-- socp-tw database, schema version 3: server-side user key pins (docs/SECURITY.md).
-- Applied by socp_tw.services.store.migrate().
--
-- The first key this server learns for a user id is kept, whichever way it came: a
-- registration here, a first-use USER_HELLO here, or another server's USER_ADVERTISE.
-- Rows of the last kind have no privkey_store / pake_password and name, in home_server,
-- the server whose advertise first carried the user (its home as far as we know);
-- home_server is NULL for users registered or first seen on this server.
ALTER TABLE users ADD COLUMN home_server TEXT;
