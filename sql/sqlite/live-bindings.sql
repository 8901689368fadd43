-- Live bindings per AoR (SPEC S5), best q first as the registrar lists them in its 200 OK.
-- Times are Unix seconds (UTC), rendered with datetime(…, 'unixepoch').
-- A binding is live while expires > now; q = -1 means "unspecified" (listed as 1.0).
-- One AoR only: add  AND username = 'alice' AND domain = 'example.com'  to the WHERE clause.
SELECT username || '@' || domain AS aor,
       contact,
       datetime(expires, 'unixepoch') AS expires_utc,
       expires - unixepoch() AS seconds_left,
       CASE WHEN q < 0 THEN NULL ELSE q END AS q,
       callid, cseq, received, path, user_agent, socket, instance, reg_id, ruid, server_id,
       datetime(last_modified, 'unixepoch') AS last_modified_utc
  FROM location
 WHERE expires > unixepoch()
 ORDER BY domain, username, CASE WHEN q < 0 THEN 1 ELSE q END DESC, last_modified DESC;
