//! `corelog doctor --data-dir DIR`: a host check in the spirit of `rpk redpanda tune`, read-only
//! except for the data directory it creates (as `serve` would) and one scratch block it writes
//! and removes there.
//!
//! Report format (stable, parsed by tests and scripts): one line per check,
//! `PASS|WARN|FAIL  <check>: <what it found>; <what it means>`, and for every line that is not
//! PASS a second line `    fix: <exact command>`. Exit code 1 when any check FAILs (the node
//! will not run, or will not be durable), 0 otherwise; WARN means slower or less predictable,
//! not broken.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use clap::Args;
use glommio::{LocalExecutorBuilder, Placement};

use crate::io::{self, ResourceLimit};

/// glommio needs io_uring features of Linux 5.8.
const KERNEL_VERSION_MIN: (u32, u32) = (5, 8);
/// Open files wanted: every connection the node admits by default, plus segment files, with
/// room to spare. `tuning/corelog.service` and `tuning/limits.d/corelog.conf` grant at least this.
pub const OPEN_FILES_WANTED: u64 = 65_536;
/// Below this the node cannot hold its default connections and segment files.
const OPEN_FILES_MIN: u64 = crate::config::CONNECTIONS_MAX_DEFAULT as u64 + 1024;
/// Free space below this cannot hold one default segment plus its pre-allocation: FAIL.
const FREE_BYTES_MIN: u64 = 2 << 30;
/// Free space below this share of the filesystem: WARN (retention must keep up).
const FREE_PERCENT_WARN: u64 = 10;
/// Every log write is this aligned; a device with larger logical blocks rejects them.
const LOGICAL_BLOCK_BYTES_MAX: u64 = io::BLOCK_BYTES;
/// Registered I/O memory of the executor the io_uring check builds.
const PROBE_IO_MEMORY_BYTES: usize = 64 << 10;

