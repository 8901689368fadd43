-- The P-CSCF role's pcontacts (SPEC S1, P). Times are INTEGER Unix seconds (UTC).
CREATE TABLE pcscf_location (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    domain TEXT NOT NULL DEFAULT 'location',
    aor TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    received TEXT,
    received_port INTEGER,
    received_proto TEXT,
    path TEXT,
    rinstance TEXT,
    rx_session_id TEXT,
    -- Kamailio's values: 2 REGISTERED, 4 REG_PENDING, 16 DEREGISTERED, 32 DEREG_PENDING_PUBLISH
    reg_state INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    service_routes TEXT,
    socket TEXT,
    public_ids TEXT,
    claimed_by TEXT,
    claimed_until INTEGER,
    publish_attempts INTEGER NOT NULL DEFAULT 0,
    next_publish_at INTEGER,
    published_ids TEXT,
    last_modified INTEGER NOT NULL DEFAULT (unixepoch())
);

CREATE UNIQUE INDEX pcscf_location_contact_idx ON pcscf_location (host, port, protocol);
CREATE INDEX pcscf_location_aor_idx ON pcscf_location (aor);
CREATE INDEX pcscf_location_state_expires_idx ON pcscf_location (reg_state, expires);
