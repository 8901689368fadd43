//! How bindings and pcontacts are shown: aligned text for people, JSON for scripts (SPEC C2:
//! timestamps RFC 3339 UTC, an unspecified q as null).

use crate::sip::aor::aor_uri;
use crate::store::{Binding, Pcontact, split_uri_list};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Value, json};

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn seconds_left(expires: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    let ms = (expires - now).num_milliseconds();
    (ms + 999).div_euclid(1000)
}

fn binding_json(b: &Binding, now: DateTime<Utc>) -> Value {
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

fn pcontact_json(p: &Pcontact, now: DateTime<Utc>) -> Value {
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

pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("registrar: cannot render JSON: {e}"),
    }
}

pub fn print_bindings(bindings: &[Binding], now: DateTime<Utc>, json: bool) {
    let values: Vec<Value> = bindings.iter().map(|b| binding_json(b, now)).collect();
    if json {
        print_json(&values);
    } else {
        print_blocks(&values, "contact");
    }
}

pub fn print_pcontacts(pcontacts: &[Pcontact], now: DateTime<Utc>, json: bool) {
    let values: Vec<Value> = pcontacts.iter().map(|p| pcontact_json(p, now)).collect();
    if json {
        print_json(&values);
    } else {
        print_blocks(&values, "contact");
    }
}

/// One block per record: the `title` field first, then every field as `name  value`.
fn print_blocks(values: &[Value], title: &str) {
    for value in values {
        let Value::Object(fields) = value else {
            continue;
        };
        let width = fields.keys().map(String::len).max().unwrap_or(0);
        if let Some(t) = fields.get(title) {
            println!("{}", plain(t));
        }
        for (name, v) in fields.iter().filter(|(n, _)| n.as_str() != title) {
            println!("  {name:<width$}  {}", plain(v));
        }
        println!();
    }
}

/// A value for a terminal: control characters escaped (SPEC H7), so that a stored value
/// cannot move the cursor or rewrite what an operator sees.
fn plain(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.chars().any(char::is_control) => s.escape_debug().to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h7_text_output_escapes_control_characters() {
        assert_eq!(
            plain(&json!("Phone\u{1b}[2J\r\nx")),
            "Phone\\u{1b}[2J\\r\\nx"
        );
        assert_eq!(plain(&json!("sip:a@h")), "sip:a@h");
    }

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
}
