//! The administrative operations the CLI and the HTTP API share (SPEC C2–C4, A7, O3): one
//! implementation each, returning the JSON both print. Neither edge holds logic of its own:
//! the CLI renders these values as text or JSON, the API sends them.

use crate::regevent::RegEvents;
use crate::regevent::change::{self, ContactEvent};
use crate::sip::aor::{AorError, aor_uri};
use crate::store::{
    Aor, Binding, Pcontact, Removal, Store, StoreError, Subscriber, split_uri_list,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use thiserror::Error;

/// Longest password accepted (hashing does not care; a line this long is a mistake).
pub const MAX_PASSWORD: usize = 1024;
/// Most bindings in one page of the paged dump.
pub const MAX_PAGE: u32 = 1000;

#[derive(Debug, Error)]
pub enum AdminError {
    #[error("invalid AoR '{input}': {source}")]
    Aor { input: String, source: AorError },
    /// The request itself is wrong (a bad cursor, an empty password).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An AoR keyed as `serve` keys it (R2, H8).
pub fn parse_aor(input: &str, case_sensitive: bool) -> Result<Aor, AdminError> {
    crate::sip::aor::parse_aor(input, case_sensitive).map_err(|source| AdminError::Aor {
        input: input.to_string(),
        source,
    })
}

/// C2: the live bindings of an AoR, in reply order, every attribute.
pub async fn bindings(store: &Store, aor: &Aor) -> Result<Vec<Value>, AdminError> {
    let mut snapshot = store.live_bindings(aor).await?;
    crate::registrar::reply_order(&mut snapshot.bindings);
    Ok(snapshot
        .bindings
        .iter()
        .map(|b| binding_json(b, snapshot.now))
        .collect())
}

/// C3: removes every binding of an AoR, or the one named; how many live ones went. With the
/// server's reg-event service (the API), the AoR's subscribers hear of it, `deactivated`
/// (SPEC E2); the CLI runs without one (see README).
pub async fn remove_bindings(
    store: &Store,
    aor: &Aor,
    which: &Removal,
    events: Option<&RegEvents>,
) -> Result<u64, AdminError> {
    let removed = store.remove_bindings(aor, which).await?;
    let count = removed.len() as u64;
    if let Some(events) = events.filter(|_| count > 0) {
        let after = store.live_bindings(aor).await?;
        let changes = change::removals(removed, ContactEvent::Deactivated);
        events.changed(aor, changes, after.bindings.len(), after.now);
    }
    Ok(count)
}

/// C4: every live binding, ordered by AoR.
pub async fn dump(store: &Store) -> Result<Vec<Value>, AdminError> {
    let snapshot = store.dump_bindings().await?;
    Ok(snapshot
        .bindings
        .iter()
        .map(|b| binding_json(b, snapshot.now))
        .collect())
}

/// O3: one page of the live bindings, `{"bindings": [...], "next": CURSOR|null}`. The cursor
/// is opaque to clients (today the last binding's row id, in hex).
pub async fn page(store: &Store, after: Option<&str>, limit: u32) -> Result<Value, AdminError> {
    let after = match after {
        None | Some("") => 0,
        Some(cursor) => i64::from_str_radix(cursor, 16)
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| AdminError::Invalid(format!("invalid cursor '{}'", shown(cursor))))?,
    };
    if limit == 0 || limit > MAX_PAGE {
        return Err(AdminError::Invalid(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let snapshot = store.bindings_page(after, limit).await?;
    let next = (snapshot.bindings.len() == limit as usize)
        .then(|| snapshot.bindings.last().map(|b| format!("{:x}", b.id)))
        .flatten();
    let bindings: Vec<Value> = snapshot
        .bindings
        .iter()
        .map(|b| binding_json(b, snapshot.now))
        .collect();
    Ok(json!({ "bindings": bindings, "next": next }))
}

/// C4: the pcontacts of a public identity.
pub async fn pcontacts_of(store: &Store, impu: &str) -> Result<Vec<Value>, AdminError> {
    let now = Utc::now();
    Ok(store
        .pcontacts_by_impu(impu)
        .await?
        .iter()
        .map(|p| pcontact_json(p, now))
        .collect())
}

/// A7: a password we are willing to hash.
pub fn check_password(password: &str) -> Result<(), AdminError> {
    if password.is_empty() {
        return Err(AdminError::Invalid("the password is empty".into()));
    }
    if password.len() > MAX_PASSWORD || password.contains(|c: char| c.is_control()) {
        return Err(AdminError::Invalid(format!(
            "the password must be at most {MAX_PASSWORD} bytes without control characters"
        )));
    }
    Ok(())
}

/// A7 `users add`: a new user; an existing one is a conflict.
pub async fn add_user(store: &Store, aor: &Aor, password: &str) -> Result<(), AdminError> {
    check_password(password)?;
    let credentials = crate::auth::credentials_for(&aor.username, &aor.domain, password);
    if !store.add_subscriber(aor, &credentials).await? {
        return Err(AdminError::Conflict(format!(
            "user {} exists already (use `users passwd` to change its password)",
            aor_uri(aor)
        )));
    }
    Ok(())
}

/// A7 `users passwd`: an existing user's new password.
pub async fn set_password(store: &Store, aor: &Aor, password: &str) -> Result<(), AdminError> {
    check_password(password)?;
    let credentials = crate::auth::credentials_for(&aor.username, &aor.domain, password);
    if !store.set_credentials(aor, &credentials).await? {
        return Err(AdminError::NotFound(format!("no user {}", aor_uri(aor))));
    }
    Ok(())
}

/// O3 `PUT /v1/users/{aor}`: creates the user or changes its password; `true` when created.
pub async fn put_user(store: &Store, aor: &Aor, password: &str) -> Result<bool, AdminError> {
    match add_user(store, aor, password).await {
        Ok(()) => Ok(true),
        Err(AdminError::Conflict(_)) => set_password(store, aor, password).await.map(|()| false),
        Err(e) => Err(e),
    }
}

pub async fn remove_user(store: &Store, aor: &Aor) -> Result<(), AdminError> {
    if !store.remove_subscriber(aor).await? {
        return Err(AdminError::NotFound(format!("no user {}", aor_uri(aor))));
    }
    Ok(())
}

/// A7 `users list`: who can authenticate, with which kinds of credential (never the values).
pub async fn users(store: &Store) -> Result<Vec<Value>, AdminError> {
    Ok(store.subscribers().await?.iter().map(user_json).collect())
}

/// Which credentials a row holds, by name.
pub fn held(s: &Subscriber) -> Vec<&'static str> {
    let mut held = Vec::new();
    if !s.password.is_empty() {
        held.push("password");
    }
    if !s.ha1.is_empty() {
        held.push("ha1");
    }
    if !s.ha1b.is_empty() {
        held.push("ha1b");
    }
    if s.ha1_sha256.as_ref().is_some_and(|h| !h.is_empty()) {
        held.push("ha1_sha256");
    }
    held
}

fn user_json(s: &Subscriber) -> Value {
    json!({
        "aor": aor_uri(&s.aor),
        "username": s.aor.username,
        "domain": s.aor.domain,
        "credentials": held(s),
        "id": s.id,
    })
}

/// Input quoted back in an error, cut short and without control characters.
fn shown(input: &str) -> String {
    input
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn seconds_left(expires: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    let ms = (expires - now).num_milliseconds();
    (ms + 999).div_euclid(1000)
}

/// SPEC C2's JSON of a binding: timestamps RFC 3339 UTC, an unspecified q as null.
pub fn binding_json(b: &Binding, now: DateTime<Utc>) -> Value {
    json!({
        "aor": aor_uri(&b.aor),
        "contact": b.contact,
        "expires": time(b.expires),
        "expires_in": seconds_left(b.expires, now),
        "q": b.q.map(|q| f64::from(q) / 1000.0),
        "callid": b.callid,
        "cseq": b.cseq,
        "received": b.received,
        "path": b.path,
        "user_agent": b.user_agent,
        "socket": b.socket,
        "instance": b.instance,
        "reg_id": b.reg_id,
        "ruid": b.ruid,
        "flags": b.flags,
        "cflags": b.cflags,
        "methods": b.methods,
        "last_modified": time(b.last_modified),
        "server_id": b.server_id,
        "connection_id": b.connection_id,
        "keepalive": b.keepalive,
        "partition": b.partition,
        "id": b.id,
    })
}

/// SPEC C4's JSON of a pcontact, its state by name.
pub fn pcontact_json(p: &Pcontact, now: DateTime<Utc>) -> Value {
    let list = |v: &Option<String>| v.as_deref().map(split_uri_list).unwrap_or_default();
    json!({
        "id": p.id,
        "contact": p.aor,
        "host": p.address.host,
        "port": p.address.port,
        "protocol": p.address.protocol,
        "reg_state": p.reg_state.name(),
        "reg_state_value": p.reg_state.to_column(),
        "expires": time(p.expires),
        "expires_in": seconds_left(p.expires, now),
        "public_ids": list(&p.public_ids),
        "service_routes": list(&p.service_routes),
        "received": p.received,
        "received_port": p.received_port,
        "received_proto": p.received_proto,
        "path": p.path,
        "rinstance": p.rinstance,
        "socket": p.socket,
        "claimed_by": p.claimed_by,
        "claimed_until": p.claimed_until.map(time),
        "publish_attempts": p.publish_attempts,
        "next_publish_at": p.next_publish_at.map(time),
        "published_ids": list(&p.published_ids),
        "last_modified": time(p.last_modified),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_seconds_round_up() {
        let now = Utc::now();
        assert_eq!(
            seconds_left(now + chrono::TimeDelta::milliseconds(3_599_500), now),
            3600
        );
        assert_eq!(
            seconds_left(now + chrono::TimeDelta::seconds(600), now),
            600
        );
    }

    #[test]
    fn o3_passwords_are_checked_and_bad_input_is_quoted_safely() {
        assert!(check_password("").is_err());
        assert!(check_password("a\nb").is_err());
        assert!(check_password(&"x".repeat(MAX_PASSWORD + 1)).is_err());
        assert!(check_password("secret").is_ok());
        assert_eq!(shown("a\u{1b}b"), "a?b");
        assert_eq!(shown(&"z".repeat(100)).len(), 64);
    }
}
