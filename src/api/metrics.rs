//! Prometheus metrics: jobs by state (read from the store at scrape time), claims, auth
//! failures by reason, request latency histogram per API group, sandboxes running.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const GROUPS: [&str; 6] = ["internal", "runtime", "logs", "cache", "health", "other"];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// Counters and gauges of the server.
#[derive(Default)]
pub struct Metrics {
    claims: AtomicU64,
    auth_failures: Mutex<BTreeMap<String, u64>>,
    latency: [Histogram; GROUPS.len()],
    /// Sandboxes the local executor is running now.
    pub sandboxes_running: AtomicI64,
}

impl Metrics {
    pub fn claims(&self, n: u64) {
        self.claims.fetch_add(n, Ordering::Relaxed);
    }

    pub fn auth_failure(&self, reason: &str) {
        if let Ok(mut m) = self.auth_failures.lock() {
            *m.entry(reason.to_string()).or_default() += 1;
        }
    }

    pub fn observe(&self, group: usize, secs: f64) {
        let h = &self.latency[group];
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_us.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    /// Renders the text exposition format.
    pub fn render(&self, job_counts: &[(String, i64)]) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP jobcell_jobs Jobs by state.\n# TYPE jobcell_jobs gauge"
        );
        for st in [
            "queued",
            "claimed",
            "running",
            "completed",
            "failed",
            "timeout",
            "cancelled",
        ] {
            let n = job_counts
                .iter()
                .find(|(s, _)| s == st)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            let _ = writeln!(o, "jobcell_jobs{{state=\"{st}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP jobcell_claims_total Jobs handed out by claims.\n# TYPE jobcell_claims_total counter\njobcell_claims_total {}",
            self.claims.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP jobcell_auth_failures_total Refused requests by reason.\n# TYPE jobcell_auth_failures_total counter"
        );
        if let Ok(m) = self.auth_failures.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(o, "jobcell_auth_failures_total{{reason=\"{reason}\"}} {n}");
            }
        }
        let _ = writeln!(
            o,
            "# HELP jobcell_request_duration_seconds Request latency.\n# TYPE jobcell_request_duration_seconds histogram"
        );
        for (g, name) in GROUPS.iter().enumerate() {
            let h = &self.latency[g];
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "jobcell_request_duration_seconds_bucket{{api=\"{name}\",le=\"{b}\"}} {}",
                    h.buckets[i].load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "jobcell_request_duration_seconds_bucket{{api=\"{name}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                o,
                "jobcell_request_duration_seconds_sum{{api=\"{name}\"}} {}",
                h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                o,
                "jobcell_request_duration_seconds_count{{api=\"{name}\"}} {count}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP jobcell_sandboxes_running Sandboxes running now.\n# TYPE jobcell_sandboxes_running gauge\njobcell_sandboxes_running {}",
            self.sandboxes_running.load(Ordering::Relaxed)
        );
        o
    }
}

fn group_of(path: &str) -> usize {
    let g = if path.starts_with("/api/internal/") {
        "internal"
    } else if path.starts_with("/api/runtime/") {
        "runtime"
    } else if path.starts_with("/api/logs/") {
        "logs"
    } else if path.starts_with("/_apis/") || path.starts_with("/_artifacts/") {
        "cache"
    } else if path == "/healthz" || path == "/metrics" {
        "health"
    } else {
        "other"
    };
    GROUPS
        .iter()
        .position(|x| *x == g)
        .unwrap_or(GROUPS.len() - 1)
}

/// Middleware recording request latency.
pub async fn track_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let group = group_of(req.uri().path());
    let start = Instant::now();
    let resp = next.run(req).await;
    state.metrics.observe(group, start.elapsed().as_secs_f64());
    resp
}

pub async fn metrics_handler(State(state): State<AppState>) -> Response {
    let counts = state.db(|s| s.job_counts()).await.unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&counts),
    )
        .into_response()
}
