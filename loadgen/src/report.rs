//! What a run prints and writes: the banner, the progress line, the final report, and the
//! `--json` document.
//!
//! JSON (version 1) — keys are a contract (issue 4); more may be added, none renamed:
//!
//! ```text
//! { "version": 1, "run_id": "hex", "measured_s": f64,
//!   "produce" | "consume" | "end_to_end": {
//!       "records", "bytes", "records_per_s", "mb_per_s",
//!       "latency_us": {"p50", "p90", "p99", "p999", "p9999", "max", "mean", "count"} },
//!   "produce_detail": {"acked_records", "failed_records", "unsent_scheduled_batches",
//!       "reroutes"},
//!   "errors": n, "errors_by_kind": {kind: n},
//!   "violations": n, "violations_by_kind": {kind: n}, "violation_samples": [text],
//!   "verification": {"records_checked", "other_runs_records", "consumers_drained"},
//!   "producers": n, "consumers": n, "targets": [{node, addr, partition, start_offset,
//!       end_offset_at_start, (`--cluster`:) leader_id, replicas: [{node_id, addr}]}],
//!   "loadgen_cpu_s", "loadgen_cores_run_s", "loadgen_cores_runqueue_wait_s": f64,
//!   "load_average": f64, "exit_code": 0|1|3, "config": {every flag, resolved} }
//! ```
//!
//! Figures: `records` and `bytes` count what happened inside the measured window (acks
//! received, records received, this run's records delivered); rates divide by `measured_s`;
//! MB = 10^6 bytes of record values. Latencies are microseconds: produce from the send (or,
//! open loop, the scheduled send) to the ack; consume from asking (a request, or a
//! subscription credit) to receiving records, which at the tail includes waiting for them;
//! end-to-end from the producer's (scheduled) send to a consumer receiving the record.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::args::RunConfig;
use crate::load::{ConsumerOutcome, ProducerOutcome};
use crate::plan::{Plan, Target};
use crate::stats::{Flow, LatencySummary, Measures};
use crate::verify::Violations;

/// Exit code: the run finished and every record checked out.
pub const EXIT_OK: i32 = 0;
/// Exit code: violations found.
pub const EXIT_VIOLATIONS: i32 = 1;
/// Exit code: bad flags, or the run could not be set up.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: no violations, but requests failed.
pub const EXIT_ERRORS: i32 = 3;

/// One kind of traffic in the report.
#[derive(Debug, Clone, Serialize)]
pub struct FlowReport {
    pub records: u64,
    pub bytes: u64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    pub latency_us: LatencySummary,
}

