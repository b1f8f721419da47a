//! `corelog doctor`, `corelog iotune`, `serve --io-properties` and `serve --config`: the host
//! check's report and exit code, refusal of a tmpfs or overlay data directory, a calibration that
//! `serve` accepts, and config files merged under command-line flags. And the host settings in
//! `tuning/` (sysctl file, limits file, systemd unit): parsed and checked against this kernel,
//! the doctor's wants, and the flags the real binary accepts. Nothing here changes the host
//! except one overlay mount under `target/`, made and removed by the test that needs it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::node::{NodeProcess, corelog_bin, run_cli};
use common::{RemoveOnSuccess, test_dir};
use corelog::config::{NodeConfig, ServeArgs};
use corelog::tuning::doctor::OPEN_FILES_WANTED;
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

/// An overlay filesystem mounted under `target/`, unmounted when dropped.
struct OverlayMount {
    merged: PathBuf,
}

impl OverlayMount {
    /// Mounts `root/merged` as an overlay of `root/{lower,upper,work}`. Fails (with the reason
    /// to print) where mounting is not permitted: not root, or a container without
    /// CAP_SYS_ADMIN.
    fn mount(root: &Path) -> Result<OverlayMount, String> {
        let [lower, upper, work, merged] =
            ["lower", "upper", "work", "merged"].map(|name| root.join(name));
        for dir in [&lower, &upper, &work, &merged] {
            std::fs::create_dir_all(dir).expect("create overlay directories");
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&merged)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t overlay: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(OverlayMount { merged })
    }

    /// Unmounts whatever is mounted at `merged` (a leftover of a killed run); errors ignored.
    fn unmount_path(merged: &Path) {
        let _ = Command::new("umount").arg(merged).output();
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.merged)
            .output()
            .is_ok_and(|out| out.status.success());
        if !unmounted {
            // Busy: detach it now, the kernel finishes when the last user lets go.
            let _ = Command::new("umount").arg("-l").arg(&self.merged).output();
        }
    }
}

#[test]
fn doctor_fails_a_data_dir_on_an_overlay_mount() {
    const NAME: &str = "doctor_fails_overlay";
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("corelog-tests")
        .join(NAME);
    OverlayMount::unmount_path(&root.join("merged"));
    let root = test_dir(NAME);
    // Declared before the mount, so dropped after it: the directory goes once unmounted.
    let _cleanup = RemoveOnSuccess(root.clone());
    let mount = match OverlayMount::mount(&root) {
        Ok(mount) => mount,
        Err(why) => {
            println!("skipped: cannot mount an overlay filesystem here ({why})");
            return;
        }
    };
    let data = mount.merged.join("data");
    let out = run_cli(&["doctor", "--data-dir", data.to_str().unwrap()], None, "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = parse_report(&stdout);
    assert_eq!(status_of(&lines, "filesystem"), "FAIL", "{stdout}");
    assert!(stdout.contains("is on overlay"), "{stdout}");
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
    assert!(stdout.contains("issued together"), "{stdout}");
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
    assert_eq!(config.log.write_bytes_max, Some(chosen.write_bytes));
    assert_eq!(
        config.log.flush_bytes_max,
        chosen.write_bytes * chosen.writes_in_flight
    );
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
             node-id = 7\n\
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
    assert_eq!(node.node_id, 7);
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
    assert_eq!(node.node_id, 7);
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

// ---- The host settings in tuning/ ----------------------------------------------------------

fn tuning_file(relative: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tuning")
        .join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (path, text)
}

/// A `/proc/sys` value of this machine, read only.
fn proc_sys(key: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key.replace('.', "/")))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The largest RLIMIT_NOFILE this kernel lets anyone set: a limit above it makes pam_limits
/// refuse the login and systemd refuse to start the service.
fn nr_open() -> u64 {
    proc_sys("fs.nr_open")
        .and_then(|v| v.parse().ok())
        .expect("/proc/sys/fs/nr_open")
}

/// One setting of a sysctl.d file.
#[derive(Debug)]
struct Sysctl {
    key: String,
    value: String,
    /// Written `-key = value`: a failure to set it (no such key on this kernel) is ignored.
    optional: bool,
    line: usize,
}

/// Parses a sysctl.d file, asserting its shape: every setting is `key = value` and belongs to a
/// group of settings led by a comment (no blank line between the comment and the setting).
fn parse_sysctl(text: &str) -> Vec<Sysctl> {
    let mut settings = Vec::new();
    let mut commented = false;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let number = index + 1;
        if line.is_empty() {
            commented = false;
            continue;
        }
        if line.starts_with('#') || line.starts_with(';') {
            commented = true;
            continue;
        }
        assert!(
            commented,
            "line {number} `{line}`: no comment above it saying what it moves"
        );
        let (key, value) = line
            .split_once(" = ")
            .unwrap_or_else(|| panic!("line {number} `{line}`: not `key = value`"));
        let (key, optional) = match key.strip_prefix('-') {
            Some(key) => (key, true),
            None => (key, false),
        };
        assert!(
            !key.is_empty()
                && key.split('.').all(|part| {
                    !part.is_empty()
                        && part.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c)
                        })
                }),
            "line {number}: `{key}` is not a dotted sysctl key"
        );
        assert!(
            !value.trim().is_empty(),
            "line {number}: `{key}` has no value"
        );
        settings.push(Sysctl {
            key: key.to_string(),
            value: value.trim().to_string(),
            optional,
            line: number,
        });
    }
    settings
}

