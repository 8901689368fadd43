-- Reg-event subscriptions (SPEC E1, E2): who watches which AoR, where its NOTIFYs go, the
-- reginfo version last sent, how long the subscription has left, and the expiry job's claim
-- (set while an `expired` NOTIFY is in flight).
SELECT username || '@' || domain AS aor,
       remote_uri AS watcher, send_to, version, local_cseq,
       expires - unixepoch() AS seconds_left,
       datetime(notified_until, 'unixepoch') AS notified_until_utc, claimed_by,
       datetime(claimed_until, 'unixepoch') AS claimed_until_utc, call_id
  FROM reg_subscription
 ORDER BY domain, username, id;
