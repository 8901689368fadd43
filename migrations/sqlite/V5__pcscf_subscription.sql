-- The P-CSCF's own reg-event subscriptions (SPEC E4); see the PostgreSQL migration for the
-- columns. Times are INTEGER Unix seconds (UTC).
CREATE TABLE pcscf_subscription (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    impu TEXT NOT NULL,
    call_id TEXT NOT NULL,
    from_tag TEXT NOT NULL,
    to_tag TEXT,
    remote_target TEXT,
    route_set TEXT,
    cseq INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    refresh_at INTEGER NOT NULL,
    claimed_by TEXT,
    claimed_until INTEGER,
    created INTEGER NOT NULL DEFAULT (unixepoch())
);

CREATE UNIQUE INDEX pcscf_subscription_contact_idx ON pcscf_subscription (host, port, protocol);
CREATE UNIQUE INDEX pcscf_subscription_call_id_idx ON pcscf_subscription (call_id);
CREATE INDEX pcscf_subscription_refresh_idx ON pcscf_subscription (refresh_at);
