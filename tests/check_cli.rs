//! `corelog check` as a user runs it: the real binary on partition directories written by the
//! real `Log`, then damaged the way disks and crashes damage them (a flipped bit, a torn final
//! write, a damaged index block). Every test also asserts that check changed no file.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{run, test_dir};
use corelog::Offset;
use corelog::storage::format::{self, BatchMeta};
use corelog::storage::{Log, LogConfig};

/// Bytes of each test record's value: every batch is then 56 + 4 + 100 = 160 bytes.
const VALUE_BYTES: usize = 100;
const BATCH_BYTES: u64 = 160;

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 10,
        ..LogConfig::default()
    }
}

/// Writes `records` single-record batches into a log in `dir` (64 KiB segments) and closes it.
fn write_log(dir: &Path, records: u32) {
    let dir = dir.to_path_buf();
    run(|| async move {
        let log = Log::open(&dir, small_segments()).await.unwrap();
        for i in 0..records {
            let value = format!("{i:0width$}", width = VALUE_BYTES);
            log.append(value.as_bytes()).await.unwrap();
        }
        log.close().await.unwrap();
    });
}

fn corelog(args: &[&str], dirs: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(args)
        .args(dirs)
        .output()
        .expect("run the corelog binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The files of a directory tree and their bytes, to prove check wrote nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Runs check and asserts it left every file as it was.
fn check_read_only(args: &[&str], dir: &Path) -> Output {
    let before = snapshot(dir);
    let out = corelog(args, &[dir]);
    assert!(before == snapshot(dir), "corelog check modified files");
    out
}

fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == suffix))
        .collect();
    files.sort();
    files
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Where the valid batches of a store end.
fn data_end(store: &Path) -> u64 {
    let bytes = std::fs::read(store).unwrap();
    let mut pos = 0usize;
    while let Ok(h) = format::validate_batch(&bytes[pos..]) {
        pos += h.length as usize;
    }
    pos as u64
}

fn flip_bit(path: &Path, position: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[position as usize] ^= 0x04;
    std::fs::write(path, bytes).unwrap();
}

fn write_at(path: &Path, position: u64, data: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(position)).unwrap();
    f.write_all(data).unwrap();
}

#[test]
fn healthy_multi_segment_partition_passes_with_exact_counts() {
    let dir = test_dir("check-cli-healthy");
    write_log(&dir, 1000);
    let stores = files_with_suffix(&dir, "store");
    assert!(stores.len() >= 3, "segments should have rolled: {stores:?}");

    let out = check_read_only(&["check", "--partition-dir"], &dir);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for store in &stores {
        let line = text
            .lines()
            .find(|l| l.contains(&name(store)))
            .unwrap_or_else(|| panic!("no line for {store:?} in:\n{text}"));
        assert!(line.trim_end().ends_with("ok"), "{line}");
    }
    assert!(text.contains("base 0 "), "{text}");
    assert!(
        text.contains(&format!(
            "partition {}: ok: {} segments, offsets 0..1000, 1000 records, 0 errors, 0 warnings",
            dir.display(),
            stores.len()
        )),
        "{text}"
    );
    assert!(text.lines().last().unwrap().ends_with(": ok"), "{text}");

    // A directory of segment files is also accepted as DATA_DIR (one partition).
    let out = check_read_only(&["check"], &dir);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("1000 records"));
}

