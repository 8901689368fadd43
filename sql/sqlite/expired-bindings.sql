-- Bindings that have expired but are still in the table (SPEC S5). They are invisible to the
-- registrar already; the cleanup task deletes them once they are older than --cleanup-grace
-- (default 60 s), checking every --cleanup-interval (default 30 s).
SELECT username || '@' || domain AS aor,
       contact,
       datetime(expires, 'unixepoch') AS expires_utc,
       unixepoch() - expires AS seconds_since_expiry,
       callid, cseq, user_agent, ruid
  FROM location
 WHERE expires <= unixepoch()
 ORDER BY expires;
