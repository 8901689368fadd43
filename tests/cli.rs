//! The built `registrar` binary's commands (SPEC C2–C6), on both backends.

mod support;

use registrar::store::Backend;
use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn registrar(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("run registrar")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// C6: a failure is exactly one line on stderr and a non-zero exit.
fn assert_one_line_failure(o: &Output, mentions: &str) {
    assert!(!o.status.success(), "expected failure, got {o:?}");
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(
        err.contains(mentions),
        "{err:?} does not mention {mentions:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

both_backends!(c5_migrate_applies_then_reports_up_to_date, |db| {
    db.drop_schema().await;
    let first = registrar(&db.url, &["migrate"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains(
            "applied V1__location, V2__pcscf_location, V3__subscriber, V4__reg_subscription, \
             V5__pcscf_subscription"
        ),
        "{}",
        stdout(&first)
    );
    let second = registrar(&db.url, &["migrate"]);
    assert!(
        stdout(&second).contains(&format!(
            "schema up to date at version {}",
            support::schema_version()
        )),
        "{}",
        stdout(&second)
    );
    if db.backend() == Backend::Postgres {
        // S6: Kamailio's version table says location is at version 9; A2: subscriber at 7.
        assert_eq!(
            db.scalar("SELECT table_version::bigint FROM version WHERE table_name = 'location'")
                .await,
            9
        );
        assert_eq!(
            db.scalar("SELECT table_version::bigint FROM version WHERE table_name = 'subscriber'")
                .await,
            7
        );
    }
});

both_backends!(c2_c4_add_then_show_round_trips_every_field, |db| {
    let add = registrar(
        &db.url,
        &[
            "contacts",
            "add",
            "sip:Alice@Example.com",
            "sip:alice@192.0.2.1:5060",
            "--expires",
            "600",
            "--q",
            "0.5",
        ],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let show = registrar(
        &db.url,
        &["contacts", "show", "sip:alice@example.com", "--json"],
    );
    assert!(show.status.success(), "{}", stderr(&show));
    let list: Value = serde_json::from_str(&stdout(&show)).expect("JSON");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 1);
    let b = &list[0];
    assert_eq!(b["aor"], "sip:alice@example.com");
    assert_eq!(b["contact"], "sip:alice@192.0.2.1:5060");
    assert_eq!(b["q"], 0.5);
    assert_eq!(b["cseq"], 1);
    assert_eq!(b["user_agent"], "registrar-cli");
    assert!(b["callid"].as_str().unwrap().starts_with("cli-"));
    let left = b["expires_in"].as_i64().unwrap();
    assert!((598..=600).contains(&left), "{left}");
    for field in ["received", "path", "socket", "instance", "methods"] {
        assert!(b[field].is_null(), "{field}: {}", b[field]);
    }
    for field in ["reg_id", "flags", "cflags"] {
        assert_eq!(b[field], 0, "{field}");
    }
    assert!(!b["ruid"].as_str().unwrap().is_empty());
    // Timestamps are RFC 3339 UTC, and the database holds the same instant.
    let expires = chrono::DateTime::parse_from_rfc3339(b["expires"].as_str().unwrap()).unwrap();
    assert!(b["expires"].as_str().unwrap().ends_with('Z'));
    let stored = match db.backend() {
        Backend::Postgres => {
            db.scalar("SELECT floor(extract(epoch FROM expires))::bigint FROM location")
                .await
        }
        Backend::Sqlite => db.scalar("SELECT expires FROM location").await,
    };
    assert_eq!(stored, expires.timestamp());

    // Unknown AoR: an empty list, exit 0.
    let none = registrar(
        &db.url,
        &["contacts", "show", "sip:nobody@example.com", "--json"],
    );
    assert!(none.status.success());
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&none)).unwrap(),
        Value::Array(vec![])
    );

    let dump = registrar(&db.url, &["contacts", "dump", "--json"]);
    let all: Value = serde_json::from_str(&stdout(&dump)).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1);
    let text = registrar(&db.url, &["contacts", "show", "sip:alice@example.com"]);
    assert!(stdout(&text).contains("sip:alice@192.0.2.1:5060"));
});

