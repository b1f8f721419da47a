//! `corelog doctor`, `corelog iotune`, `serve --io-properties` and `serve --config`: the host
//! check's report and exit code, refusal of a tmpfs data directory, a calibration that `serve`
//! accepts, and config files merged under command-line flags.

mod common;

use std::path::{Path, PathBuf};

use common::node::{NodeProcess, corelog_bin, run_cli};
use common::{RemoveOnSuccess, test_dir};
use corelog::config::{NodeConfig, ServeArgs};
use corelog::tuning::iotune::IoProperties;

/// tmpfs on this machine class: the one place a test may put data, to show it is refused.
const TMPFS_DIR: &str = "/dev/shm";

/// A directory on tmpfs, removed when dropped.
struct TmpfsDir(PathBuf);

impl TmpfsDir {
    fn new(name: &str) -> TmpfsDir {
        let dir = Path::new(TMPFS_DIR).join(format!("corelog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TmpfsDir(dir)
    }
}

impl Drop for TmpfsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One parsed report line: status, check name, and the fix line if one follows.
#[derive(Debug)]
struct Line {
    status: String,
    name: String,
    fix: Option<String>,
}

fn parse_report(stdout: &str) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    for text in stdout.lines() {
        if let Some(fix) = text.strip_prefix("    fix: ") {
            let last = lines.last_mut().expect("a fix line follows a check line");
            assert!(last.fix.is_none(), "two fix lines for {}", last.name);
            last.fix = Some(fix.to_string());
            continue;
        }
        let Some((status, rest)) = text.split_once("  ") else {
            assert!(text.ends_with("failed"), "unexpected line {text:?}");
            continue;
        };
        assert!(
            ["PASS", "WARN", "FAIL"].contains(&status),
            "bad status in {text:?}"
        );
        let (name, what) = rest.split_once(": ").expect("`<check>: ` in a check line");
        assert!(what.contains("; "), "`<found>; <meaning>` in {text:?}");
        lines.push(Line {
            status: status.to_string(),
            name: name.to_string(),
            fix: None,
        });
    }
    lines
}

fn status_of<'a>(lines: &'a [Line], name: &str) -> &'a str {
    &lines
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no `{name}` check in {lines:?}"))
        .status
}

