-- Reg-event subscriptions (SPEC E1); see the PostgreSQL migration for the columns. Times are
-- INTEGER Unix seconds (UTC), except `created`: Unix microseconds, so that a change in the same
-- second as a subscription is NOTIFYed to it only if it came after (a REGISTER's 200 and the
-- SUBSCRIBE that follows it fit in one millisecond on loopback).
CREATE TABLE reg_subscription (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL,
    domain TEXT NOT NULL,
    call_id TEXT NOT NULL,
    from_tag TEXT NOT NULL,
    to_tag TEXT NOT NULL,
    local_uri TEXT NOT NULL,
    remote_uri TEXT NOT NULL,
    remote_target TEXT NOT NULL,
    route_set TEXT,
    send_to TEXT NOT NULL,
    local_cseq INTEGER NOT NULL,
    remote_cseq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    notified_until INTEGER NOT NULL,
    claimed_by TEXT,
    claimed_until INTEGER,
    created INTEGER NOT NULL
);

CREATE UNIQUE INDEX reg_subscription_dialog_idx ON reg_subscription (call_id, from_tag, to_tag);
CREATE INDEX reg_subscription_aor_idx ON reg_subscription (username, domain);
