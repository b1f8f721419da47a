//! A real-process crash test: a child process appends under load and is killed with SIGKILL at
//! a random moment; every record it acknowledged must then read back byte-identical.
//!
//! Fault model: the process dies at an arbitrary instruction (`kill -9`) — mid-flush, mid-sync,
//! mid-roll, mid-recovery — while the machine keeps running, so every write that completed is
//! in the page cache or on the device. What the child printed as acknowledged was durable
//! (`fsync = always`) before it was printed. Power loss is not simulated here (see
//! `crash_recovery.rs` for torn writes on real files).
//!
//! The child is this test binary, re-executed to run only the ignored `child_appender` test
//! with the data directory in an environment variable.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{RemoveOnSuccess, run, test_dir};
use corelog::Offset;
use corelog::storage::{Log, LogConfig};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Names the child's data directory; without it `child_appender` does nothing.
const DIR_ENV: &str = "CORELOG_KILL9_DIR";
/// The round number, which goes into every value the child writes.
const ROUND_ENV: &str = "CORELOG_KILL9_ROUND";
const ROUNDS: u32 = 5;
/// Concurrent appending tasks in the child.
const WRITERS: u32 = 4;
/// The child stops by itself after this long, should nobody kill it.
const CHILD_RUN_MS_MAX: u64 = 90_000;
/// The parent gives up on a child that acks nothing for this long.
const ACK_WAIT_MS_MAX: u64 = 60_000;

const VALUE_MAGIC: [u8; 4] = *b"K9v1";
const VALUE_HEADER_BYTES: usize = 32;

/// Fault model: see the module doc. Five rounds on one directory: each round starts a child
/// that recovers the log and appends more, kills it after a random number of acks, then
/// reopens the log and checks that offsets are dense from 0, that every recovered record is
/// one the child wrote (self-checking values), that each batch survived whole and each
/// writer's batches survived as a prefix of what it sent, and that every acknowledged record
/// of every round reads back byte-identical at its acknowledged offset.
#[test]
fn kill9_under_concurrent_appends_loses_no_acknowledged_record() {
    let seed = std::env::var("CORELOG_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("kill9: seed {seed} (rerun with CORELOG_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let test_dir = test_dir("kill9");
    let _cleanup = RemoveOnSuccess(test_dir.clone());
    let dir = test_dir.join("log");
    // Every ack of every round: offset -> (key, digest).
    let mut acked: BTreeMap<u64, (Key, u32)> = BTreeMap::new();
    for round in 0..ROUNDS {
        let kill_after_acks = rng.random_range(1..=2000usize);
        let extra_delay = Duration::from_micros(rng.random_range(0..3000));
        let acks = run_child_and_kill(&dir, round, kill_after_acks, extra_delay);
        for (offset, key, digest) in &acks {
            let previous = acked.insert(*offset, (*key, *digest));
            assert!(
                previous.is_none(),
                "round {round}: offset {offset} acknowledged twice"
            );
        }
        let recovered = run(|| verify_log(&dir, &acked));
        eprintln!(
            "kill9 round {round}: killed after {kill_after_acks} acks (+{extra_delay:?}), \
             {} acks read, {recovered} records recovered in total",
            acks.len()
        );
    }
}

/// The child: opens the log and appends from `WRITERS` tasks until killed, printing one line
/// per acknowledged record: `ACK <offset> <round> <writer> <seq> <record> <crc32c of value>`.
#[test]
#[ignore = "the child process of kill9_under_concurrent_appends_loses_no_acknowledged_record"]
fn child_appender() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let round: u32 = std::env::var(ROUND_ENV)
        .expect("round variable")
        .parse()
        .expect("round number");
    run(|| async move {
        let log = Log::open(&dir, config()).await.expect("child: open");
        let deadline = Instant::now() + Duration::from_millis(CHILD_RUN_MS_MAX);
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    let key = Key {
                        round,
                        writer,
                        seq,
                        record: 0,
                    };
                    let values: Vec<Vec<u8>> = (0..key.records())
                        .map(|record| Key { record, ..key }.value())
                        .collect();
                    let base = log.append_batch(&values).await.expect("child: append");
                    let mut out = std::io::stdout().lock();
                    for (i, v) in values.iter().enumerate() {
                        writeln!(
                            out,
                            "ACK {} {round} {writer} {seq} {i} {}",
                            base.get() + i as u64,
                            crc32c::crc32c(v)
                        )
                        .expect("child: stdout");
                    }
                    out.flush().expect("child: flush");
                    seq += 1;
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        log.close().await.expect("child: close");
    });
}

/// Runs one child round; kills it once it has acked `kill_after_acks` records (and
/// `extra_delay` later). Returns every ack it printed, including those still in the pipe.
fn run_child_and_kill(
    dir: &Path,
    round: u32,
    kill_after_acks: usize,
    extra_delay: Duration,
) -> Vec<(u64, Key, u32)> {
    let stderr_path = dir.with_file_name(format!("child-{round}.stderr"));
    let stderr = std::fs::File::create(&stderr_path).expect("child stderr file");
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_appender",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn child");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let child_log = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    let mut acks = Vec::new();
    let started = Instant::now();
    while acks.len() < kill_after_acks {
        let Some(line) = lines.next() else {
            let status = child.0.wait().expect("wait for child");
            panic!(
                "round {round}: the child exited ({status}) after {} acks, before being killed; \
                 its stderr:\n{}",
                acks.len(),
                child_log()
            );
        };
        if let Some(ack) = parse_ack(&line.expect("child stdout")) {
            acks.push(ack);
        }
        assert!(
            started.elapsed() < Duration::from_millis(ACK_WAIT_MS_MAX),
            "round {round}: the child acked only {} records in {ACK_WAIT_MS_MAX} ms",
            acks.len()
        );
    }
    std::thread::sleep(extra_delay);
    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().expect("wait for child");
    assert!(
        !status.success(),
        "round {round}: the child was not killed: {status}"
    );
    // Acks printed before the kill are still in the pipe.
    for line in lines {
        if let Some(ack) = parse_ack(&line.expect("child stdout")) {
            acks.push(ack);
        }
    }
    acks
}

