-- The registrar role's bindings, in Kamailio's `location` layout (SPEC S1). Times are INTEGER
-- Unix seconds (UTC): sqlx's text encoding of timestamps does not compare correctly with
-- datetime('now'). Render them with datetime(expires, 'unixepoch').
CREATE TABLE location (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ruid TEXT NOT NULL,
    username TEXT NOT NULL,
    domain TEXT NOT NULL,
    contact TEXT NOT NULL,
    received TEXT,
    path TEXT,
    expires INTEGER NOT NULL,
    q REAL NOT NULL DEFAULT -1,
    callid TEXT NOT NULL,
    cseq INTEGER NOT NULL DEFAULT 1,
    last_modified INTEGER NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    cflags INTEGER NOT NULL DEFAULT 0,
    user_agent TEXT,
    socket TEXT,
    methods INTEGER,
    instance TEXT,
    reg_id INTEGER NOT NULL DEFAULT 0,
    server_id INTEGER NOT NULL DEFAULT 0,
    connection_id INTEGER NOT NULL DEFAULT 0,
    keepalive INTEGER NOT NULL DEFAULT 0,
    partition INTEGER NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX location_ruid_idx ON location (ruid);
CREATE UNIQUE INDEX location_account_contact_idx ON location (username, domain, contact);
CREATE UNIQUE INDEX location_instance_idx ON location (username, domain, instance, reg_id)
    WHERE instance IS NOT NULL;
CREATE INDEX location_expires_idx ON location (expires);
