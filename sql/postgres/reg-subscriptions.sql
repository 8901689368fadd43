-- Reg-event subscriptions (SPEC E1, E2): who watches which AoR, where its NOTIFYs go, the
-- reginfo version last sent, how long the subscription has left, and the expiry job's claim
-- (set while an `expired` NOTIFY is in flight).
SELECT username || '@' || domain AS aor,
       remote_uri AS watcher, send_to, version, local_cseq,
       floor(extract(epoch FROM expires - now()))::int AS seconds_left,
       notified_until, claimed_by, claimed_until, call_id
  FROM reg_subscription
 ORDER BY domain, username, id;