/// `corelog doctor` flags.
#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    /// The data directory `corelog serve` will use (created if missing).
    #[arg(long, default_value = crate::config::DATA_DIR_DEFAULT)]
    pub data_dir: PathBuf,
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub status: Status,
    /// Short, stable name: `kernel`, `io_uring`, `memlock`, `filesystem`, ...
    pub name: &'static str,
    pub found: String,
    pub meaning: String,
    /// The exact command that fixes a WARN or FAIL.
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, found: impl Into<String>, meaning: impl Into<String>) -> Check {
        Check {
            status: Status::Pass,
            name,
            found: found.into(),
            meaning: meaning.into(),
            fix: None,
        }
    }

    fn bad(
        status: Status,
        name: &'static str,
        found: impl Into<String>,
        meaning: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            status,
            name,
            found: found.into(),
            meaning: meaning.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs `corelog doctor`: prints the report, returns the exit code (1 on any FAIL).
pub fn run_cli(args: &DoctorArgs) -> Result<u8, String> {
    let checks = run(&args.data_dir);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write_report(&mut out, &checks).map_err(|e| format!("writing the report: {e}"))?;
    Ok(if checks.iter().any(|c| c.status == Status::Fail) {
        1
    } else {
        0
    })
}

/// Every check, in report order.
pub fn run(data_dir: &Path) -> Vec<Check> {
    let cores = io::online_cpus().len();
    let mut checks = vec![check_kernel()];
    // Read the locked-memory limit before building an executor, which may raise it.
    checks.push(check_memlock(cores));
    checks.push(check_io_uring());
    checks.extend(check_data_dir(data_dir));
    checks.push(check_cpus(cores));
    checks.push(check_transparent_huge_pages());
    checks.push(check_clock_source());
    checks.push(check_open_files());
    checks
}

/// Writes the report in the format of the module doc.
pub fn write_report(out: &mut impl Write, checks: &[Check]) -> std::io::Result<()> {
    for c in checks {
        writeln!(out, "{}  {}: {}; {}", c.status, c.name, c.found, c.meaning)?;
        if let Some(fix) = &c.fix
            && c.status != Status::Pass
        {
            writeln!(out, "    fix: {fix}")?;
        }
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    writeln!(
        out,
        "{} passed, {} warnings, {} failed",
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail)
    )
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

fn check_kernel() -> Check {
    let Some(release) = read_trimmed("/proc/sys/kernel/osrelease") else {
        return Check::bad(
            Status::Warn,
            "kernel",
            "cannot read /proc/sys/kernel/osrelease",
            "is /proc mounted?",
            "mount -t proc proc /proc",
        );
    };
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= KERNEL_VERSION_MIN {
        Check::pass(
            "kernel",
            format!("Linux {release}"),
            "new enough for glommio's io_uring",
        )
    } else {
        Check::bad(
            Status::Fail,
            "kernel",
            format!("Linux {release}"),
            format!(
                "glommio needs Linux {}.{} or newer",
                KERNEL_VERSION_MIN.0, KERNEL_VERSION_MIN.1
            ),
            "upgrade the kernel (e.g. `apt install linux-generic-hwe-22.04`) and reboot",
        )
    }
}

fn check_io_uring() -> Check {
    const FIX: &str = "sudo sysctl -w kernel.io_uring_disabled=0";
    let disabled = read_trimmed("/proc/sys/kernel/io_uring_disabled");
    match disabled.as_deref() {
        Some("2") => {
            return Check::bad(
                Status::Fail,
                "io_uring",
                "kernel.io_uring_disabled = 2",
                "io_uring is off for every process; the node cannot start",
                FIX,
            );
        }
        Some("1") => {
            return Check::bad(
                Status::Warn,
                "io_uring",
                "kernel.io_uring_disabled = 1",
                "only members of kernel.io_uring_group may use io_uring",
                format!("{FIX}   # or add the corelog user to the group in kernel.io_uring_group"),
            );
        }
        _ => {}
    }
    if let Err(e) = io::ensure_memlock(io::MEMLOCK_BYTES_MIN) {
        return Check::bad(
            Status::Fail,
            "io_uring",
            "could not build an executor",
            e,
            "ulimit -l 65536",
        );
    }
    match LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(PROBE_IO_MEMORY_BYTES)
        .make()
    {
        Ok(executor) => {
            drop(executor);
            let found = match disabled {
                Some(v) => format!("kernel.io_uring_disabled = {v}, a glommio executor starts"),
                None => "a glommio executor starts".into(),
            };
            Check::pass("io_uring", found, "the node's I/O path works here")
        }
        Err(e) => Check::bad(
            Status::Fail,
            "io_uring",
            format!("building a glommio executor failed: {e}"),
            "the node cannot start (seccomp in a container, or io_uring disabled)",
            format!("{FIX}   # in a container also allow io_uring_setup/io_uring_enter in seccomp"),
        ),
    }
}

fn check_memlock(cores: usize) -> Check {
    let wanted = io::memlock_bytes_wanted(cores, crate::node::IO_MEMORY_BYTES);
    let fix = format!(
        "ulimit -l {}   # systemd: LimitMEMLOCK=infinity (tuning/corelog.service); \
         or tuning/limits.d/corelog.conf",
        wanted / 1024
    );
    let limit = match io::resource_limit(ResourceLimit::LockedMemory) {
        Ok(l) => l,
        Err(e) => {
            return Check::bad(
                Status::Warn,
                "memlock",
                format!("cannot read RLIMIT_MEMLOCK: {e}"),
                "the node may not be able to register I/O buffers",
                fix,
            );
        }
    };
    // `serve` raises the soft limit up to the hard one by itself: the hard limit decides.
    let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |b| format!("{} KiB", b / 1024));
    let found = format!(
        "RLIMIT_MEMLOCK soft {} hard {}, serve wants {} KiB for {cores} cores",
        show(limit.soft),
        show(limit.hard),
        wanted / 1024
    );
    match limit.hard {
        None => Check::pass(
            "memlock",
            found,
            "I/O buffers can be registered with io_uring",
        ),
        Some(hard) if hard >= wanted => Check::pass(
            "memlock",
            found,
            "serve raises the soft limit itself; I/O buffers can be registered",
        ),
        Some(hard) if hard >= io::MEMLOCK_BYTES_MIN => Check::bad(
            Status::Warn,
            "memlock",
            found,
            "serve runs with unregistered I/O buffers (slower)",
            fix,
        ),
        Some(_) => Check::bad(
            Status::Fail,
            "memlock",
            found,
            format!(
                "below {} KiB glommio cannot build its io_uring rings",
                io::MEMLOCK_BYTES_MIN / 1024
            ),
            fix,
        ),
    }
}

/// Filesystem magic numbers, `statfs` `f_type` (linux/magic.h).
mod magic {
    pub const EXT4: u32 = 0xEF53;
    pub const XFS: u32 = 0x5846_5342;
    pub const BTRFS: u32 = 0x9123_683E;
    pub const TMPFS: u32 = 0x0102_1994;
    pub const RAMFS: u32 = 0x8584_58F6;
    pub const OVERLAY: u32 = 0x794C_7630;
    pub const NFS: u32 = 0x6969;
    pub const SMB: u32 = 0x517B;
    pub const CIFS: u32 = 0xFF53_4D42;
    pub const SMB2: u32 = 0xFE53_4D42;
    pub const FUSE: u32 = 0x6573_5546;
    pub const ZFS: u32 = 0x2FC1_2FC1;
}

/// What the log can expect of the filesystem under its data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilesystemClass {
    /// ext4, xfs: a local disk with O_DIRECT, what corelog is tested on.
    Tested,
    /// tmpfs, ramfs: memory; nothing survives a reboot.
    Memory,
    /// overlay: a container's copy-on-write layer, lost with the container.
    ContainerLayer,
    /// NFS, SMB/CIFS, FUSE: `fdatasync` and O_DIRECT do not mean what the log relies on.
    Remote,
    /// btrfs, zfs, and any filesystem not named here: may work, not tested.
    Untested,
}

