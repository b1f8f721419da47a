//! loadgen's own tests, against real `corelog serve` processes (issue 4): a short run finds no
//! violations; nodes that drop or corrupt records (the hidden `--inject-fault` hook) are
//! caught; the JSON report has every documented key; bad flags give one clear line and exit
//! code 2; a cluster whose nodes are named by host (`localhost:PORT`) is loaded through such a
//! name.
//!
//! Why these tests live in the root package: here Cargo hands us the node binary
//! (`CARGO_BIN_EXE_corelog`), fresh, built with the same profile. loadgen is another package,
//! so its binary is built on demand into the same target directory (`cargo build -p loadgen`,
//! a no-op when up to date — as it is under `cargo test --workspace`, where loadgen's own
//! integration test has Cargo build it; Cargo releases its build lock before running tests). Its
//! environment is cleaned of the variables Cargo sets for *this* crate, or the nested Cargo
//! would see other values than a normal build and rebuild dependencies whose build scripts
//! watch them.
//!
//! Data directories live under `CARGO_TARGET_TMPDIR` (a real filesystem: tmpfs has no
//! O_DIRECT) and are removed when a test passes. Every run is bounded: loadgen runs 2 s plus
//! its drain, and every child process is killed after [`CHILD_TIMEOUT_S`].

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, start_cluster};
use serde_json::Value;

/// The longest any child process may run.
const CHILD_TIMEOUT_S: u64 = 90;
/// How long a node may take to print its "serving" line.
const NODE_START_TIMEOUT_S: u64 = 30;
/// Segment size of the test nodes: small, so the pre-allocation stays small too.
const SEGMENT_BYTES: &str = "1048576";

/// The loadgen binary, built (or found up to date) once per test process.
fn loadgen() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let corelog = Path::new(env!("CARGO_BIN_EXE_corelog"));
        let bin = corelog.with_file_name("loadgen");
        let profile_dir = corelog
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "-p", "loadgen", "--bin", "loadgen"]);
        match profile_dir {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        for (key, _) in std::env::vars() {
            if is_crate_env(&key) {
                cmd.env_remove(key);
            }
        }
        let out = cmd.output().expect("run cargo to build loadgen");
        assert!(
            out.status.success(),
            "building loadgen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(bin.exists(), "loadgen not found at {}", bin.display());
        bin
    })
}

/// Variables Cargo sets for the crate being built or tested (not configuration).
fn is_crate_env(key: &str) -> bool {
    key == "OUT_DIR"
        || key == "CARGO_MAKEFLAGS"
        || key == "CARGO_CRATE_NAME"
        || key == "CARGO_PRIMARY_PACKAGE"
        || key == "CARGO_TARGET_TMPDIR"
        || key == "CARGO_RUSTC_CURRENT_DIR"
        || key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_MANIFEST_")
        || key.starts_with("CARGO_BIN_")
        || key.starts_with("CARGO_CFG_")
}

/// A fresh directory for one test, removed on drop unless the test failed.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("loadgen-tests")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A `corelog serve` process on ephemeral ports, killed on drop.
struct Node {
    child: Child,
    addr: String,
    tls_dir: PathBuf,
}

impl Node {
    fn start(data_dir: &Path, extra: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corelog"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--stats-listen", "127.0.0.1:0"])
            .args(["--segment-bytes", SEGMENT_BYTES, "--cores", "1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start corelog serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Keep reading stderr for the node's whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(NODE_START_TIMEOUT_S);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((addr, tls_dir)) = parse_serving_line(&line) {
                        return Node {
                            child,
                            addr,
                            tls_dir,
                        };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("node did not start; stderr:\n{}", seen.join("\n"));
                }
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `corelog: serving N partitions on ADDR (cores [..]); stats on http://..; TLS in DIR`.
fn parse_serving_line(line: &str) -> Option<(String, PathBuf)> {
    let rest = line.strip_prefix("corelog: serving ")?;
    let addr = rest.split(" on ").nth(1)?.split_whitespace().next()?;
    let tls = rest.split("; TLS in ").nth(1)?;
    Some((addr.to_string(), PathBuf::from(tls.trim())))
}

/// Runs a command to completion, killing it after [`CHILD_TIMEOUT_S`].
fn run_bounded(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen");
    let deadline = Instant::now() + Duration::from_secs(CHILD_TIMEOUT_S);
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let out_reader = std::thread::spawn(move || read_all(out.as_mut()));
    let err_reader = std::thread::spawn(move || read_all(err.as_mut()));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for loadgen") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen ran longer than {CHILD_TIMEOUT_S} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn read_all(r: Option<&mut impl std::io::Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(r) = r {
        let _ = r.read_to_end(&mut buf);
    }
    buf
}

