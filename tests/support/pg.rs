//! A PostgreSQL server for the tests (SPEC T1), found in this order: `TEST_DATABASE_URL`; a
//! `postgres:15-alpine` container when a Docker engine answers; a throwaway cluster from the
//! machine's `initdb`/`pg_ctl`; else none — which is a visible skip, or a failure under `CI`.
//! One server per test binary; every test gets a database of its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

static SERVER: OnceLock<Option<String>> = OnceLock::new();
/// Teardown work (stop the cluster, remove the container) run when the test process exits:
/// statics are never dropped.
static AT_EXIT: Mutex<Vec<Box<dyn FnOnce() + Send>>> = Mutex::new(Vec::new());

/// Admin URL of the test server, or `None` (after saying so on the terminal) when there is none.
pub fn server_url() -> Option<&'static str> {
    // On a thread of its own: testcontainers' blocking runner starts a runtime, which may not
    // happen inside the test's runtime.
    SERVER
        .get_or_init(|| std::thread::spawn(find_server).join().ok().flatten())
        .as_deref()
}

/// Reports a PostgreSQL test as skipped, on stderr directly (libtest captures `eprintln!`), or
/// fails it when `CI` is set.
pub fn skip(test: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: no PostgreSQL available and CI is set (set TEST_DATABASE_URL)");
    }
    let _ = writeln!(std::io::stderr(), "{test}: skipped: no PostgreSQL");
}

fn find_server() -> Option<String> {
    if let Ok(url) = std::env::var("TEST_DATABASE_URL")
        && !url.is_empty()
    {
        return Some(url);
    }
    if let Some(url) = start_container() {
        return Some(url);
    }
    start_cluster("")
}

/// Runs `work` when the test process exits (for what lives in a static and is never dropped).
pub fn at_exit(work: Box<dyn FnOnce() + Send>) {
    register_at_exit(work);
}

fn register_at_exit(work: Box<dyn FnOnce() + Send>) {
    extern "C" fn run_at_exit() {
        let jobs = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
        for job in jobs {
            job();
        }
    }
    let mut jobs = AT_EXIT.lock().unwrap_or_else(|e| e.into_inner());
    if jobs.is_empty() {
        // SAFETY: `run_at_exit` is a plain `extern "C" fn` with no arguments, as atexit needs.
        unsafe {
            libc::atexit(run_at_exit);
        }
    }
    jobs.push(work);
}

fn start_container() -> Option<String> {
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::ImageExt;
    use testcontainers_modules::testcontainers::runners::SyncRunner;
    // Without a Docker engine this fails within milliseconds.
    let container = Postgres::default().with_tag("15-alpine").start().ok()?;
    let port = container.get_host_port_ipv4(5432).ok()?;
    register_at_exit(Box::new(move || drop(container)));
    Some(format!(
        "postgres://postgres:postgres@127.0.0.1:{port}/postgres"
    ))
}

/// A cluster in a temporary directory, as the `postgres` user when we are root (initdb refuses
/// root), on a free port, with fsync off: it only has to outlive this test process.
/// `synchronous_commit` stays at its default, `on`: H9's test reads it as our server's.
/// `extra_options` are more `-c name=value` server settings (they win over ours); `None` when
/// the machine has no PostgreSQL binaries or the cluster does not start.
pub fn start_cluster(extra_options: &str) -> Option<String> {
    let bin = postgres_bindir()?;
    let dir = tempfile::Builder::new()
        .prefix("registrar-pg-")
        .tempdir()
        .ok()?
        .keep();
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(&dir)
            .status()
            .ok()?;
    }
    let data = dir.join("data");
    let run = |program: &str, args: &[&str]| -> bool {
        let exe = bin.join(program);
        let mut cmd = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let data_s = data.to_str()?;
    if !run(
        "initdb",
        &["-N", "-A", "trust", "-U", "postgres", "-D", data_s],
    ) {
        return None;
    }
    let port = free_port()?;
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
         -c max_connections=300 {extra_options}",
        dir.display()
    );
    let log = dir.join("log");
    if !run(
        "pg_ctl",
        &[
            "-D",
            data_s,
            "-o",
            &options,
            "-l",
            log.to_str()?,
            "-w",
            "start",
        ],
    ) {
        return None;
    }
    let stop_bin = bin.clone();
    let stop_data = data.clone();
    let stop_dir = dir.clone();
    register_at_exit(Box::new(move || {
        let exe = stop_bin.join("pg_ctl");
        let mut cmd = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let _ = cmd
            .args(["-D"])
            .arg(&stop_data)
            .args(["-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(stop_dir);
    }));
    Some(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

fn postgres_bindir() -> Option<PathBuf> {
    let has = |dir: &Path| dir.join("initdb").exists() && dir.join("pg_ctl").exists();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| has(d))
        .collect();
    versions.sort();
    versions.pop()
}

fn free_port() -> Option<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    Some(listener.local_addr().ok()?.port())
}

/// The server's URL with another database name.
pub fn with_database(admin_url: &str, database: &str) -> String {
    let mut url = url::Url::parse(admin_url).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}
