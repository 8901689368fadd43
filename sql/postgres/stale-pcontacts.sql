-- Stale pcontacts awaiting PUBLISH (SPEC S5, P4, P5): already claimed for the expiry PUBLISH
-- (reg_state 32 = DEREG_PENDING_PUBLISH), or expired for 60 s or more (notify window 20 s +
-- audit grace 40 s, the defaults) so that the next audit will claim them. Adjust the interval
-- if you run with other --notify-window / --audit-grace values.
SELECT CASE reg_state WHEN 32 THEN 'publishing' ELSE 'due' END AS status,
       aor AS contact, host, port, protocol, reg_state,
       expires,
       floor(extract(epoch FROM now() - expires))::int AS seconds_since_expiry,
       public_ids, published_ids, claimed_by, claimed_until, publish_attempts, next_publish_at
  FROM pcscf_location
 WHERE reg_state = 32
    OR (reg_state = 2 AND expires < now() - interval '60 seconds')
 ORDER BY expires;