impl FlowReport {
    fn of(flow: &Flow, measured: Duration) -> FlowReport {
        let secs = measured.as_secs_f64();
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        FlowReport {
            records: flow.records,
            bytes: flow.bytes,
            records_per_s: rate(flow.records),
            mb_per_s: rate(flow.bytes) / 1e6,
            latency_us: LatencySummary::of(&flow.latency),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProduceDetail {
    /// Acknowledged over the whole run (warm-up and drain included).
    pub acked_records: u64,
    /// Sent but not acknowledged (errors, timeouts).
    pub failed_records: u64,
    /// Open loop: batches due before the end that never got an in-flight slot.
    pub unsent_scheduled_batches: u64,
    /// `--cluster`: NOT_LEADER answers followed by resending to the leader (not errors).
    pub reroutes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Records consumers received and checked, over the whole run.
    pub records_checked: u64,
    /// Intact records written by other runs (checked for integrity only).
    pub other_runs_records: u64,
    /// Whether every consumer read all it had to before stopping.
    pub consumers_drained: bool,
}

/// Everything a run found (see the module doc for the JSON shape).
#[derive(Serialize)]
pub struct Report {
    pub version: u32,
    pub run_id: String,
    pub measured_s: f64,
    pub produce: FlowReport,
    pub consume: FlowReport,
    pub end_to_end: FlowReport,
    pub produce_detail: ProduceDetail,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub violations: u64,
    pub violations_by_kind: BTreeMap<String, u64>,
    pub violation_samples: Vec<String>,
    pub verification: Verification,
    pub producers: usize,
    pub consumers: usize,
    pub targets: Vec<Target>,
    pub loadgen_cpu_s: f64,
    /// Time loadgen's core threads ran, and waited runnable for their CPU (another process
    /// had it): a high wait means the host, not the node, set the pace.
    pub loadgen_cores_run_s: f64,
    pub loadgen_cores_runqueue_wait_s: f64,
    /// The host's 1-minute load average at the end of the run.
    pub load_average: Option<f64>,
    pub exit_code: i32,
    pub config: RunConfig,
    /// The window's histograms, for `--hgrm` and `--plot`.
    #[serde(skip)]
    pub window: Measures,
}

/// Builds the report from the merged window and the final check.
pub fn build(
    config: &RunConfig,
    plan: &Plan,
    measured: Duration,
    window: &Measures,
    violations: Violations,
    producers: &[ProducerOutcome],
    consumers: &[ConsumerOutcome],
) -> Report {
    let errors: BTreeMap<String, u64> = window.errors.clone().into_iter().collect();
    let error_total = errors.values().sum();
    let violation_total = violations.total();
    let violations_by_kind = violations
        .by_kind
        .iter()
        .map(|(k, n)| (k.as_str().to_string(), *n))
        .collect();
    let exit_code = if violation_total > 0 {
        EXIT_VIOLATIONS
    } else if error_total > 0 {
        EXIT_ERRORS
    } else {
        EXIT_OK
    };
    let records_checked = consumers
        .iter()
        .map(|c| c.verifier.tracks.values().map(|t| t.seen).sum::<u64>() + c.other_runs)
        .sum();
    Report {
        version: 1,
        run_id: format!("{:016x}", plan.run_id),
        measured_s: measured.as_secs_f64(),
        produce: FlowReport::of(&window.produce, measured),
        consume: FlowReport::of(&window.consume, measured),
        end_to_end: FlowReport::of(&window.end_to_end, measured),
        produce_detail: ProduceDetail {
            acked_records: producers.iter().map(|p| p.acked_records).sum(),
            failed_records: producers
                .iter()
                .map(|p| p.failed.count_in(0, u64::MAX))
                .sum(),
            unsent_scheduled_batches: producers.iter().map(|p| p.unsent_scheduled).sum(),
            reroutes: producers.iter().map(|p| p.reroutes).sum(),
        },
        errors: error_total,
        errors_by_kind: errors,
        violations: violation_total,
        violations_by_kind,
        violation_samples: violations.samples,
        verification: Verification {
            records_checked,
            other_runs_records: consumers.iter().map(|c| c.other_runs).sum(),
            consumers_drained: consumers.iter().all(|c| c.drained),
        },
        producers: plan.producers.len(),
        consumers: plan.consumers.len(),
        targets: plan.targets.clone(),
        loadgen_cpu_s: process_cpu_secs().unwrap_or(0.0),
        loadgen_cores_run_s: 0.0,
        loadgen_cores_runqueue_wait_s: 0.0,
        load_average: load_average(),
        exit_code,
        config: config.clone(),
        window: window.clone(),
    }
}

/// The line printed when the load starts.
pub fn banner(config: &RunConfig, plan: &Plan) -> String {
    let targets: Vec<String> = plan.targets.iter().map(|t| t.label()).collect();
    let mode = match config.rate {
        Some(r) => format!("open loop at {} records/s", thousands(r.round() as u64)),
        None => "closed loop".into(),
    };
    format!(
        "loadgen: run {:016x}: {} producer(s), {} consumer(s) on CPU(s) {:?}; {} B records, {} per \
         request, {} in flight, {mode}; {} s after {} s warm-up; {}",
        plan.run_id,
        plan.producers.len(),
        plan.consumers.len(),
        config.cpus,
        config.record_bytes,
        config.batch_records,
        config.in_flight,
        fmt_secs(config.duration),
        fmt_secs(config.warmup),
        targets.join(", ")
    )
}

/// The per-second progress line: last second's rates, percentiles so far (over the warm-up
/// while in it, then over the measured window).
pub struct Progress {
    warmup: Duration,
    so_far: Measures,
    measuring: bool,
    errors: u64,
    violations: u64,
}

impl Progress {
    pub fn new(warmup: Duration) -> Progress {
        Progress {
            warmup,
            so_far: Measures::default(),
            measuring: false,
            errors: 0,
            violations: 0,
        }
    }

    /// The line for the second ending `second` seconds after the start, `m` being what
    /// happened in it.
    pub fn line(&mut self, second: u64, m: &Measures) -> String {
        let warming = Duration::from_secs(second - 1) < self.warmup;
        if !warming && !self.measuring {
            self.so_far = Measures::default();
            self.measuring = true;
        }
        self.so_far.merge(m);
        self.errors += m.error_count();
        self.violations += m.violations;
        let p = LatencySummary::of(&self.so_far.produce.latency);
        let e = LatencySummary::of(&self.so_far.end_to_end.latency);
        format!(
            "[{second:>4}s{}] produce {:>9} rec/s {:>8.1} MB/s p50 {} p99 {} | consume {:>9} \
             rec/s {:>8.1} MB/s | e2e p50 {} p99 {} | errors {} | violations {}",
            if warming { " warm-up" } else { "" },
            thousands(m.produce.records),
            m.produce.bytes as f64 / 1e6,
            fmt_ms(p.p50),
            fmt_ms(p.p99),
            thousands(m.consume.records),
            m.consume.bytes as f64 / 1e6,
            fmt_ms(e.p50),
            fmt_ms(e.p99),
            self.errors,
            self.violations
        )
    }
}

/// The final report as text.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    let c = &report.config;
    out.push_str(&format!(
        "\nloadgen: {:.2} s measured; {} producer(s), {} consumer(s); {} B records, {} per \
         request, {} in flight; {}\n",
        report.measured_s,
        report.producers,
        report.consumers,
        c.record_bytes,
        c.batch_records,
        c.in_flight,
        match c.rate {
            Some(r) => format!("open loop at {} records/s", thousands(r.round() as u64)),
            None => "closed loop".into(),
        }
    ));
    out.push_str(&format!(
        "{:<11} {:>12} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "",
        "records",
        "rec/s",
        "MB/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "p99.99",
        "max ms"
    ));
    for (name, f) in [
        ("produce", &report.produce),
        ("consume", &report.consume),
        ("end-to-end", &report.end_to_end),
    ] {
        let l = &f.latency_us;
        out.push_str(&format!(
            "{:<11} {:>12} {:>11} {:>9.2} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            name,
            thousands(f.records),
            thousands(f.records_per_s.round() as u64),
            f.mb_per_s,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.p9999),
            ms(l.max)
        ));
    }
    out.push_str(
        "(produce: send → ack; consume: ask → records received, includes waiting at the \
         tail; end-to-end: send → a consumer has it)\n",
    );
    let d = &report.produce_detail;
    if d.failed_records > 0 || d.unsent_scheduled_batches > 0 {
        out.push_str(&format!(
            "produce: {} records acknowledged, {} failed, {} scheduled batches never sent \
             (the node could not keep up with --rate)\n",
            thousands(d.acked_records),
            thousands(d.failed_records),
            thousands(d.unsent_scheduled_batches)
        ));
    }
    if report.config.cluster {
        out.push_str(&format!(
            "reroutes: {} (NOT_LEADER answers followed: resent to the leader, not errors)\n",
            thousands(d.reroutes)
        ));
    }
    out.push_str(&format!("errors: {}", report.errors));
    if !report.errors_by_kind.is_empty() {
        let kinds: Vec<String> = report
            .errors_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!(" ({})", kinds.join(", ")));
    }
    out.push('\n');
    let v = &report.verification;
    out.push_str(&format!(
        "violations: {} ({} records checked, {} from other runs{})\n",
        report.violations,
        thousands(v.records_checked),
        thousands(v.other_runs_records),
        if v.consumers_drained {
            ""
        } else {
            "; some consumers did not finish reading before the drain timeout"
        }
    ));
    for s in &report.violation_samples {
        out.push_str(&format!("  {s}\n"));
    }
    if report.violations > report.violation_samples.len() as u64 {
        let kinds: Vec<String> = report
            .violations_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!("  ... by kind: {}\n", kinds.join(", ")));
    }
    out
}

/// The process's CPU time so far (user + system), from /proc (Linux clock ticks are 1/100 s).
fn process_cpu_secs() -> Option<f64> {
    const TICKS_PER_SEC: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// The host's 1-minute load average (other work competing for the CPUs skews figures).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or("?"))
        .collect();
    groups.join(",")
}

/// Microseconds as milliseconds with three decimals.
fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn fmt_ms(us: u64) -> String {
    format!("{} ms", ms(us))
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        assert!(process_cpu_secs().is_some());
    }
}
