//! How `crate::admin`'s records are shown: aligned text for people, JSON for scripts (SPEC
//! C2: timestamps RFC 3339 UTC, an unspecified q as null).

use serde::Serialize;
use serde_json::Value;
#[cfg(test)]
use serde_json::json;

pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("registrar: cannot render JSON: {e}"),
    }
}

/// Bindings or pcontacts (`crate::admin`'s JSON): as JSON, or one text block each.
pub fn print_records(values: &[Value], json: bool) {
    if json {
        print_json(&values);
    } else {
        print_blocks(values, "contact");
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
}