impl FilesystemClass {
    /// Classifies a `statfs` `f_type`. The magic is 32 bits; the field is a signed word whose
    /// width depends on the ABI, so a magic above `0x7fff_ffff` may arrive sign-extended: only
    /// the low 32 bits are compared.
    pub fn of(f_type: i64) -> FilesystemClass {
        match f_type as u32 {
            magic::EXT4 | magic::XFS => FilesystemClass::Tested,
            magic::TMPFS | magic::RAMFS => FilesystemClass::Memory,
            magic::OVERLAY => FilesystemClass::ContainerLayer,
            magic::NFS | magic::SMB | magic::CIFS | magic::SMB2 | magic::FUSE => {
                FilesystemClass::Remote
            }
            _ => FilesystemClass::Untested,
        }
    }

    /// The verdict: only a tested local filesystem passes; one the log cannot be durable on
    /// fails; the rest warn.
    pub fn status(self) -> Status {
        match self {
            FilesystemClass::Tested => Status::Pass,
            FilesystemClass::Memory | FilesystemClass::ContainerLayer | FilesystemClass::Remote => {
                Status::Fail
            }
            FilesystemClass::Untested => Status::Warn,
        }
    }

    fn meaning(self) -> &'static str {
        match self {
            FilesystemClass::Tested => "a local filesystem with O_DIRECT",
            FilesystemClass::Memory => {
                "memory, not disk: nothing survives a reboot, and serve refuses it"
            }
            FilesystemClass::ContainerLayer => {
                "a container's copy-on-write layer: slow, and lost with the container"
            }
            FilesystemClass::Remote => {
                "a network or user-space filesystem: fdatasync and O_DIRECT are not what the log \
                 relies on"
            }
            FilesystemClass::Untested => "not tested with corelog (ext4 and xfs are)",
        }
    }
}

/// The filesystem's name for a `statfs` `f_type`, if it is one this module knows.
pub fn filesystem_name(f_type: i64) -> Option<&'static str> {
    Some(match f_type as u32 {
        magic::EXT4 => "ext4",
        magic::XFS => "xfs",
        magic::BTRFS => "btrfs",
        magic::TMPFS => "tmpfs",
        magic::RAMFS => "ramfs",
        magic::OVERLAY => "overlay",
        magic::NFS => "nfs",
        magic::SMB | magic::CIFS | magic::SMB2 => "cifs/smb",
        magic::FUSE => "fuse",
        magic::ZFS => "zfs",
        _ => return None,
    })
}