#[test]
fn sysctl_file_sets_each_key_once_under_a_comment_saying_what_it_moves() {
    let (path, text) = tuning_file("sysctl.d/60-corelog.conf");
    let settings = parse_sysctl(&text);
    let mut seen = BTreeSet::new();
    for s in &settings {
        assert!(
            seen.insert(&s.key),
            "{}: `{}` set twice",
            path.display(),
            s.key
        );
    }
    // What the issue asks the file to cover: io_uring, file handles, network buffers, and the
    // page-cache writeback of the host's other files.
    for key in [
        "kernel.io_uring_disabled",
        "fs.file-max",
        "net.core.rmem_max",
        "net.ipv4.tcp_rmem",
        "vm.dirty_background_bytes",
        "vm.dirty_bytes",
    ] {
        assert!(
            seen.contains(&key.to_string()),
            "{}: no `{key}`",
            path.display()
        );
    }
}

#[test]
fn sysctl_file_keys_exist_on_this_kernel_with_values_of_the_right_shape() {
    let (path, text) = tuning_file("sysctl.d/60-corelog.conf");
    for s in parse_sysctl(&text) {
        let Some(current) = proc_sys(&s.key) else {
            // `-key` lines are for keys older kernels lack; `sysctl --system` skips them there.
            assert!(
                s.optional,
                "{}:{}: no /proc/sys entry for `{}` on this kernel",
                path.display(),
                s.line,
                s.key
            );
            println!("note: `{}` is optional and absent on this kernel", s.key);
            continue;
        };
        let ours: Vec<&str> = s.value.split_whitespace().collect();
        let theirs: Vec<&str> = current.split_whitespace().collect();
        assert_eq!(
            ours.len(),
            theirs.len(),
            "{}:{}: `{}` takes {} fields (now `{current}`), the file gives `{}`",
            path.display(),
            s.line,
            s.key,
            theirs.len(),
            s.value
        );
        for (mine, now) in ours.iter().zip(&theirs) {
            if now.parse::<i128>().is_ok() {
                assert!(
                    mine.parse::<i128>().is_ok(),
                    "{}:{}: `{}` is numeric (now `{current}`), the file gives `{}`",
                    path.display(),
                    s.line,
                    s.key,
                    s.value
                );
            }
        }
    }
}

