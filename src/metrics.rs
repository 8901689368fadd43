//! Prometheus metrics (SPEC O2): one process-wide registry of atomic counters, gauges and
//! histograms (`prometheus-client`, the Prometheus project's own Rust client: typed label sets,
//! OpenMetrics text that `promtool` checks, no global macros). Recording is a hash lookup of a
//! label set from a small fixed set plus an atomic add, no lock held across an await; values
//! that live in the database (`registrar_bindings`, `registrar_aors`, `pcscf_pcontacts`) are
//! read by the HTTP listener at most every 10 s, never on the request path.
//!
//! Every label value is one of a fixed set of `&'static str`: never request data.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub register_duration: Histogram,
    pub db_errors: Family<KindLabel, Counter>,
    pub db_batch_size: Histogram,
    pub inflight_registers: Gauge,
    pub retrans_cache_hits: Counter,
    pub auth: Family<ResultLabel, Counter>,
    pub bindings: Gauge,
    pub aors: Gauge,
    pub pcscf_refused: Family<ReasonLabel, Counter>,
    pub pcscf_publish: Family<ResultLabel, Counter>,
    pub pcscf_pcontacts: Family<StateLabel, Gauge>,
    pub regevent_notify: Family<ResultLabel, Counter>,
    pub regevent_sent: Family<ResultLabel, Counter>,
    pub tcp_connections: Gauge,
    pub dropped: Family<ReasonLabel, Counter>,
    resident_memory: Gauge<f64, AtomicU64>,
    cpu_seconds: Counter<f64, AtomicU64>,
    open_fds: Gauge,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Methods we count by name; anything else is `other` (a fixed label set).
const METHODS: &[&str] = &[
    "REGISTER",
    "OPTIONS",
    "NOTIFY",
    "SUBSCRIBE",
    "PUBLISH",
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "MESSAGE",
    "INFO",
    "PRACK",
    "UPDATE",
    "REFER",
];

pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .copied()
        .unwrap_or("other")
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            // 0.5 ms to ~4 s.
            register_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            db_errors: Family::default(),
            db_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            inflight_registers: Gauge::default(),
            retrans_cache_hits: Counter::default(),
            auth: Family::default(),
            bindings: Gauge::default(),
            aors: Gauge::default(),
            pcscf_refused: Family::default(),
            pcscf_publish: Family::default(),
            pcscf_pcontacts: Family::default(),
            regevent_notify: Family::default(),
            regevent_sent: Family::default(),
            tcp_connections: Gauge::default(),
            dropped: Family::default(),
            resident_memory: Gauge::default(),
            cpu_seconds: Counter::default(),
            open_fds: Gauge::default(),
        };
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "registrar_requests",
            "Responses sent, by request method and status code (cached retransmission answers included)",
            self.requests.clone(),
        );
        r.register(
            "registrar_register_duration_seconds",
            "REGISTER handling time, receipt to response",
            self.register_duration.clone(),
        );
        r.register(
            "registrar_db_errors",
            "Database failures seen by requests, by kind (unavailable, busy, rejected, other)",
            self.db_errors.clone(),
        );
        r.register(
            "registrar_db_batch_size",
            "REGISTERs per coalesced database transaction",
            self.db_batch_size.clone(),
        );
        r.register(
            "registrar_inflight_registers",
            "REGISTERs being processed now",
            self.inflight_registers.clone(),
        );
        r.register(
            "registrar_retrans_cache_hits",
            "UDP retransmissions answered from the response cache",
            self.retrans_cache_hits.clone(),
        );
        r.register(
            "registrar_auth",
            "Digest authentication outcomes (challenged, ok, failed, stale, banned)",
            self.auth.clone(),
        );
        r.register(
            "registrar_bindings",
            "Live bindings in location (read at most every 10 s)",
            self.bindings.clone(),
        );
        r.register(
            "registrar_aors",
            "AoRs with at least one live binding (read at most every 10 s)",
            self.aors.clone(),
        );
        r.register(
            "pcscf_register_refused",
            "P-CSCF REGISTERs refused during a de-registration (window, publish)",
            self.pcscf_refused.clone(),
        );
        r.register(
            "pcscf_publish",
            "P-CSCF expiry PUBLISH outcomes per identity (ok, retry, given_up)",
            self.pcscf_publish.clone(),
        );
        r.register(
            "pcscf_pcontacts",
            "P-CSCF pcontacts by state (read at most every 10 s)",
            self.pcscf_pcontacts.clone(),
        );
        r.register(
            "regevent_notify",
            "reg-event NOTIFYs received, by result (applied, forbidden, malformed, failed)",
            self.regevent_notify.clone(),
        );
        r.register(
            "regevent_sent",
            "reg-event NOTIFYs the registrar sent, by result (ok, refused, ended, dropped)",
            self.regevent_sent.clone(),
        );
        r.register(
            "transport_tcp_connections",
            "Accepted stream connections open now",
            self.tcp_connections.clone(),
        );
        r.register(
            "transport_dropped",
            "Input dropped unanswered, by reason (unparseable, too_large, overload)",
            self.dropped.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            self.resident_memory.clone(),
        );
        r.register(
            "process_cpu_seconds",
            "User and system CPU time spent in seconds",
            self.cpu_seconds.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors",
            self.open_fds.clone(),
        );
        self
    }

    pub fn response(&self, method: &str, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method_label(method),
                code,
            })
            .inc();
    }

    pub fn auth(&self, result: &'static str) {
        self.auth.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The Prometheus text exposition (format 0.0.4), process figures read now.
    pub fn encode(&self) -> String {
        self.sample_process();
        let mut open_metrics = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry)
        {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        to_prometheus_text(&open_metrics)
    }

    /// RSS, CPU time and open descriptors from /proc (Linux); left as they were elsewhere.
    fn sample_process(&self) {
        let page = 4096.0;
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
            && let Some(rss) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        {
            self.resident_memory.set(rss * page);
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some(after) = stat.rsplit_once(')').map(|(_, a)| a)
        {
            // Fields after the command: state is 3rd overall; utime 14th, stime 15th.
            let fields: Vec<&str> = after.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            if let (Some(u), Some(s)) = (ticks(11), ticks(12))
                && hz > 0.0
            {
                let now = (u + s) / hz;
                let delta = now - self.cpu_seconds.get();
                if delta > 0.0 {
                    self.cpu_seconds.inc_by(delta);
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
    }
}

/// prometheus-client writes OpenMetrics, where a counter's HELP and TYPE name the family
/// (`x`) and its sample is `x_total`; the classic text format that `promtool check metrics`
/// and every Prometheus read wants them to name the sample. Rename those, drop `# EOF`.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 256);
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o2_labels_come_from_fixed_sets() {
        assert_eq!(method_label("register"), "REGISTER");
        assert_eq!(method_label("FOO\r\nX: y"), "other");
    }

    #[test]
    fn o2_exposition_names_every_metric() {
        METRICS.response("REGISTER", 200);
        METRICS.auth("challenged");
        let text = METRICS.encode();
        for name in [
            "registrar_requests_total{method=\"REGISTER\",code=\"200\"}",
            "registrar_register_duration_seconds_bucket",
            "registrar_auth_total{result=\"challenged\"}",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