/// The `filesystem` line of the report for `dir` on a filesystem of type `f_type`. Pure (no
/// I/O), so every verdict is tested without mounting anything.
pub fn filesystem_check(dir: &Path, f_type: i64) -> Check {
    let class = FilesystemClass::of(f_type);
    let found = format!(
        "{} is on {}",
        dir.display(),
        filesystem_name(f_type).map_or(format!("filesystem type {f_type:#x}"), str::to_string)
    );
    match class.status() {
        Status::Pass => Check::pass("filesystem", found, class.meaning()),
        status => {
            let fix = if class == FilesystemClass::ContainerLayer {
                format!(
                    "docker run -v /var/lib/corelog:/var/lib/corelog ...   # then {}",
                    move_fix(dir)
                )
            } else {
                move_fix(dir)
            };
            Check::bad(status, "filesystem", found, class.meaning(), fix)
        }
    }
}

/// The fix for a data directory the log cannot (or should not) use: another directory.
fn move_fix(dir: &Path) -> String {
    format!(
        "mkdir -p /var/lib/corelog && corelog serve --data-dir /var/lib/corelog   \
         # a directory on a local ext4/xfs disk, instead of {}",
        dir.display()
    )
}

/// The filesystem, O_DIRECT, device and free-space checks of the data directory.
fn check_data_dir(dir: &Path) -> Vec<Check> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        return vec![Check::bad(
            Status::Fail,
            "filesystem",
            format!("cannot create {}: {e}", dir.display()),
            "serve could not use this data directory",
            format!("sudo install -d -o $(id -un) {}", dir.display()),
        )];
    }
    let mut checks = Vec::new();
    let fs_check = match io::filesystem_magic(dir) {
        Ok(f_type) => filesystem_check(dir, f_type),
        Err(e) => {
            return vec![Check::bad(
                Status::Fail,
                "filesystem",
                e.to_string(),
                "cannot tell where the data would live",
                move_fix(dir),
            )];
        }
    };
    let unusable = fs_check.status == Status::Fail;
    checks.push(fs_check);
    checks.push(match io::probe_direct_write(dir) {
        Ok(()) => Check::pass(
            "o_direct",
            "a 4 KiB O_DIRECT write + fdatasync succeeded",
            "the log's write path works in this directory",
        ),
        Err(e) => Check::bad(
            Status::Fail,
            "o_direct",
            format!("a 4 KiB O_DIRECT write failed: {e}"),
            "the log cannot write here",
            move_fix(dir),
        ),
    });
    if !unusable {
        checks.extend(check_device(dir));
    }
    checks.push(check_free_space(dir));
    checks
}

/// The block device's queue directory in sysfs: the whole disk's, for a partition.
fn device_queue_dir(dir: &Path) -> Result<(String, PathBuf), String> {
    let dev = std::fs::metadata(dir)
        .map_err(|e| format!("cannot stat {}: {e}", dir.display()))?
        .dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let id = format!("{major}:{minor}");
    if major == 0 {
        return Err(format!("{id} is not a block device (a virtual filesystem)"));
    }
    let mut sys = std::fs::canonicalize(format!("/sys/dev/block/{id}"))
        .map_err(|e| format!("no /sys/dev/block/{id}: {e}"))?;
    // A partition has no queue/ of its own; its parent directory is the whole disk.
    if !sys.join("queue").is_dir()
        && let Some(parent) = sys.parent()
    {
        sys = parent.to_path_buf();
    }
    let name = sys
        .file_name()
        .map_or(id.clone(), |n| n.to_string_lossy().into_owned());
    Ok((format!("{name} ({id})"), sys.join("queue")))
}