#[test]
fn flipped_bit_in_a_sealed_segment_is_an_error_naming_file_and_batch_position() {
    let dir = test_dir("check-cli-bitflip");
    write_log(&dir, 1000);
    let sealed = &files_with_suffix(&dir, "store")[0];
    // Byte 1000 is inside the 7th batch (160-byte batches), which starts at byte 960.
    flip_bit(sealed, 1000);

    let out = check_read_only(&["check", "--partition-dir"], &dir);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let expected = format!("error: {} at byte 960: invalid batch", name(sealed));
    assert!(text.contains(&expected), "want {expected:?} in:\n{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    assert!(text.lines().last().unwrap().ends_with(": error"), "{text}");
}

#[test]
fn torn_tail_of_the_active_segment_is_a_warning_with_the_cut() {
    let dir = test_dir("check-cli-torn");
    write_log(&dir, 1000);
    let active = files_with_suffix(&dir, "store").pop().unwrap();
    let end = data_end(&active);
    // The first half of the next batch made it to disk, the rest did not: an unacked flush.
    let next = format::encode_batch(Offset(1000), &[[7u8; VALUE_BYTES]], BatchMeta::default());
    write_at(&active, end, &next[..80]);

    let out = check_read_only(&["check", "--partition-dir"], &dir);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let expected = format!(
        "warning: {} at byte {end}: torn tail: invalid batch: checksum mismatch",
        name(&active)
    );
    assert!(text.contains(&expected), "want {expected:?} in:\n{text}");
    let cut = format!(
        "Recovery will cut 80 bytes at position {end}; offsets from 1000 on were never acknowledged"
    );
    assert!(text.contains(&cut), "{text}");
    assert!(text.contains("1000 records, 0 errors, 1 warning"), "{text}");
}

#[test]
fn damage_in_the_middle_of_the_active_segment_followed_by_valid_data_is_an_error() {
    let dir = test_dir("check-cli-active-middle");
    write_log(&dir, 1000);
    let active = files_with_suffix(&dir, "store").pop().unwrap();
    assert!(data_end(&active) > 10 * BATCH_BYTES);
    flip_bit(&active, 2 * BATCH_BYTES + 70);

    let out = check_read_only(&["check", "--partition-dir"], &dir);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let expected = format!(
        "error: {} at byte {}: invalid batch",
        name(&active),
        2 * BATCH_BYTES
    );
    assert!(text.contains(&expected), "want {expected:?} in:\n{text}");
    assert!(
        text.contains(&format!("valid batches resume at byte {}", 3 * BATCH_BYTES)),
        "{text}"
    );
    // The index entries past the damage point at real batches: no noise about them.
    assert!(text.contains("1 error, 0 warnings"), "{text}");
}

#[test]
fn damaged_index_is_a_warning_not_an_error() {
    let dir = test_dir("check-cli-index");
    write_log(&dir, 1000);
    let index = &files_with_suffix(&dir, "index")[0];
    flip_bit(index, 20);

    let out = check_read_only(&["check", "--partition-dir"], &dir);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let expected = format!(
        "warning: {} at byte 0: index block 0 is damaged",
        name(index)
    );
    assert!(text.contains(&expected), "want {expected:?} in:\n{text}");
    assert!(text.contains("1000 records, 0 errors, 1 warning"), "{text}");
}

#[test]
fn json_report_parses_with_the_documented_keys() {
    let dir = test_dir("check-cli-json");
    write_log(&dir, 1000);
    let active = files_with_suffix(&dir, "store").pop().unwrap();
    let end = data_end(&active);
    write_at(&active, end, b"torn");

    let out = check_read_only(&["check", "--json", "--partition-dir"], &dir);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(doc["version"], 1);
    let summary = &doc["summary"];
    assert_eq!(summary["partitions"], 1);
    assert_eq!(summary["records"], 1000);
    assert_eq!(summary["batches"], 1000);
    assert_eq!(summary["data_bytes"], 1000 * BATCH_BYTES);
    assert_eq!(summary["errors"], 0);
    assert_eq!(summary["warnings"], 1);
    assert_eq!(summary["status"], "warning");

    let partition = &doc["partitions"][0];
    assert_eq!(partition["dir"], dir.display().to_string());
    assert_eq!(partition["lowest_offset"], 0);
    assert_eq!(partition["next_offset"], 1000);
    assert_eq!(partition["status"], "warning");
    assert!(partition["issues"].as_array().unwrap().is_empty());
    assert!(partition["other_files"].as_array().unwrap().is_empty());
    let segments = partition["segments"].as_array().unwrap();
    assert!(segments.len() >= 3);
    let mut expected_base = 0;
    for (i, seg) in segments.iter().enumerate() {
        for key in [
            "file",
            "base_offset",
            "next_offset",
            "active",
            "batches",
            "control_batches",
            "records",
            "data_bytes",
            "file_bytes",
            "first_timestamp_ms",
            "last_timestamp_ms",
            "index_entries",
            "status",
            "issues",
        ] {
            assert!(seg.get(key).is_some(), "segment {i} lacks {key:?}: {seg}");
        }
        assert_eq!(seg["base_offset"], expected_base);
        assert_eq!(seg["file"], format!("{expected_base:020}.store"));
        expected_base = seg["next_offset"].as_u64().unwrap();
        assert!(seg["index_entries"].as_u64().unwrap() > 0);
        assert!(seg["first_timestamp_ms"].as_i64().unwrap() > 1_600_000_000_000);
        assert_eq!(seg["active"], i == segments.len() - 1);
    }
    assert_eq!(expected_base, 1000);
    let last = segments.last().unwrap();
    assert_eq!(last["status"], "warning");
    let issue = &last["issues"][0];
    assert_eq!(issue["severity"], "warning");
    assert_eq!(issue["file"], name(&active));
    assert_eq!(issue["position"], end);
    assert!(
        issue["message"]
            .as_str()
            .unwrap()
            .contains("Recovery will cut 4 bytes")
    );
}

#[test]
fn missing_directory_exits_2_with_one_line_on_stderr() {
    let dir = test_dir("check-cli-missing").join("no-such-dir");
    for args in [&["check"][..], &["check", "--partition-dir"][..]] {
        let out = corelog(args, &[&dir]);
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty(), "{}", stdout(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(!dir.exists(), "check must not create the directory");
    }
}

#[test]
fn data_dir_checks_every_partition_and_fails_if_one_is_corrupt() {
    let data = test_dir("check-cli-data-dir");
    let (p0, p1) = (data.join("partitions/0"), data.join("partitions/1"));
    write_log(&p0, 1000);
    write_log(&p1, 500);
    std::fs::write(data.join("node.toml"), b"# not checked\n").unwrap();

    let out = check_read_only(&["check"], &data);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!("partition {}: ok", p0.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("partition {}: ok", p1.display())),
        "{text}"
    );
    assert!(text.contains("offsets 0..1000, 1000 records"), "{text}");
    assert!(text.contains("offsets 0..500, 500 records"), "{text}");
    let last = text.lines().last().unwrap();
    assert!(last.starts_with("checked 2 partitions"), "{last}");
    assert!(
        last.ends_with("1500 records: 0 errors, 0 warnings: ok"),
        "{last}"
    );

    let sealed = &files_with_suffix(&p1, "store")[0];
    flip_bit(sealed, 5000);
    let out = check_read_only(&["check"], &data);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("partition {}: ok", p0.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("partition {}: error", p1.display())),
        "{text}"
    );
    // 5000 = 31 × 160 + 40: the 32nd batch, at byte 4960.
    assert!(
        text.contains(&format!("error: {} at byte 4960", name(sealed))),
        "{text}"
    );
}