both_backends!(c3_rm_by_contact_ruid_and_all, |db| {
    for contact in ["sip:a@192.0.2.1", "sip:b@192.0.2.2", "sip:c@192.0.2.3"] {
        assert!(
            registrar(
                &db.url,
                &["contacts", "add", "sip:bob@example.com", contact]
            )
            .status
            .success()
        );
    }
    let one = registrar(
        &db.url,
        &[
            "contacts",
            "rm",
            "sip:bob@example.com",
            "--contact",
            "sip:a@192.0.2.1",
        ],
    );
    assert_eq!(stdout(&one).trim(), "removed 1 binding(s)");
    let show = registrar(
        &db.url,
        &["contacts", "show", "sip:bob@example.com", "--json"],
    );
    let list: Value = serde_json::from_str(&stdout(&show)).unwrap();
    let ruid = list[0]["ruid"].as_str().unwrap().to_string();
    let by_ruid = registrar(
        &db.url,
        &["contacts", "rm", "sip:bob@example.com", "--ruid", &ruid],
    );
    assert_eq!(stdout(&by_ruid).trim(), "removed 1 binding(s)");
    let all = registrar(&db.url, &["contacts", "rm", "sip:bob@example.com"]);
    assert_eq!(stdout(&all).trim(), "removed 1 binding(s)");
    assert_eq!(db.scalar("SELECT count(*) FROM location").await, 0);
});

both_backends!(
    c4_add_follows_max_contacts_and_refuses_permanent_bindings,
    |db| {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("registrar.toml");
        std::fs::write(&config, "[domain.\"example.com\"]\nmax_contacts = 1\n").unwrap();
        let config = config.to_str().unwrap();
        let ok = registrar(
            &db.url,
            &[
                "--config",
                config,
                "contacts",
                "add",
                "sip:carol@example.com",
                "sip:c@192.0.2.1",
            ],
        );
        assert!(ok.status.success(), "{}", stderr(&ok));
        let refused = registrar(
            &db.url,
            &[
                "--config",
                config,
                "contacts",
                "add",
                "sip:carol@example.com",
                "sip:c@192.0.2.2",
            ],
        );
        assert_one_line_failure(&refused, "503");
        let permanent = registrar(
            &db.url,
            &[
                "contacts",
                "add",
                "sip:dave@example.com",
                "sip:d@h",
                "--expires",
                "0",
            ],
        );
        assert_one_line_failure(&permanent, "permanent");
        assert_eq!(db.scalar("SELECT count(*) FROM location").await, 1);
    }
);

both_backends!(c4_pcontacts_show_and_dump, |db| {
    let expires = db.in_seconds(120);
    db.exec(&format!(
        "INSERT INTO pcscf_location (aor, host, port, protocol, reg_state, expires, public_ids) \
         VALUES ('sip:ue@198.51.100.7:5062', '198.51.100.7', 5062, 'udp', 32, {expires}, '<sip:ue@ims.example.com>')"
    ))
    .await;
    let show = registrar(
        &db.url,
        &["pcontacts", "show", "sip:ue@198.51.100.7:5062", "--json"],
    );
    assert!(show.status.success(), "{}", stderr(&show));
    let list: Value = serde_json::from_str(&stdout(&show)).unwrap();
    assert_eq!(list[0]["reg_state"], "DEREG_PENDING_PUBLISH");
    assert_eq!(list[0]["public_ids"][0], "sip:ue@ims.example.com");
    let by_impu = registrar(
        &db.url,
        &["pcontacts", "show", "--aor", "sip:ue@ims.example.com"],
    );
    assert!(stdout(&by_impu).contains("DEREG_PENDING_PUBLISH"));
    let dump = registrar(&db.url, &["pcontacts", "dump"]);
    assert!(stdout(&dump).contains("1 pcontact(s)"));
});