/// Reopens the log and checks it against every ack so far; returns the number of records.
async fn verify_log(dir: &Path, acked: &BTreeMap<u64, (Key, u32)>) -> u64 {
    let log = Log::open(dir, config()).await.expect("reopen after kill");
    assert_eq!(log.lowest_offset(), Offset(0));
    // Every record, dense from 0, each one a value the child wrote, each written once.
    let mut keys: Vec<Key> = Vec::new();
    let mut seen: HashMap<Key, u64> = HashMap::new();
    let mut next = 0u64;
    loop {
        let records = log
            .read_from(Offset(next), 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("reading from {next}: {e:?}"));
        if records.is_empty() {
            break;
        }
        for r in records {
            assert_eq!(r.offset, Offset(next), "recovered offsets are not dense");
            let key = Key::check(&r.value)
                .unwrap_or_else(|why| panic!("offset {next} holds an invalid record: {why}"));
            if let Some(first) = seen.insert(key, next) {
                panic!("{key:?} recovered twice, at {first} and {next}");
            }
            keys.push(key);
            next += 1;
        }
    }
    let count = next;
    assert_eq!(
        log.highest_offset(),
        count.checked_sub(1).map(Offset),
        "highest offset"
    );
    // Batches are atomic, and each writer appends one batch at a time, so what survives of a
    // writer's round is its batches 0..n, each whole, in offset order.
    let mut per_writer: HashMap<(u32, u32), Vec<(u64, u32)>> = HashMap::new();
    for k in &keys {
        per_writer
            .entry((k.round, k.writer))
            .or_default()
            .push((k.seq, k.record));
    }
    for ((round, writer), recs) in per_writer {
        let mut want = Vec::new();
        let batches = recs.last().map_or(0, |(seq, _)| seq + 1);
        for seq in 0..batches {
            let key = Key {
                round,
                writer,
                seq,
                record: 0,
            };
            want.extend((0..key.records()).map(|r| (seq, r)));
        }
        assert_eq!(
            recs, want,
            "round {round} writer {writer}: recovered batches are not a whole prefix in order"
        );
    }
    // Every acknowledged record is there, byte-identical, at its offset.
    for (&offset, &(key, digest)) in acked {
        assert!(
            offset < count,
            "acknowledged offset {offset} ({key:?}) lost: only {count} records recovered"
        );
        assert_eq!(
            keys[offset as usize], key,
            "acknowledged offset {offset} holds another record"
        );
        let value = log.read(Offset(offset)).await.expect("read acked record");
        assert!(
            value.value[..] == key.value()[..],
            "acknowledged offset {offset} ({key:?}) is not byte-identical"
        );
        assert_eq!(
            crc32c::crc32c(&value.value),
            digest,
            "offset {offset} digest"
        );
    }
    log.close().await.expect("close after verify");
    count
}