#[test]
fn serve_with_invalid_flags_says_what_to_change_in_one_line() {
    let out = corelog(&["serve", "--cores", "0"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--cores"), "{err}");
}

#[test]
fn check_needs_exactly_one_directory() {
    let dir = test_dir("check-cli-usage");
    assert_eq!(corelog(&["check"], &[]).status.code(), Some(2));
    let out = corelog(&["check", "--partition-dir"], &[&dir, &dir]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn warnings_are_what_recovery_repairs_and_a_recovered_log_checks_clean() {
    let dir = test_dir("check-cli-recovery-agrees");
    write_log(&dir, 1000);
    let sealed_index = &files_with_suffix(&dir, "index")[0];
    flip_bit(sealed_index, 20);
    let active = files_with_suffix(&dir, "store").pop().unwrap();
    let end = data_end(&active);
    let next = format::encode_batch(Offset(1000), &[[7u8; VALUE_BYTES]], BatchMeta::default());
    write_at(&active, end, &next[..80]);
    let out = check_read_only(&["check", "--partition-dir"], &dir);
    assert!(
        stdout(&out).contains("0 errors, 2 warnings"),
        "{}",
        stdout(&out)
    );

    // Recovery cuts the torn tail and rebuilds the index, keeping every acknowledged record.
    let log_dir = dir.clone();
    run(|| async move {
        let log = Log::open(&log_dir, small_segments()).await.unwrap();
        assert_eq!(log.highest_offset(), Some(Offset(999)));
        log.close().await.unwrap();
    });
    let out = check_read_only(&["check", "--partition-dir"], &dir);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("1000 records, 0 errors, 0 warnings"),
        "{text}"
    );
}