/// Runs loadgen for 2 s against `node` with `extra` flags; returns its output and JSON.
fn load(node: &Node, dir: &Path, extra: &[&str]) -> (Output, Option<Value>) {
    let json = dir.join("report.json");
    let mut cmd = Command::new(loadgen());
    cmd.args(["--addr", &node.addr])
        .arg("--tls-dir")
        .arg(&node.tls_dir)
        .args(["--cores", "1", "--duration", "2s"])
        .arg("--json")
        .arg(&json)
        .args(extra);
    if !extra.contains(&"--warmup") {
        cmd.args(["--warmup", "0s"]);
    }
    let out = run_bounded(cmd);
    let report = std::fs::read_to_string(&json)
        .ok()
        .map(|text| serde_json::from_str(&text).expect("the JSON report parses"));
    (out, report)
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One clean run, shared by the tests that look at it from different sides.
struct CleanRun {
    out: Output,
    report: Value,
    hgrm: String,
    e2e_hgrm: String,
    svg: String,
}

fn clean_run() -> &'static CleanRun {
    static RUN: OnceLock<CleanRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = TestDir::new("clean_run");
        let node = Node::start(&dir.0.join("data"), &[]);
        let (hgrm, svg) = (dir.0.join("lat.hgrm"), dir.0.join("lat.svg"));
        let (out, report) = load(
            &node,
            &dir.0,
            &[
                "--hgrm",
                hgrm.to_str().expect("utf-8 path"),
                "--plot",
                svg.to_str().expect("utf-8 path"),
            ],
        );
        let report = report.unwrap_or_else(|| panic!("no JSON report\n{}", describe(&out)));
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let run = CleanRun {
            hgrm: read(&hgrm),
            e2e_hgrm: read(&dir.0.join("lat.end_to_end.hgrm")),
            svg: read(&svg),
            out,
            report,
        };
        drop(node);
        run
    })
}

#[test]
fn a_short_run_against_a_real_node_finds_no_violations() {
    let run = clean_run();
    assert_eq!(run.out.status.code(), Some(0), "{}", describe(&run.out));
    let r = &run.report;
    assert_eq!(r["violations"], 0, "{}", describe(&run.out));
    assert_eq!(r["errors"], 0, "{}", describe(&run.out));
    assert!(r["produce"]["records"].as_u64() > Some(0), "{r}");
    assert!(r["consume"]["records"].as_u64() > Some(0), "{r}");
    assert!(r["end_to_end"]["records"].as_u64() > Some(0), "{r}");
    assert_eq!(r["verification"]["consumers_drained"], true, "{r}");
    let stdout = String::from_utf8_lossy(&run.out.stdout);
    assert!(
        stdout.contains("[   1s]"),
        "a progress line each second:\n{stdout}"
    );
    assert!(stdout.contains("violations: 0"), "{stdout}");
}

