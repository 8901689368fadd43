-- Digest credentials (SPEC A2) in Kamailio's auth_db `subscriber` layout, plus our
-- `ha1_sha256`. `password` is empty in rows we write (hashes only); plaintext rows work too.
CREATE TABLE subscriber (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL DEFAULT '',
    domain TEXT NOT NULL DEFAULT '',
    password TEXT NOT NULL DEFAULT '',
    ha1 TEXT NOT NULL DEFAULT '',
    ha1b TEXT NOT NULL DEFAULT '',
    ha1_sha256 TEXT,
    UNIQUE (username, domain)
);
CREATE INDEX subscriber_username_idx ON subscriber (username);