#[test]
fn sysctl_file_never_lowers_a_limit_this_host_already_has() {
    // Settings that exist to raise a limit. Installing the file must not shrink one: recent
    // kernels default tcp_rmem's max to 32 MiB, and systemd sets fs.file-max to LONG_MAX.
    // For the tcp_*mem triples the maximum (the last field) is the limit.
    const RAISE_ONLY: [&str; 8] = [
        "fs.file-max",
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.core.netdev_max_backlog",
        "net.core.rmem_max",
        "net.core.wmem_max",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
    ];
    let (path, text) = tuning_file("sysctl.d/60-corelog.conf");
    let settings = parse_sysctl(&text);
    let last = |v: &str| -> u128 {
        v.split_whitespace()
            .last()
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("`{v}` is not numeric"))
    };
    for key in RAISE_ONLY {
        let s = settings
            .iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("{}: no `{key}`", path.display()));
        let Some(current) = proc_sys(key) else {
            continue;
        };
        assert!(
            last(&s.value) >= last(&current),
            "{}:{}: `{key} = {}` would lower this host's `{current}`",
            path.display(),
            s.line,
            s.value
        );
    }
}

/// One line of a limits.conf file: `<domain> <type> <item> <value>`.
#[derive(Debug)]
struct Limit {
    domain: String,
    kind: String,
    item: String,
    /// None: `unlimited` / `infinity` / `-1`.
    value: Option<u64>,
}

/// Parses a limits.conf file, asserting pam_limits' syntax.
fn parse_limits(path: &Path, text: &str) -> Vec<Limit> {
    const ITEMS: [&str; 19] = [
        "core",
        "data",
        "fsize",
        "memlock",
        "nofile",
        "rss",
        "stack",
        "cpu",
        "nproc",
        "as",
        "maxlogins",
        "maxsyslogins",
        "nonewprivs",
        "priority",
        "locks",
        "sigpending",
        "msgqueue",
        "nice",
        "rtprio",
    ];
    let mut limits = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{}:{}", path.display(), index + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [domain, kind, item, value] = fields[..] else {
            panic!("{at}: `{line}` is not `<domain> <type> <item> <value>`");
        };
        let name = domain.trim_start_matches(['@', '%']);
        assert!(
            domain == "*"
                || (!name.is_empty()
                    && name.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c)
                    })),
            "{at}: `{domain}` is not a user, @group or *"
        );
        assert!(
            ["soft", "hard", "-"].contains(&kind),
            "{at}: type `{kind}` is not soft, hard or -"
        );
        assert!(ITEMS.contains(&item), "{at}: `{item}` is not a limit item");
        let value = match value {
            "unlimited" | "infinity" | "-1" => None,
            v => Some(
                v.parse()
                    .unwrap_or_else(|_| panic!("{at}: `{v}` is not a number or unlimited")),
            ),
        };
        limits.push(Limit {
            domain: domain.to_string(),
            kind: kind.to_string(),
            item: item.to_string(),
            value,
        });
    }
    limits
}

/// The soft and hard values a limits file gives `item` (`-` sets both).
fn soft_and_hard(limits: &[Limit], item: &str) -> (Option<u64>, Option<u64>) {
    let pick = |kind: &str| {
        let found: Vec<&Limit> = limits
            .iter()
            .filter(|l| l.item == item && (l.kind == kind || l.kind == "-"))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one {kind} `{item}` entry: {found:?}"
        );
        found[0].value
    };
    (pick("soft"), pick("hard"))
}

#[test]
fn limits_file_grants_memlock_and_nofile_in_limits_conf_syntax() {
    let (path, text) = tuning_file("limits.d/corelog.conf");
    let limits = parse_limits(&path, &text);
    let unit = SystemdUnit::load();
    let user = unit.get("Service", "User").expect("User= in the unit");
    for l in &limits {
        assert_eq!(l.domain, user, "the limits are for the unit's user: {l:?}");
    }
    let (soft, hard) = soft_and_hard(&limits, "memlock");
    // limits.conf counts memlock in KiB.
    let wanted_kib = memlock_bytes_wanted() / 1024;
    for value in [soft, hard] {
        assert!(
            value.is_none_or(|kib| kib >= wanted_kib),
            "memlock {value:?} KiB is below the {wanted_kib} KiB serve wants"
        );
    }
    let (soft, hard) = soft_and_hard(&limits, "nofile");
    let (soft, hard) = (
        soft.expect("nofile cannot be unlimited"),
        hard.expect("nofile cannot be unlimited"),
    );
    assert!(soft <= hard, "nofile soft {soft} above hard {hard}");
    assert!(
        soft >= OPEN_FILES_WANTED,
        "nofile {soft}: doctor wants {OPEN_FILES_WANTED}"
    );
    assert!(
        hard <= nr_open(),
        "nofile {hard} above this kernel's fs.nr_open"
    );
}