/// Runs the binary with `input` on its standard input.
fn registrar_with_stdin(url: &str, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run registrar");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

both_backends!(a7_users_add_passwd_rm_list_never_show_secrets, |db| {
    let add = registrar(
        &db.url,
        &[
            "users",
            "add",
            "sip:Alice@Example.COM",
            "--password",
            "s3cret",
        ],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    assert_eq!(stdout(&add).trim(), "added user sip:alice@example.com");
    let ha1 = registrar::auth::digest::ha1(
        registrar::auth::Algorithm::Md5,
        "alice",
        "example.com",
        "s3cret",
    );
    let stored = db
        .scalar(&format!(
            "SELECT count(*) FROM subscriber WHERE username = 'alice' AND domain = 'example.com' \
             AND ha1 = '{ha1}' AND password = '' AND ha1b <> '' AND length(ha1_sha256) = 64"
        ))
        .await;
    assert_eq!(stored, 1, "A2: hashes only, keyed as R2 keys the AoR");
    assert_one_line_failure(
        &registrar(
            &db.url,
            &["users", "add", "sip:alice@example.com", "--password", "x"],
        ),
        "exists already",
    );
    let from_stdin = registrar_with_stdin(
        &db.url,
        &[
            "users",
            "passwd",
            "sip:alice@example.com",
            "--password-stdin",
        ],
        "n3w\n",
    );
    assert!(from_stdin.status.success(), "{}", stderr(&from_stdin));
    let new_ha1 = registrar::auth::digest::ha1(
        registrar::auth::Algorithm::Md5,
        "alice",
        "example.com",
        "n3w",
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM subscriber WHERE ha1 = '{new_ha1}'"
        ))
        .await,
        1
    );
    for list in [
        registrar(&db.url, &["users", "list"]),
        registrar(&db.url, &["users", "list", "--json"]),
    ] {
        let out = stdout(&list);
        assert!(out.contains("sip:alice@example.com"), "{out}");
        assert!(!out.contains(&new_ha1) && !out.contains("n3w"), "A7: {out}");
    }
    let json: Value =
        serde_json::from_str(&stdout(&registrar(&db.url, &["users", "list", "--json"]))).unwrap();
    assert_eq!(json[0]["credentials"][0], "ha1");
    assert_one_line_failure(
        &registrar(&db.url, &["users", "add", "sip:bob@example.com"]),
        "--password",
    );
    assert_one_line_failure(
        &registrar_with_stdin(
            &db.url,
            &["users", "add", "sip:bob@example.com", "--password-stdin"],
            "",
        ),
        "empty",
    );
    let rm = registrar(&db.url, &["users", "rm", "sip:alice@example.com"]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert_one_line_failure(
        &registrar(&db.url, &["users", "rm", "sip:alice@example.com"]),
        "no user",
    );
    assert_eq!(db.scalar("SELECT count(*) FROM subscriber").await, 0);
});

#[test]
fn c6_user_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    assert_one_line_failure(
        &registrar(&url, &["contacts", "show", "alice@example.com"]),
        "alice@example.com",
    );
    assert_one_line_failure(
        &registrar(&url, &["contacts", "show", "tel:+15550100"]),
        "not SIP",
    );
    assert_one_line_failure(
        &registrar("mysql://root@localhost/x", &["migrate"]),
        "unsupported scheme 'mysql'",
    );
    assert_one_line_failure(
        &registrar(&url, &["serve", "--no-such-flag"]),
        "--no-such-flag",
    );
    assert_one_line_failure(
        &registrar(&url, &["--config", "/nonexistent.toml", "migrate"]),
        "nonexistent.toml",
    );
    assert_one_line_failure(&registrar(&url, &["contacts", "dump"]), "registrar migrate");
    let started = Instant::now();
    let down = registrar(
        "postgres://postgres@127.0.0.1:1/none",
        &["contacts", "dump"],
    );
    assert_one_line_failure(&down, "127.0.0.1:1");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// SPEC H7: every numeric flag has a range checked at start: a value outside it (or one that
/// once panicked on every REGISTER) is one line on stderr, before anything is logged.
#[test]
fn h7_out_of_range_flags_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let cases: &[(&str, &str)] = &[
        ("--notify-window", "1e13"),
        ("--t1-ms", "18446744073709551615"),
        ("--t1-ms", "0"),
        ("--min-expires", "99999999999"),
        ("--max-expires", "4294967295"),
        ("--default-expires", "0"),
        ("--max-contacts", "4000000000"),
        ("--max-contacts-per-register", "0"),
        ("--cleanup-interval", "NaN"),
        ("--cleanup-grace", "-1"),
        ("--max-message-size", "10"),
        ("--tcp-idle-timeout", "inf"),
        ("--retry-after", "99999"),
        ("--retrans-cache-bytes", "99999999999999"),
        ("--udp-recv-buffer", "1024"),
        ("--db-pool-size", "0"),
        ("--db-connect-timeout", "1e300"),
        ("--audit-interval", "0"),
        ("--audit-grace", "1e10"),
        ("--pending-expires", "0"),
        ("--publish-backoff", "0"),
        ("--publish-max-attempts", "1000"),
        ("--nonce-expires", "0"),
        ("--auth-fail-limit", "0"),
        ("--auth-ban", "1e9"),
        ("--request-deadline", "0"),
        ("--tcp-max-inflight", "0"),
        ("--tcp-write-timeout", "0"),
        ("--tcp-message-timeout", "1e6"),
        ("--tcp-max-per-ip", "0"),
        ("--tcp-max-connections", "0"),
        ("--server-id", "-1"),
        ("--notify-from", "10.0.0.0/33"),
    ];
    for (flag, value) in cases {
        let started = Instant::now();
        let arg = format!("{flag}={value}");
        let out = registrar(&url, &["serve", "--listen", "udp:127.0.0.1:0", &arg]);
        assert_one_line_failure(&out, flag);
        assert!(started.elapsed() < Duration::from_secs(5), "{flag} {value}");
    }
    // The same ranges hold for config-file keys.
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "notify_window = 1e13\n").unwrap();
    assert_one_line_failure(
        &registrar(&url, &["--config", config.to_str().unwrap(), "migrate"]),
        "notify-window",
    );
}