fn check_device(dir: &Path) -> Vec<Check> {
    let (device, queue) = match device_queue_dir(dir) {
        Ok(found) => found,
        Err(why) => {
            return vec![Check::bad(
                Status::Warn,
                "device",
                why,
                "cannot check polled I/O or block size",
                format!("findmnt -T {}   # see which device holds it", dir.display()),
            )];
        }
    };
    let mut checks = Vec::new();
    checks.push(match read_trimmed(queue.join("io_poll")).as_deref() {
        Some("1") => Check::pass(
            "io_poll",
            format!("{device}: io_poll = 1"),
            "polled completions available; glommio uses its poll ring",
        ),
        Some(v) => Check::bad(
            Status::Warn,
            "io_poll",
            format!("{device}: io_poll = {v}"),
            "no polled I/O: completions come by interrupt (fine, a little more latency)",
            "echo 'options nvme poll_queues=4' | sudo tee /etc/modprobe.d/nvme-poll.conf && \
             sudo update-initramfs -u && sudo reboot   # NVMe only",
        ),
        None => Check::bad(
            Status::Warn,
            "io_poll",
            format!("{device}: no {}", queue.join("io_poll").display()),
            "cannot tell whether polled I/O is available",
            format!("cat {}", queue.join("io_poll").display()),
        ),
    });
    checks.push(
        match read_trimmed(queue.join("logical_block_size")).and_then(|s| s.parse::<u64>().ok()) {
            Some(b) if b <= LOGICAL_BLOCK_BYTES_MAX => Check::pass(
                "block_size",
                format!("{device}: logical block {b} bytes"),
                format!("the log's {} byte aligned writes fit", io::BLOCK_BYTES),
            ),
            Some(b) => Check::bad(
                Status::Fail,
                "block_size",
                format!("{device}: logical block {b} bytes"),
                format!(
                    "the log writes {} byte blocks; this device rejects them",
                    io::BLOCK_BYTES
                ),
                "sudo nvme format /dev/nvme0n1 --lbaf=0   # pick a 4096 or 512 byte LBA format",
            ),
            None => Check::bad(
                Status::Warn,
                "block_size",
                format!("{device}: logical block size unknown"),
                "cannot confirm 4 KiB writes fit",
                format!("cat {}", queue.join("logical_block_size").display()),
            ),
        },
    );
    if let Some(sched) = read_trimmed(queue.join("scheduler")) {
        let active = sched
            .split_whitespace()
            .find(|s| s.starts_with('['))
            .map_or(sched.as_str(), |s| s.trim_matches(['[', ']']));
        checks.push(if active == "none" || active == "mq-deadline" {
            Check::pass(
                "io_scheduler",
                format!("{device}: {active}"),
                "no reordering beyond what the device does",
            )
        } else {
            Check::bad(
                Status::Warn,
                "io_scheduler",
                format!("{device}: {active}"),
                "a scheduler that may delay the log's writes behind others",
                format!("echo none | sudo tee {}", queue.join("scheduler").display()),
            )
        });
    }
    checks
}

fn check_free_space(dir: &Path) -> Check {
    match io::filesystem_space(dir) {
        Ok(space) => {
            let percent = (space.available_bytes * 100)
                .checked_div(space.total_bytes)
                .unwrap_or(0);
            let found = format!(
                "{} free of {} ({percent}%)",
                mib(space.available_bytes),
                mib(space.total_bytes)
            );
            let fix = format!(
                "corelog serve --retention-bytes N ...   # or free space: du -sh {}/*",
                dir.display()
            );
            if space.available_bytes < FREE_BYTES_MIN {
                Check::bad(
                    Status::Fail,
                    "free_space",
                    found,
                    format!(
                        "below {}: not even one default segment and its pre-allocation fit",
                        mib(FREE_BYTES_MIN)
                    ),
                    fix,
                )
            } else if percent < FREE_PERCENT_WARN {
                Check::bad(
                    Status::Warn,
                    "free_space",
                    found,
                    "little room: the log stops with DiskFull when it runs out",
                    fix,
                )
            } else {
                Check::pass("free_space", found, "room for the log to grow")
            }
        }
        Err(e) => Check::bad(
            Status::Warn,
            "free_space",
            e.to_string(),
            "cannot tell how much room the log has",
            format!("df -h {}", dir.display()),
        ),
    }
}