#[test]
fn the_json_report_has_every_documented_key() {
    let r = &clean_run().report;
    for flow in ["produce", "consume", "end_to_end"] {
        for key in ["records_per_s", "mb_per_s"] {
            assert!(r[flow][key].is_number(), "{flow}.{key} in {r}");
        }
        for p in ["p50", "p90", "p99", "p999", "p9999", "max"] {
            assert!(
                r[flow]["latency_us"][p].is_u64(),
                "{flow}.latency_us.{p} in {r}"
            );
        }
    }
    assert!(r["errors"].is_u64() && r["violations"].is_u64(), "{r}");
    let config = &r["config"];
    for key in [
        "addr",
        "tls_dir",
        "tls_name",
        "cpus",
        "partitions",
        "producers",
        "consumers",
        "record_bytes",
        "batch_records",
        "in_flight",
        "rate",
        "duration",
        "warmup",
        "seed",
    ] {
        assert!(config.get(key).is_some(), "config.{key} in {config}");
    }
    assert_eq!(config["duration"], 2.0);
}

#[test]
fn the_hgrm_and_plot_files_are_what_plotters_and_people_read() {
    let run = clean_run();
    for text in [&run.hgrm, &run.e2e_hgrm] {
        let header: Vec<&str> = text
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert!(text.contains("#[Max     ="), "{text}");
        assert!(
            text.lines().filter(|l| !l.starts_with('#')).count() > 10,
            "{text}"
        );
    }
    assert!(run.svg.starts_with("<svg"), "{}", run.svg);
    assert_eq!(run.svg.matches("<polyline").count(), 3, "{}", run.svg);
}

