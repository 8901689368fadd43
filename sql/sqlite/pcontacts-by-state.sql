-- P-CSCF contacts by registration state (SPEC S5). reg_state holds Kamailio's integers:
--   2 REGISTERED, 4 REG_PENDING, 16 DEREGISTERED, 32 DEREG_PENDING_PUBLISH.
-- pcscf_location is never filtered by expiry: expired rows are part of the state machine.
SELECT CASE reg_state
         WHEN 2 THEN 'REGISTERED'
         WHEN 4 THEN 'REG_PENDING'
         WHEN 16 THEN 'DEREGISTERED'
         WHEN 32 THEN 'DEREG_PENDING_PUBLISH'
         ELSE 'UNKNOWN(' || reg_state || ')'
       END AS state,
       aor AS contact, host, port, protocol,
       datetime(expires, 'unixepoch') AS expires_utc,
       expires - unixepoch() AS seconds_left,
       public_ids, service_routes, claimed_by,
       datetime(claimed_until, 'unixepoch') AS claimed_until_utc, publish_attempts
  FROM pcscf_location
 ORDER BY reg_state, expires;