/// Identifies one record the child wrote; its value is a pure function of it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    round: u32,
    writer: u32,
    seq: u64,
    record: u32,
}

impl Key {
    fn mix(&self) -> u64 {
        let mut x = (self.round as u64) << 48 ^ (self.writer as u64) << 40 ^ self.seq;
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// Records in this key's batch: one to three.
    fn records(&self) -> u32 {
        1 + (self.mix() % 3) as u32
    }

    /// Payload bytes: mostly under 1200, one in sixteen past a 4 KiB block.
    fn payload_len(&self) -> usize {
        let m = self.mix().rotate_left(self.record * 7 + 13);
        if m.is_multiple_of(16) {
            4096 + (m >> 8) as usize % 8000
        } else {
            (m >> 8) as usize % 1200
        }
    }

    /// Header (magic, key, payload length, CRC32C over header and payload) and payload.
    fn value(&self) -> Vec<u8> {
        let len = self.payload_len();
        let mut v = Vec::with_capacity(VALUE_HEADER_BYTES + len);
        v.extend_from_slice(&VALUE_MAGIC);
        v.extend_from_slice(&self.round.to_le_bytes());
        v.extend_from_slice(&self.writer.to_le_bytes());
        v.extend_from_slice(&self.seq.to_le_bytes());
        v.extend_from_slice(&self.record.to_le_bytes());
        v.extend_from_slice(&(len as u32).to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        let mut state = self.mix() ^ self.record as u64;
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v.push(state as u8);
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&v[..28]), &v[32..]);
        v[28..32].copy_from_slice(&crc.to_le_bytes());
        v
    }

    /// The key of a recovered value, if the value is exactly what that key writes.
    fn check(value: &[u8]) -> Result<Key, String> {
        if value.len() < VALUE_HEADER_BYTES || value[..4] != VALUE_MAGIC {
            return Err(format!("no header ({} bytes)", value.len()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(value[at..at + 4].try_into().unwrap());
        let key = Key {
            round: u32_at(4),
            writer: u32_at(8),
            seq: u64::from_le_bytes(value[12..20].try_into().unwrap()),
            record: u32_at(20),
        };
        if key.round >= ROUNDS || key.writer >= WRITERS || key.record >= key.records() {
            return Err(format!("impossible key {key:?}"));
        }
        if key.value() != value {
            return Err(format!("bytes differ from what {key:?} writes"));
        }
        Ok(key)
    }
}

/// Parses an ack line. The first one may follow the test harness's `test child_appender ... `
/// on the same line.
fn parse_ack(line: &str) -> Option<(u64, Key, u32)> {
    let rest = &line[line.find("ACK ")? + 4..];
    let f: Vec<u64> = rest
        .split(' ')
        .map(|s| s.parse().expect("ack field"))
        .collect();
    assert_eq!(f.len(), 6, "malformed ack line {line:?}");
    let key = Key {
        round: f[1] as u32,
        writer: f[2] as u32,
        seq: f[3],
        record: f[4] as u32,
    };
    Some((f[0], key, f[5] as u32))
}

/// Small segments, so rounds roll segments and a kill can land mid-roll.
fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 256 << 10,
        ..LogConfig::default()
    }
}

/// Kills the child if the parent panics before killing it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