/// Locked memory `serve` wants on this machine (every core).
fn memlock_bytes_wanted() -> u64 {
    corelog::io::memlock_bytes_wanted(
        corelog::io::online_cpus().len(),
        corelog::node::IO_MEMORY_BYTES,
    )
}

/// A systemd unit file: sections of `Key=Value` entries, in order.
struct SystemdUnit {
    path: PathBuf,
    text: String,
    sections: BTreeMap<String, Vec<(String, String)>>,
}

impl SystemdUnit {
    /// Parses `tuning/corelog.service` as systemd reads an INI unit file: `#`/`;` comments,
    /// `[Section]` headers, `Key=Value` entries, a trailing `\` continuing onto the next line.
    fn load() -> SystemdUnit {
        let (path, text) = tuning_file("corelog.service");
        let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        let mut section: Option<String> = None;
        let mut pending = String::new();
        for (index, raw) in text.lines().enumerate() {
            let at = format!("{}:{}", path.display(), index + 1);
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            if let Some(body) = line.strip_suffix('\\') {
                pending.push_str(body);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                assert!(
                    !sections.contains_key(name),
                    "{at}: section [{name}] repeated"
                );
                sections.insert(name.to_string(), Vec::new());
                section = Some(name.to_string());
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{at}: `{line}` is not `Key=Value`"));
            let key = key.trim();
            assert!(
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()),
                "{at}: `{key}` is not a key"
            );
            let section = section
                .as_ref()
                .unwrap_or_else(|| panic!("{at}: `{key}=` before any [Section]"));
            sections
                .get_mut(section)
                .expect("section inserted")
                .push((key.to_string(), value.trim().to_string()));
        }
        assert!(pending.is_empty(), "the unit ends inside a continued line");
        SystemdUnit {
            path,
            text,
            sections,
        }
    }

    /// The value systemd uses for a single-valued key: the last one given.
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)?
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every `corelog` command the unit would run (`Exec*=`), and the ones its comments
    /// suggest (`#   ExecStart=...`), as argument lists without the binary.
    fn corelog_commands(&self) -> Vec<Vec<String>> {
        let mut commands: Vec<&str> = self
            .sections
            .get("Service")
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("Exec"))
            .map(|(_, v)| v.as_str())
            .collect();
        commands.extend(self.text.lines().filter_map(|l| {
            let body = l.trim().strip_prefix('#')?.trim();
            body.starts_with("Exec")
                .then(|| body.split_once('=').unwrap().1)
        }));
        commands
            .into_iter()
            .map(|command| {
                let mut words = command.split_whitespace();
                // systemd's `-`, `@`, `:`, `+`, `!` prefixes change how it runs the binary.
                let binary = words
                    .next()
                    .expect("a command")
                    .trim_start_matches(['-', '@', ':', '+', '!']);
                assert!(
                    binary.starts_with('/') && binary.ends_with("/corelog"),
                    "{}: `{command}` does not run corelog by absolute path",
                    self.path.display()
                );
                words.map(str::to_string).collect()
            })
            .collect()
    }
}

/// A systemd time span (`60s`, `1min 30s`, `90` = seconds); None for `infinity`.
fn systemd_time_span(text: &str) -> Option<Duration> {
    if text == "infinity" {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("`{text}` is not a time span"));
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        total += match unit {
            "us" | "usec" => Duration::from_micros(number),
            "ms" | "msec" => Duration::from_millis(number),
            "" | "s" | "sec" | "second" | "seconds" => Duration::from_secs(number),
            "m" | "min" | "minute" | "minutes" => Duration::from_secs(number * 60),
            "h" | "hr" | "hour" | "hours" => Duration::from_secs(number * 3600),
            _ => panic!("`{text}`: unknown time unit `{unit}`"),
        };
    }
    Some(total)
}