#[test]
fn doctor_reports_every_check_and_exits_by_its_verdicts() {
    let dir = test_dir("doctor_reports_every_check");
    let _cleanup = RemoveOnSuccess(dir.clone());
    let out = run_cli(&["doctor", "--data-dir", dir.to_str().unwrap()], None, "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = parse_report(&stdout);
    for name in [
        "kernel",
        "memlock",
        "io_uring",
        "filesystem",
        "o_direct",
        "free_space",
        "cpu",
        "thp",
        "clocksource",
        "open_files",
    ] {
        status_of(&lines, name);
    }
    for line in &lines {
        assert_eq!(
            line.fix.is_some(),
            line.status != "PASS",
            "a fix line exactly for WARN and FAIL: {line:?}\n{stdout}"
        );
    }
    // The test data directory is on the disk-backed filesystem under target/.
    assert_eq!(status_of(&lines, "filesystem"), "PASS", "{stdout}");
    assert_eq!(status_of(&lines, "o_direct"), "PASS", "{stdout}");
    let failed = lines.iter().any(|l| l.status == "FAIL");
    assert_eq!(
        out.status.code(),
        Some(if failed { 1 } else { 0 }),
        "exit code follows the verdicts\n{stdout}"
    );
}

#[test]
fn doctor_fails_a_tmpfs_data_dir() {
    let dir = TmpfsDir::new("doctor");
    let out = run_cli(&["doctor", "--data-dir", dir.0.to_str().unwrap()], None, "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = parse_report(&stdout);
    assert_eq!(status_of(&lines, "filesystem"), "FAIL", "{stdout}");
    assert!(stdout.contains("tmpfs"), "{stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
}

#[test]
fn serve_refuses_a_tmpfs_data_dir_with_a_clear_message() {
    let dir = TmpfsDir::new("serve");
    let failed = match NodeProcess::try_start(&dir.0, &[]) {
        Ok(_) => panic!("serve started on tmpfs"),
        Err(failed) => failed,
    };
    assert_eq!(failed.status.and_then(|s| s.code()), Some(2));
    assert!(
        failed.stderr.contains("tmpfs") && failed.stderr.contains("O_DIRECT"),
        "{}",
        failed.stderr
    );
}

#[test]
fn iotune_writes_properties_that_serve_accepts() {
    let dir = test_dir("iotune_writes_properties");
    let _cleanup = RemoveOnSuccess(dir.clone());
    let props = dir.join("io-properties.toml");
    let disk = dir.join("disk");
    let out = run_cli(
        &[
            "iotune",
            "--dir",
            disk.to_str().unwrap(),
            "--out",
            props.to_str().unwrap(),
            "--duration",
            "2s",
        ],
        None,
        "",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("chose write_bytes = "), "{stdout}");
    assert!(stdout.contains("one write at a time"), "{stdout}");
    let chosen = IoProperties::load(&props).expect("iotune writes a valid file");
    let text = std::fs::read_to_string(&props).unwrap();
    assert!(
        text.contains("[measured]") || text.contains("[[measured."),
        "{text}"
    );
    // The scratch file is gone.
    assert_eq!(std::fs::read_dir(&disk).unwrap().count(), 0);

    let args = ServeArgs::parse_with_config_file([
        "serve",
        "--data-dir",
        dir.join("data").to_str().unwrap(),
        "--io-properties",
        props.to_str().unwrap(),
    ])
    .unwrap();
    let config = NodeConfig::from_args(&args, &[0]).unwrap();
    assert_eq!(config.log.flush_bytes_max, chosen.write_bytes);
    assert_eq!(config.writes_in_flight, Some(chosen.writes_in_flight));

    let mut node = NodeProcess::start(
        &dir.join("data"),
        &["--io-properties", props.to_str().unwrap()],
    );
    node.terminate();
}

#[test]
fn serve_rejects_a_corrupt_io_properties_file_naming_file_and_key() {
    let dir = test_dir("serve_rejects_corrupt_io_properties");
    let _cleanup = RemoveOnSuccess(dir.clone());
    let props = dir.join("io-properties.toml");
    let cases = [
        (
            "version = 1\nwrite_bytes = 1000\nwrites_in_flight = 1\n",
            "write_bytes",
        ),
        ("version = 1\nwrite_bytes = 65536\n", "writes_in_flight"),
        (
            "version = 9\nwrite_bytes = 65536\nwrites_in_flight = 1\n",
            "version",
        ),
        (
            "version = 1\nwrite_bytes = \"big\"\nwrites_in_flight = 1\n",
            "write_bytes",
        ),
        ("\u{0}\u{1}garbage = = =", "not valid TOML"),
    ];
    for (text, key) in cases {
        std::fs::write(&props, text).unwrap();
        let err = IoProperties::load(&props).unwrap_err();
        assert!(
            err.contains(props.to_str().unwrap()) && err.contains(key),
            "{text:?}: {err}"
        );
    }
    // The real binary refuses it at start, with exit code 2 and the same message.
    std::fs::write(&props, cases[0].0).unwrap();
    let failed = match NodeProcess::try_start(
        &dir.join("data"),
        &["--io-properties", props.to_str().unwrap()],
    ) {
        Ok(_) => panic!("serve accepted a corrupt io-properties file"),
        Err(failed) => failed,
    };
    assert_eq!(failed.status.and_then(|s| s.code()), Some(2));
    assert!(
        failed.stderr.contains(props.to_str().unwrap()) && failed.stderr.contains("write_bytes"),
        "{}",
        failed.stderr
    );
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("corelog.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_file_values_reach_node_config_and_flags_override_them() {
    let dir = test_dir("config_file_round_trip");
    let _cleanup = RemoveOnSuccess(dir.clone());
    let data = dir.join("data");
    let config = write_config(
        &dir,
        &format!(
            "data-dir = {data:?}\n\
             segment-bytes = 1048576\n\
             retention-ms = 60000\n\
             fsync = \"interval:5\"\n\
             cpuset = [0]\n\
             node-id = \"from-file\"\n\
             listen = \"127.0.0.1:7500\"\n"
        ),
    );
    let args =
        ServeArgs::parse_with_config_file(["serve", "--config", config.to_str().unwrap()]).unwrap();
    let node = NodeConfig::from_args(&args, &[0, 1]).unwrap();
    assert_eq!(node.data_dir, data);
    assert_eq!(node.log.segment_bytes_max, 1 << 20);
    assert_eq!(node.log.retention_ms, Some(60_000));
    assert_eq!(node.cpus, vec![0]);
    assert_eq!(node.node_id, "from-file");
    assert_eq!(node.listen.port(), 7500);
    assert!(format!("{:?}", node.log.fsync).contains('5'));

    // Flags win over the file, including one that conflicts with a file key (cores/cpuset).
    let args = ServeArgs::parse_with_config_file([
        "serve",
        "--segment-bytes",
        "2097152",
        "--config",
        config.to_str().unwrap(),
        "--cores",
        "2",
    ])
    .unwrap();
    let node = NodeConfig::from_args(&args, &[0, 1]).unwrap();
    assert_eq!(node.log.segment_bytes_max, 2 << 20);
    assert_eq!(node.cpus, vec![0, 1]);
    assert_eq!(node.node_id, "from-file");
}

#[test]
fn config_file_unknown_key_or_bad_value_is_rejected_naming_the_key() {
    let dir = test_dir("config_file_rejects");
    let _cleanup = RemoveOnSuccess(dir.clone());
    let cases = [
        ("segment-bytez = 1048576\n", "`segment-bytez`"),
        ("segment-bytes = \"lots\"\n", "`segment-bytes`"),
        ("fsync = \"sometimes\"\n", "`fsync`"),
        ("listen = 7400\n", "`listen`"),
        ("config = \"other.toml\"\n", "`config`"),
        ("inject-fault = \"drop-record:2\"\n", "`inject-fault`"),
        ("segment-bytes = = 1\n", "not valid TOML"),
    ];
    for (text, named) in cases {
        let config = write_config(&dir, text);
        let err =
            ServeArgs::parse_with_config_file(["serve", "--config", config.to_str().unwrap()])
                .unwrap_err();
        assert!(
            err.contains(named) && err.contains(config.to_str().unwrap()),
            "{text:?}: {err}"
        );
    }
    // A value the parser accepts but validation refuses still names its flag.
    let config = write_config(&dir, "segment-bytes = 1\n");
    let args =
        ServeArgs::parse_with_config_file(["serve", "--config", config.to_str().unwrap()]).unwrap();
    let err = NodeConfig::from_args(&args, &[0]).unwrap_err();
    assert!(err.contains("--segment-bytes"), "{err}");
}

#[test]
fn serve_starts_from_a_config_file_and_rejects_a_bad_one_at_start() {
    let dir = test_dir("serve_config_file");
    let _cleanup = RemoveOnSuccess(dir.clone());
    let data = dir.join("data");
    let config = write_config(
        &dir,
        &format!(
            "data-dir = {data:?}\nlisten = \"127.0.0.1:0\"\nstats-listen = \"127.0.0.1:0\"\n\
             segment-bytes = 1048576\ncores = 1\n"
        ),
    );
    let mut cmd = std::process::Command::new(corelog_bin());
    cmd.args(["serve", "--config", config.to_str().unwrap()]);
    let mut node = match NodeProcess::spawn(cmd) {
        Ok(node) => node,
        Err(e) => panic!("serve --config did not start: {}", e.stderr),
    };
    assert_eq!(node.cores, 1);
    node.terminate();
    assert!(data.join("tls").is_dir(), "the file's data-dir was used");

    write_config(&dir, "segment-bytes = \"lots\"\n");
    let mut cmd = std::process::Command::new(corelog_bin());
    cmd.args(["serve", "--config", config.to_str().unwrap()]);
    let failed = match NodeProcess::spawn(cmd) {
        Ok(_) => panic!("serve started with a bad config file"),
        Err(failed) => failed,
    };
    assert_eq!(failed.status.and_then(|s| s.code()), Some(2));
    assert!(
        failed.stderr.contains("`segment-bytes`"),
        "{}",
        failed.stderr
    );
}