#[test]
fn a_node_that_drops_records_is_caught() {
    let dir = TestDir::new("drop_record");
    let node = Node::start(&dir.0.join("data"), &["--inject-fault", "drop-record:50"]);
    let (out, report) = load(&node, &dir.0, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let r = report.unwrap_or_else(|| panic!("no JSON report\n{}", describe(&out)));
    assert!(r["violations"].as_u64() > Some(0), "{r}");
    assert!(
        r["violations_by_kind"]["offset_gap"].as_u64() > Some(0),
        "{r}"
    );
    assert!(
        r["violations_by_kind"]["missing_acked"].as_u64() > Some(0),
        "{r}"
    );
}

#[test]
fn a_node_that_corrupts_records_is_caught() {
    let dir = TestDir::new("corrupt_record");
    let node = Node::start(
        &dir.0.join("data"),
        &["--inject-fault", "corrupt-record:50"],
    );
    let (out, report) = load(&node, &dir.0, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let r = report.unwrap_or_else(|| panic!("no JSON report\n{}", describe(&out)));
    assert!(r["violations"].as_u64() > Some(0), "{r}");
    assert!(r["violations_by_kind"]["corrupt"].as_u64() > Some(0), "{r}");
}

#[test]
fn an_open_loop_run_keeps_its_rate() {
    let dir = TestDir::new("open_loop");
    let node = Node::start(&dir.0.join("data"), &[]);
    // Slots for far more than the rate needs even with slow fsyncs (debug builds, parallel
    // tests), and a warm-up so the window sees steady state: acks in it ≈ rate × duration.
    let (out, report) = load(
        &node,
        &dir.0,
        &[
            "--rate",
            "500",
            "--batch-records",
            "5",
            "--in-flight",
            "256",
            "--consumers",
            "0",
            "--warmup",
            "1s",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let r = report.unwrap_or_else(|| panic!("no JSON report\n{}", describe(&out)));
    let rate = r["produce"]["records_per_s"].as_f64().unwrap_or(0.0);
    // Acks count only inside the window: a stall near its end (a slow fsync on a shared disk)
    // moves a few out. A closed loop here runs thousands per second.
    assert!(
        (300.0..=700.0).contains(&rate),
        "500 records/s asked, got {rate}: {r}"
    );
    assert_eq!(r["produce_detail"]["unsent_scheduled_batches"], 0, "{r}");
    assert_eq!(r["config"]["rate"], 500.0);
}

/// Nodes advertised and joined by host name (`--advertise localhost:PORT`), as on real hosts,
/// loaded through a follower that `--addr` names by host too. loadgen looks every name up: the
/// follower's, the group members' and the leader's that Metadata gives, and checks each node's
/// certificate against the host name. Producers go to the leader, consumers read the other
/// replicas (both named by host only); every record checks out. Before, `--addr localhost:PORT`
/// was refused, and members advertised by host name could not be followed (the partition had
/// no leader loadgen could reach). Fault model: none; this is about addressing.
#[test]
fn a_cluster_named_by_host_is_loaded_through_a_follower_named_by_host() {
    let cluster = start_cluster(
        Cluster::new("loadgen_host_names", 1)
            .with_host_names()
            .with_replication_factor(3),
        3,
    );
    let (leader, follower) = cluster.leader_and_follower(0);
    let follower_by_name = format!("localhost:{}", cluster.addr(follower).port());
    let json = cluster.dir.join("loadgen.json");
    let mut cmd = Command::new(loadgen());
    cmd.args(["--cluster", "--addr", &follower_by_name])
        .arg("--tls-dir")
        .arg(&cluster.tls)
        .args(["--consume-from", "follower"])
        .args(["--producers", "1", "--consumers", "1"])
        .args(["--cores", "1", "--duration", "2s"])
        .args(["--warmup", "0s", "--json"])
        .arg(&json);
    let out = run_bounded(cmd);
    assert_eq!(
        out.status.code(),
        Some(0),
        "loadgen --cluster --addr {follower_by_name}: {}",
        describe(&out)
    );
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report ({e})\n{}", describe(&out)));
    let r: Value = serde_json::from_str(&text).expect("the JSON report parses");
    assert_eq!(r["violations"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["produce"]["records"].as_u64() > Some(0), "{r}");
    assert!(r["consume"]["records"].as_u64() > Some(0), "{r}");
    assert_eq!(r["verification"]["consumers_drained"], true, "{r}");
    // The partition was loaded at its leader, found by the host name Metadata gives.
    let target = &r["targets"][0];
    assert_eq!(target["leader_id"], leader, "{r}");
    assert_eq!(
        target["addr"],
        cluster.addr(leader).to_string(),
        "the leader, where its name led: {r}"
    );
    assert_eq!(
        target["replicas"].as_array().map(Vec::len),
        Some(3),
        "every member named by host was resolved: {r}"
    );
}

/// A leader that hands its partition off in the middle of a run (SIGTERM: it transfers
/// leadership, then stops) is followed. The batches it refused with NOT_LEADER are resent to
/// the new leader, all at once and oldest first on one connection (`reroutes`, not errors),
/// and the consumer, which moves to the new leader, finds every acknowledged record intact
/// and in order. Fault model: a graceful leader change under load; what it guards is the
/// producer's route repair (loadgen/src/route.rs), which no other test drives.
#[test]
fn a_leader_handing_off_mid_run_is_followed_in_order() {
    let mut cluster = start_cluster(
        Cluster::new("loadgen_handoff", 1)
            .with_advertise()
            .with_replication_factor(3),
        3,
    );
    let (leader, _) = cluster.leader_and_follower(0);
    let addrs: Vec<String> = cluster
        .ids()
        .iter()
        .map(|id| cluster.addr(*id).to_string())
        .collect();
    let json = cluster.dir.join("loadgen.json");
    let mut cmd = Command::new(loadgen());
    cmd.args(["--cluster", "--addr", &addrs.join(",")])
        .arg("--tls-dir")
        .arg(&cluster.tls)
        .args(["--consume-from", "leader"])
        .args(["--producers", "1", "--consumers", "1"])
        .args(["--batch-records", "16", "--in-flight", "8"])
        .args(["--cores", "1", "--duration", "5s"])
        .args(["--warmup", "0s", "--json"])
        .arg(&json);
    // Bounded like every loadgen run here; the hand-off happens while it runs.
    let run = std::thread::spawn(move || run_bounded(cmd));
    std::thread::sleep(Duration::from_secs(2));
    let pid = cluster.pid(leader);
    cluster.send_sigterm(leader);
    assert!(
        cluster.wait_stopped(pid).success(),
        "node {leader} stops cleanly"
    );
    let out = run.join().expect("loadgen's run ends");
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report ({e})\n{}", describe(&out)));
    let r: Value = serde_json::from_str(&text).expect("the JSON report parses");
    assert_eq!(r["violations"], 0, "{r}");
    assert!(
        r["produce_detail"]["reroutes"].as_u64() > Some(0),
        "the hand-off was followed through NOT_LEADER answers: {r}"
    );
    // The producer lost nothing: every batch the stopping leader refused was acknowledged by
    // the new one. (The consumer's connection to the stopped node may end with one
    // `connection` error before it moves: exit 3, errors, not 1, violations.)
    assert_eq!(r["produce_detail"]["failed_records"], 0, "{r}");
    assert!(r["produce"]["records"].as_u64() > Some(0), "{r}");
    assert!(r["consume"]["records"].as_u64() > Some(0), "{r}");
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        describe(&out)
    );
}

#[test]
fn bad_flags_give_one_clear_line_and_exit_2() {
    for (args, mention) in [
        (&["--bogus"][..], "--bogus"),
        (&["--record-bytes", "8"][..], "--record-bytes"),
        (&["--duration", "ten"][..], "ten"),
        (&["--cpuset", "4096"][..], "--cpuset"),
        (&["--partitions", "x"][..], "x"),
        (&["--rate", "0"][..], "--rate"),
        (
            &["--producers", "0", "--consumers", "0"][..],
            "nothing to do",
        ),
        (
            &[
                "--tls-dir",
                "/nonexistent/loadgen-certs",
                "--addr",
                "127.0.0.1:1",
            ][..],
            "--tls-dir",
        ),
    ] {
        let mut cmd = Command::new(loadgen());
        cmd.args(args);
        let out = run_bounded(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("loadgen: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(mention),
            "{args:?} should mention {mention}: {stderr}"
        );
    }
}

#[test]
fn baseline_measures_disk_and_loopback() {
    let dir = TestDir::new("baseline");
    let json = dir.0.join("baseline.json");
    let mut cmd = Command::new(loadgen());
    cmd.arg("baseline")
        .arg("--dir")
        .arg(&dir.0)
        .args(["--duration", "200ms", "--json"])
        .arg(&json);
    let out = run_bounded(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = std::fs::read_to_string(&json).expect("baseline JSON written");
    let r: Value = serde_json::from_str(&text).expect("baseline JSON parses");
    assert!(r["disk"]["write_mb_per_s"].as_f64() > Some(0.0), "{r}");
    assert!(
        r["disk"]["sync_4k_rewrite_latency_us"]["p50"].as_u64() > Some(0),
        "{r}"
    );
    // Three synced writers at once made something durable, and not more than the disk's
    // unsynced bandwidth allows (each writer's figure is over its own run).
    let replicas = r["disk"]["write_sync_fallocated_replica_files_mb_per_s"].as_f64();
    assert!(replicas > Some(0.0), "{r}");
    assert!(
        replicas < Some(3.0 * r["disk"]["write_mb_per_s"].as_f64().unwrap_or(0.0)),
        "{r}"
    );
    assert!(r["loopback_tcp"]["mb_per_s"].as_f64() > Some(0.0), "{r}");
    assert!(r["ceiling_mb_per_s"].as_f64() > Some(0.0), "{r}");
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .expect("list test dir")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("loadgen-baseline")
        })
        .collect();
    assert!(leftovers.is_empty(), "scratch files left: {leftovers:?}");
}

#[test]
fn the_serving_line_parses() {
    let line = "corelog: serving 1 partitions on 127.0.0.1:40123 (cores [0]); stats on \
                http://127.0.0.1:40124; TLS in /data/tls";
    assert_eq!(
        parse_serving_line(line),
        Some(("127.0.0.1:40123".into(), PathBuf::from("/data/tls")))
    );
}
