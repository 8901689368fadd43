-- Digest credentials (SPEC A2) in Kamailio's auth_db `subscriber` layout (table version 7), so
-- that a Kamailio `auth_db` on this database authenticates our users and we authenticate its.
-- Kamailio's own schema may have been loaded first: hence IF NOT EXISTS / ON CONFLICT.
-- `password` is empty in rows we write (we store hashes only); Kamailio's kamctl writes the
-- plaintext there by default, and such rows work too.
CREATE TABLE IF NOT EXISTS subscriber (
    id SERIAL PRIMARY KEY NOT NULL,
    username VARCHAR(64) DEFAULT '' NOT NULL,
    domain VARCHAR(64) DEFAULT '' NOT NULL,
    password VARCHAR(64) DEFAULT '' NOT NULL,
    ha1 VARCHAR(128) DEFAULT '' NOT NULL,
    ha1b VARCHAR(128) DEFAULT '' NOT NULL,
    CONSTRAINT subscriber_account_idx UNIQUE (username, domain)
);
CREATE INDEX IF NOT EXISTS subscriber_username_idx ON subscriber (username);
INSERT INTO version (table_name, table_version) VALUES ('subscriber', 7)
    ON CONFLICT (table_name) DO NOTHING;

-- Ours: SHA-256(user:realm:password) for RFC 8760 clients. Kamailio ignores the column.
ALTER TABLE subscriber ADD COLUMN IF NOT EXISTS ha1_sha256 VARCHAR(128);