both_backends!(h8_contacts_add_applies_the_policy_serve_applies, |db| {
    let add = |contact: &str, extra: &[&str]| {
        let mut args = vec!["contacts", "add", "sip:Hans@example.com", contact];
        args.extend_from_slice(extra);
        registrar(&db.url, &args)
    };
    assert!(
        add("sip:h@192.0.2.1", &["--max-contacts", "1"])
            .status
            .success()
    );
    let refused = add("sip:h@192.0.2.2", &["--max-contacts", "1"]);
    assert_one_line_failure(&refused, "503");
    // --case-sensitive keys the AoR as serve would: a second user, not the same one.
    let out = add(
        "sip:h@192.0.2.3",
        &["--max-contacts", "1", "--case-sensitive"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        db.scalar("SELECT count(*) FROM location WHERE username = 'Hans'")
            .await,
        1
    );
    // --max-expires clamps an administrative binding too.
    let out = add(
        "sip:h@192.0.2.4",
        &[
            "--max-contacts",
            "0",
            "--max-expires",
            "120",
            "--expires",
            "600",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let json = registrar(
        &db.url,
        &["contacts", "show", "sip:hans@example.com", "--json"],
    );
    let bindings: Value = serde_json::from_slice(&json.stdout).unwrap();
    let clamped = bindings
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["contact"] == "sip:h@192.0.2.4")
        .unwrap();
    assert!(clamped["expires_in"].as_i64().unwrap() <= 120, "{clamped}");
});
