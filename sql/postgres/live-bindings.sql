-- Live bindings per AoR (SPEC S5), best q first as the registrar lists them in its 200 OK.
-- A binding is live while expires > now(); q = -1 means "unspecified" (listed as 1.0).
-- One AoR only: add  AND username = 'alice' AND domain = 'example.com'  to the WHERE clause.
SELECT username || '@' || domain AS aor,
       contact,
       expires,
       ceil(extract(epoch FROM expires - now()))::int AS seconds_left,
       CASE WHEN q < 0 THEN NULL ELSE q END AS q,
       callid, cseq, received, path, user_agent, socket, instance, reg_id, ruid, server_id,
       last_modified
  FROM location
 WHERE expires > now()
 ORDER BY domain, username, CASE WHEN q < 0 THEN 1 ELSE q END DESC, last_modified DESC;