fn check_cpus(cores: usize) -> Check {
    let governor = read_trimmed("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor");
    let found = format!(
        "{cores} online CPUs (one shard each), governor {}",
        governor.as_deref().unwrap_or("not exposed")
    );
    match governor.as_deref() {
        None => Check::pass(
            "cpu",
            found,
            "no cpufreq control here (a VM or fixed frequency): nothing to tune",
        ),
        Some("performance") => Check::pass("cpu", found, "cores stay at full speed"),
        Some(_) => Check::bad(
            Status::Warn,
            "cpu",
            found,
            "cores slow down when idle: latency spikes when load arrives",
            "sudo cpupower frequency-set -g performance",
        ),
    }
}

fn check_transparent_huge_pages() -> Check {
    const PATH: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
    let Some(thp) = read_trimmed(PATH) else {
        return Check::pass("thp", "not available", "no compaction stalls from it");
    };
    let active = thp
        .split_whitespace()
        .find(|s| s.starts_with('['))
        .map_or(thp.as_str(), |s| s.trim_matches(['[', ']']))
        .to_string();
    if active == "always" {
        Check::bad(
            Status::Warn,
            "thp",
            format!("transparent huge pages: {active}"),
            "khugepaged compaction can stall a shard for milliseconds",
            format!("echo madvise | sudo tee {PATH}"),
        )
    } else {
        Check::pass(
            "thp",
            format!("transparent huge pages: {active}"),
            "no compaction stalls forced on the node",
        )
    }
}

fn check_clock_source() -> Check {
    const DIR: &str = "/sys/devices/system/clocksource/clocksource0";
    let Some(current) = read_trimmed(format!("{DIR}/current_clocksource")) else {
        return Check::bad(
            Status::Warn,
            "clocksource",
            "unknown",
            "cannot tell how expensive timestamps are",
            format!("cat {DIR}/current_clocksource"),
        );
    };
    match current.as_str() {
        "tsc" | "kvm-clock" | "arch_sys_counter" => Check::pass(
            "clocksource",
            current,
            "reading the clock is cheap (no system call)",
        ),
        _ => {
            let available =
                read_trimmed(format!("{DIR}/available_clocksource")).unwrap_or_default();
            let better = if available.split_whitespace().any(|s| s == "tsc") {
                "tsc"
            } else {
                "kvm-clock"
            };
            Check::bad(
                Status::Warn,
                "clocksource",
                format!("{current} (available: {available})"),
                "every timestamp and timer costs a slow clock read",
                format!("echo {better} | sudo tee {DIR}/current_clocksource"),
            )
        }
    }
}