/// The long flags `corelog SUBCOMMAND --help` lists.
fn help_flags(subcommand: &str) -> BTreeSet<String> {
    let out = run_cli(&[subcommand, "--help"], None, "");
    assert_eq!(out.status.code(), Some(0), "corelog {subcommand} --help");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| l.split_whitespace())
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(',').to_string())
        .collect()
}

#[test]
fn systemd_unit_has_the_three_sections_and_the_node_limits() {
    let unit = SystemdUnit::load();
    for section in ["Unit", "Service", "Install"] {
        assert!(
            unit.sections.contains_key(section),
            "no [{section}] in {}",
            unit.path.display()
        );
    }
    assert!(unit.get("Install", "WantedBy").is_some(), "no WantedBy=");

    let memlock = unit.get("Service", "LimitMEMLOCK").expect("LimitMEMLOCK=");
    if memlock != "infinity" {
        let bytes = memlock.parse::<u64>().unwrap_or_else(|_| {
            panic!("LimitMEMLOCK={memlock}: give bytes (or infinity) so this test can check it")
        });
        assert!(
            bytes >= memlock_bytes_wanted(),
            "LimitMEMLOCK={bytes} is below the {} bytes serve wants here",
            memlock_bytes_wanted()
        );
    }
    let nofile = unit.get("Service", "LimitNOFILE").expect("LimitNOFILE=");
    // `SOFT:HARD` or one value for both.
    let (soft, hard) = nofile.split_once(':').unwrap_or((nofile, nofile));
    let [soft, hard] = [soft, hard].map(|v| {
        v.parse::<u64>()
            .unwrap_or_else(|_| panic!("LimitNOFILE={nofile} is not a number"))
    });
    assert!(
        soft >= OPEN_FILES_WANTED,
        "LimitNOFILE={nofile}: doctor wants {OPEN_FILES_WANTED}"
    );
    assert!(
        hard <= nr_open(),
        "LimitNOFILE={nofile} is above this kernel's fs.nr_open: systemd would not start it"
    );
}

#[test]
fn systemd_unit_restarts_on_failure_and_stops_gracefully_after_the_drain() {
    let unit = SystemdUnit::load();
    let restart = unit.get("Service", "Restart").expect("Restart=");
    assert!(
        ["on-failure", "on-abnormal", "on-abort", "always"].contains(&restart),
        "Restart={restart} does not restart a crashed node"
    );
    // SIGTERM starts the graceful shutdown; another signal (or none) skips it.
    let signal = unit.get("Service", "KillSignal").unwrap_or("SIGTERM");
    assert!(
        ["SIGTERM", "TERM", "15"].contains(&signal),
        "KillSignal={signal}"
    );
    let mode = unit.get("Service", "KillMode").unwrap_or("control-group");
    assert!(
        ["control-group", "mixed", "process"].contains(&mode),
        "KillMode={mode} never stops the node"
    );
    // The stop must outlast the node's own drain (connections finish, logs flush, leadership
    // moves), or systemd SIGKILLs a node that was stopping cleanly.
    let timeout = unit
        .get("Service", "TimeoutStopSec")
        .expect("TimeoutStopSec=");
    let timeout = systemd_time_span(timeout)
        .unwrap_or_else(|| panic!("TimeoutStopSec=infinity: a hung node would never stop"));
    let drain = Duration::from_millis(corelog::node::SHUTDOWN_DRAIN_MS);
    assert!(
        timeout > drain,
        "TimeoutStopSec {timeout:?} does not exceed the node's {drain:?} drain"
    );
}

#[test]
fn systemd_unit_start_limits_sit_in_unit_where_systemd_reads_them() {
    // Regression: StartLimitIntervalSec= under [Service] was ignored by systemd ("Unknown key"),
    // so the restart back-off the comment promised did not exist.
    let unit = SystemdUnit::load();
    for key in [
        "StartLimitIntervalSec",
        "StartLimitBurst",
        "StartLimitAction",
    ] {
        assert!(
            unit.get("Service", key).is_none(),
            "{key}= belongs in [Unit]"
        );
    }
    assert!(unit.get("Unit", "StartLimitIntervalSec").is_some());
    assert!(unit.get("Unit", "StartLimitBurst").is_some());
}

#[test]
fn systemd_unit_runs_corelog_serve_with_flags_the_binary_accepts() {
    let unit = SystemdUnit::load();
    let exec_start = unit.get("Service", "ExecStart").expect("ExecStart=");
    assert!(
        exec_start.split_whitespace().nth(1) == Some("serve"),
        "ExecStart={exec_start} does not run `corelog serve`"
    );
    let commands = unit.corelog_commands();
    assert!(
        commands.len() >= 3,
        "ExecStart, ExecStartPre, the CPU example"
    );
    let mut helps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for args in commands {
        let subcommand = args.first().expect("a subcommand").clone();
        let known = helps
            .entry(subcommand.clone())
            .or_insert_with(|| help_flags(&subcommand));
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                known.contains(flag),
                "`corelog {subcommand}` has no {flag} (unit line: {args:?})"
            );
        }
        // The whole line, values and all, parses: clap stops at --help only if everything
        // before it was accepted.
        let mut with_help: Vec<&str> = args.iter().map(String::as_str).collect();
        with_help.push("--help");
        let out = run_cli(&with_help, None, "");
        assert_eq!(
            out.status.code(),
            Some(0),
            "corelog {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn tuning_docs_name_only_flags_the_binary_has() {
    // Every `corelog SUBCOMMAND --flag` written anywhere in tuning/ (README, scripts, comments).
    let subcommands = ["serve", "doctor", "iotune", "certs", "check"];
    let mut helps: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut invocations = 0;
    let files = [
        "README.md",
        "doctor.sh",
        "corelog.service",
        "limits.d/corelog.conf",
        "sysctl.d/60-corelog.conf",
    ];
    for file in files {
        let (path, text) = tuning_file(file);
        for (index, line) in text.lines().enumerate() {
            let words: Vec<&str> = line.split_whitespace().collect();
            for at in 0..words.len().saturating_sub(1) {
                let program = words[at].trim_matches(['`', '"']);
                let Some(&subcommand) = subcommands.iter().find(|s| **s == words[at + 1]) else {
                    continue;
                };
                if !(program == "corelog" || program == "$CORELOG" || program.ends_with("/corelog"))
                {
                    continue;
                }
                invocations += 1;
                let known = helps
                    .entry(subcommand)
                    .or_insert_with(|| help_flags(subcommand));
                for word in &words[at + 2..] {
                    if word.starts_with('#') || word.starts_with('|') || *word == "&&" {
                        break;
                    }
                    let flag = word
                        .trim_start_matches(['[', '`'])
                        .split(['=', '`', ']', ')', ','])
                        .next()
                        .unwrap_or("");
                    if flag.starts_with("--") {
                        assert!(
                            known.contains(flag),
                            "{}:{}: `corelog {subcommand}` has no {flag}",
                            path.display(),
                            index + 1
                        );
                    }
                    if word.contains('`') {
                        break;
                    }
                }
            }
        }
    }
    assert!(
        invocations >= 8,
        "found only {invocations} corelog commands"
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let dir = test_dir("systemd_analyze_verify");
    let _cleanup = RemoveOnSuccess(dir.clone());
    let unit = SystemdUnit::load();
    // systemd checks that ExecStart's binary exists: point it at the one cargo built.
    let unit_path = dir.join("corelog.service");
    std::fs::write(
        &unit_path,
        unit.text.replace("/usr/local/bin/corelog", corelog_bin()),
    )
    .unwrap();
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            println!("skipped: no systemd-analyze on this machine ({e})");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("corelog.service"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