fn check_open_files() -> Check {
    let fix = format!(
        "ulimit -n {OPEN_FILES_WANTED}   # systemd: LimitNOFILE= (tuning/corelog.service); \
         or tuning/limits.d/corelog.conf"
    );
    match io::resource_limit(ResourceLimit::OpenFiles) {
        Ok(limit) => {
            let soft = limit.soft.unwrap_or(u64::MAX);
            let found = format!(
                "RLIMIT_NOFILE soft {}",
                limit.soft.map_or("unlimited".into(), |v| v.to_string())
            );
            if soft >= OPEN_FILES_WANTED {
                Check::pass(
                    "open_files",
                    found,
                    "room for connections and segment files",
                )
            } else if soft >= OPEN_FILES_MIN {
                Check::bad(
                    Status::Warn,
                    "open_files",
                    found,
                    format!("enough for the defaults, not for {OPEN_FILES_WANTED}"),
                    fix,
                )
            } else {
                Check::bad(
                    Status::Warn,
                    "open_files",
                    found,
                    format!(
                        "below {OPEN_FILES_MIN}: the node runs out of descriptors before its \
                         {} connection limit",
                        crate::config::CONNECTIONS_MAX_DEFAULT
                    ),
                    fix,
                )
            }
        }
        Err(e) => Check::bad(
            Status::Warn,
            "open_files",
            format!("cannot read RLIMIT_NOFILE: {e}"),
            "unknown descriptor budget",
            fix,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `statfs` magic numbers as linux/magic.h spells them, written out again here so a typo in
    /// the `magic` module cannot agree with itself.
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const TMPFS: i64 = 0x0102_1994;
    const OVERLAY: i64 = 0x794C_7630;
    const NFS: i64 = 0x6969;

    fn verdict(f_type: i64) -> (Status, Check) {
        let check = filesystem_check(Path::new("/srv/corelog"), f_type);
        (check.status, check)
    }

    #[test]
    fn filesystem_ext4_and_xfs_pass_without_a_fix() {
        for (f_type, name) in [(EXT4, "ext4"), (XFS, "xfs")] {
            assert_eq!(FilesystemClass::of(f_type), FilesystemClass::Tested);
            let (status, check) = verdict(f_type);
            assert_eq!(status, Status::Pass, "{name}");
            assert_eq!(check.name, "filesystem");
            assert!(check.found.contains(name), "{check:?}");
            assert!(check.fix.is_none(), "{check:?}");
        }
    }

    #[test]
    fn filesystem_tmpfs_fails_as_memory() {
        assert_eq!(FilesystemClass::of(TMPFS), FilesystemClass::Memory);
        let (status, check) = verdict(TMPFS);
        assert_eq!(status, Status::Fail);
        assert!(check.found.contains("tmpfs"), "{check:?}");
        assert!(check.meaning.contains("memory"), "{check:?}");
        assert!(check.fix.unwrap().contains("/srv/corelog"));
    }

    #[test]
    fn filesystem_overlay_fails_as_a_container_layer() {
        assert_eq!(
            FilesystemClass::of(OVERLAY),
            FilesystemClass::ContainerLayer
        );
        let (status, check) = verdict(OVERLAY);
        assert_eq!(status, Status::Fail);
        assert!(check.found.contains("overlay"), "{check:?}");
        // The fix for a container is a volume on the host's disk.
        assert!(check.fix.unwrap().contains("docker run -v"));
    }

    #[test]
    fn filesystem_nfs_and_other_remote_filesystems_fail() {
        let cifs: i64 = 0xFF53_4D42;
        let smb2: i64 = 0xFE53_4D42;
        let fuse: i64 = 0x6573_5546;
        for f_type in [NFS, 0x517B, cifs, smb2, fuse] {
            assert_eq!(
                FilesystemClass::of(f_type),
                FilesystemClass::Remote,
                "{f_type:#x}"
            );
            let (status, check) = verdict(f_type);
            assert_eq!(status, Status::Fail, "{check:?}");
            assert!(check.fix.is_some(), "{check:?}");
        }
        assert!(verdict(NFS).1.found.contains("nfs"));
    }

    #[test]
    fn filesystem_btrfs_and_unknown_types_warn() {
        let (status, check) = verdict(BTRFS);
        assert_eq!(status, Status::Warn);
        assert!(check.found.contains("btrfs"), "{check:?}");
        assert!(check.fix.is_some(), "{check:?}");
        let (status, check) = verdict(0x1234_5678);
        assert_eq!(status, Status::Warn);
        assert!(check.found.contains("0x12345678"), "{check:?}");
    }

    #[test]
    fn filesystem_magic_sign_extended_by_a_32_bit_f_type_is_still_recognised() {
        // A 32-bit ABI's signed `f_type` turns magics above 0x7fff_ffff negative.
        let btrfs = 0x9123_683Eu32 as i32 as i64;
        let cifs = 0xFF53_4D42u32 as i32 as i64;
        assert!(btrfs < 0 && cifs < 0);
        assert_eq!(filesystem_name(btrfs), Some("btrfs"));
        assert_eq!(FilesystemClass::of(btrfs), FilesystemClass::Untested);
        assert_eq!(FilesystemClass::of(cifs), FilesystemClass::Remote);
    }

    #[test]
    fn filesystem_report_line_keeps_the_stable_format() {
        let mut out = Vec::new();
        write_report(&mut out, &[verdict(OVERLAY).1]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("FAIL  filesystem: /srv/corelog is on overlay; ")
        );
        assert!(lines.next().unwrap().starts_with("    fix: "));
        assert_eq!(lines.next(), Some("0 passed, 0 warnings, 1 failed"));
    }
}
