//! The I/O seam: the only module that touches glommio files, timers and raw syscalls.
//!
//! Storage code opens files through a [`Disk`] and gets [`File`]s back. A `File` wraps a glommio
//! [`DmaFile`]: every read and write goes through io_uring with `O_DIRECT`, so writes must be
//! [`BLOCK_BYTES`]-aligned in position and length. A `Disk` made with [`Disk::with_faults`]
//! injects errors (EIO, ENOSPC, failing `fdatasync`) into the files it opens, which is how the
//! tests drive the storage engine's error paths on real files.
//!
//! Two facts of this platform live here:
//! - glommio probes a device for polled I/O with a real read of the first `DmaFile` opened on it
//!   (per thread). An empty or write-only first file makes the probe wrongly enable the poll ring
//!   and every later read fails with EOPNOTSUPP (os error 95). [`Disk::prepare_dir`] opens one
//!   non-empty file read-write first.
//! - tmpfs does not support `O_DIRECT` (glommio silently falls back to buffered I/O there), so a
//!   data directory on tmpfs is refused with a clear error.

mod fault;
pub mod net;

pub use fault::Faults;

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};

use crate::error::{Error, Result};

/// The alignment of every direct-I/O write, in position and length.
pub const BLOCK_BYTES: u64 = 4096;

/// The file written once per device (per thread) to steer glommio's polled-I/O probe.
const PROBE_FILE_NAME: &str = ".corelog-probe";

/// Rounds `v` up to a multiple of [`BLOCK_BYTES`].
pub fn align_up(v: u64) -> u64 {
    v.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// Rounds `v` down to a multiple of [`BLOCK_BYTES`].
pub fn align_down(v: u64) -> u64 {
    v - v % BLOCK_BYTES
}

thread_local! {
    /// Devices (st_dev) this thread has already probed.
    static PROBED_DEVICES: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Opens files for the storage engine. Cheap to clone.
#[derive(Clone, Default)]
pub struct Disk {
    faults: Option<Rc<Faults>>,
}

impl Disk {
    /// The real disk.
    pub fn new() -> Disk {
        Disk { faults: None }
    }

    /// The real disk with errors injected as `faults` says (tests only).
    pub fn with_faults(faults: Rc<Faults>) -> Disk {
        Disk {
            faults: Some(faults),
        }
    }

    /// Creates `dir` if needed, refuses filesystems without `O_DIRECT`, and makes sure glommio's
    /// polled-I/O probe for the directory's device has run on a non-empty read-write file.
    pub async fn prepare_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::from_io("creating", dir, e))?;
        check_direct_io_filesystem(dir)?;
        let dev = std::fs::metadata(dir)
            .map_err(|e| Error::from_io("inspecting", dir, e))?
            .dev();
        if PROBED_DEVICES.with(|p| p.borrow().contains(&dev)) {
            return Ok(());
        }
        let probe = dir.join(PROBE_FILE_NAME);
        let block = vec![0xA5u8; BLOCK_BYTES as usize];
        std::fs::write(&probe, &block).map_err(|e| Error::from_io("writing", &probe, e))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&probe)
            .await
            .map_err(|e| Error::from_io("opening", &probe, e.into()))?;
        let read = file
            .read_at_aligned(0, BLOCK_BYTES as usize)
            .await
            .map_err(|e| Error::from_io("reading", &probe, e.into()));
        let _ = file.close().await;
        let _ = std::fs::remove_file(&probe);
        read?;
        PROBED_DEVICES.with(|p| p.borrow_mut().insert(dev));
        Ok(())
    }

    /// Opens `path` for direct-I/O reads and writes, creating it if it does not exist.
    pub async fn open_rw(&self, path: &Path) -> Result<File> {
        let dma = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(path)
            .await
            .map_err(|e| Error::from_io("opening", path, e.into()))?;
        Ok(File {
            dma,
            path: path.to_path_buf(),
            faults: self.faults.clone(),
        })
    }

    /// Opens an existing file for direct-I/O reads only.
    pub async fn open_read(&self, path: &Path) -> Result<File> {
        let dma = OpenOptions::new()
            .read(true)
            .dma_open(path)
            .await
            .map_err(|e| Error::from_io("opening", path, e.into()))?;
        Ok(File {
            dma,
            path: path.to_path_buf(),
            faults: self.faults.clone(),
        })
    }

    /// Makes directory entries created or removed in `dir` durable.
    pub async fn sync_dir(&self, dir: &Path) -> Result<()> {
        if let Some(f) = &self.faults {
            f.before_sync(dir)?;
        }
        let d = glommio::io::Directory::open(dir)
            .await
            .map_err(|e| Error::from_io("opening directory", dir, e.into()))?;
        let res = d
            .sync()
            .await
            .map_err(|e| Error::from_io("syncing directory", dir, e.into()));
        let _ = d.close().await;
        res
    }

    /// Removes a file; a file that is already gone is not an error.
    pub fn remove_file(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::from_io("removing", path, e)),
        }
    }

    /// Renames `from` to a name `to` that must be new, on glommio's blocking-thread pool (off
    /// the core's thread). `Ok(false)`: `from` does not exist. An existing `to` is not
    /// replaced: the error is `AlreadyExists` (`renameat2` with `RENAME_NOREPLACE`; on a
    /// filesystem without it, a plain rename).
    pub async fn rename_to_new(&self, from: &Path, to: &Path) -> Result<bool> {
        if let Some(f) = &self.faults {
            f.before_rename(from)?;
        }
        let (src, dst) = (from.to_path_buf(), to.to_path_buf());
        let renamed = glommio::executor()
            .spawn_blocking(move || rename_noreplace(&src, &dst))
            .await;
        match renamed {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::from_io("renaming", from, e)),
        }
    }

    /// Hands files to the process's remover thread, which removes them in the background, in
    /// the order given, without the caller waiting; a file already gone is not an error.
    /// Failures are logged and counted ([`background_removal_stats`]): the caller has already
    /// let go of the files.
    ///
    /// Freeing a large file's blocks (and, on a filesystem mounted with `discard`, trimming
    /// them) falls on the thread that removes the last name of a file nobody has open: 1.2 s
    /// for 1 GiB on this machine's ext4. Not a core's thread, then, nor glommio's
    /// blocking-thread pool, which other work (renames) waits on. And freed all at once, the
    /// blocks keep the disk busy so long that every `fdatasync` behind it waits (produce p99
    /// 330–390 ms while 256 MiB segments were deleted, against 16 ms without deletions). So each
    /// file marked `shrink` (nothing may have it open any more) first loses its blocks
    /// [`SHRINK_STEP_BYTES`] at a time, [`SHRINK_PAUSE`] apart: produce p99 then 25–63 ms.
    /// One thread serves every core and partition of the process, so the pacing holds for
    /// the node's disk as a whole, however many partitions delete at once. When more than
    /// [`REMOVER_BACKLOG_FILES_MAX`] files wait, it stops pausing until it has caught up:
    /// disk space within retention comes first.
    pub fn remove_files_in_background(&self, files: Vec<(PathBuf, bool)>) {
        for file in files {
            remover().queue(file);
        }
    }

    /// Lists the names of the entries of `dir`.
    pub fn list_dir(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::from_io("listing", dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::from_io("listing", dir, e))?;
            out.push(entry.path());
        }
        Ok(out)
    }

    /// Writes a small file atomically and durably: a temporary file, `fdatasync`, rename, then
    /// `fsync` of the directory. For metadata files, not the data path.
    ///
    /// Every step goes through the reactor (io_uring, or glommio's blocking-thread pool for
    /// the rename), so the core keeps serving while the journal commits these need. Blocking
    /// calls here stalled a core for milliseconds at every Raft state save, twice a second per
    /// partition. Callers serialize writes of one path (they share the temporary file).
    pub async fn write_file_atomic(&self, path: &Path, contents: &[u8]) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = path.with_extension("tmp");
        let file = glommio::io::BufferedFile::create(&tmp)
            .await
            .map_err(|e| Error::from_io("creating", &tmp, e.into()))?;
        let written = write_all_at(&file, contents).await;
        let synced = match written {
            Ok(()) => file
                .fdatasync()
                .await
                .map_err(|e| Error::from_io("syncing", &tmp, e.into())),
            Err(e) => Err(Error::from_io("writing", &tmp, e)),
        };
        let closed = file
            .close()
            .await
            .map_err(|e| Error::from_io("closing", &tmp, e.into()));
        synced.and(closed)?;
        glommio::io::rename(&tmp, path)
            .await
            .map_err(|e| Error::from_io("renaming", &tmp, e.into()))?;
        self.sync_dir(dir).await
    }
}

/// Bytes a file removed by [`Disk::remove_files_in_background`] loses per step.
pub const SHRINK_STEP_BYTES: u64 = 8 << 20;
/// The pause between two steps of shrinking a file before removing it: 1 GiB goes in 2.6 s
/// plus the disk's own time.
pub const SHRINK_PAUSE: Duration = Duration::from_millis(20);

/// Files handed to [`Disk::remove_files_in_background`] and what became of them, for the
/// whole process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemovalStats {
    /// Files queued and not yet removed (or failed).
    pub pending: u64,
    /// Files removed (or found already gone).
    pub removed: u64,
    /// Files whose removal failed; each is logged. Recovery removes them at the next open.
    pub failed: u64,
}

/// The process-wide counts of background file removals.
pub fn background_removal_stats() -> RemovalStats {
    match REMOVER.get() {
        None => RemovalStats::default(),
        Some(r) => {
            // Results first: a file counted as removed was queued before, so `pending` never
            // reads low.
            let removed = r.removed.load(Ordering::Acquire);
            let failed = r.failed.load(Ordering::Acquire);
            let queued = r.queued.load(Ordering::Acquire);
            RemovalStats {
                pending: queued.saturating_sub(removed + failed),
                removed,
                failed,
            }
        }
    }
}

/// The process's remover thread and its queue.
struct Remover {
    tx: Option<crossbeam::channel::Sender<(PathBuf, bool)>>,
    queued: AtomicU64,
    removed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

static REMOVER: OnceLock<Remover> = OnceLock::new();

fn remover() -> &'static Remover {
    REMOVER.get_or_init(|| {
        let removed = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (tx, rx) = crossbeam::channel::unbounded::<(PathBuf, bool)>();
        let (done, bad) = (removed.clone(), failed.clone());
        let spawned = std::thread::Builder::new()
            .name("corelog-remove".into())
            .spawn(move || {
                for (path, shrink) in rx.iter() {
                    match remove_gradually(&path, shrink, &|| rx.len()) {
                        Ok(()) => done.fetch_add(1, Ordering::Release),
                        Err(e) => {
                            log::warn!("removing {}: {e}", path.display());
                            bad.fetch_add(1, Ordering::Release)
                        }
                    };
                }
            });
        let tx = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                log::warn!("cannot start the file-remover thread: {e}; removing on the caller");
                None
            }
        };
        Remover {
            tx,
            queued: AtomicU64::new(0),
            removed,
            failed,
        }
    })
}

impl Remover {
    fn queue(&self, file: (PathBuf, bool)) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let unsent = match &self.tx {
            Some(tx) => tx.send(file).err().map(|e| e.into_inner()),
            None => Some(file),
        };
        // No thread: remove at once, without shrinking (nothing to pace it with).
        if let Some((path, _)) = unsent {
            match remove_gradually(&path, false, &|| 0) {
                Ok(()) => self.removed.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    log::warn!("removing {}: {e}", path.display());
                    self.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let cstr = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
    };
    let (src, dst) = (cstr(from)?, cstr(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) {
        // The filesystem cannot refuse to replace: the names are unique by construction
        // (`segment::deleted_path`), so a plain rename is what was meant anyway.
        return std::fs::rename(from, to);
    }
    Err(e)
}

/// Files waiting for the remover beyond which it stops pausing between shrink steps: it is
/// falling behind what retention deletes (a writer faster than about 400 MB/s), and keeping
/// disk space within retention matters more than spreading out the disk's trimming.
pub const REMOVER_BACKLOG_FILES_MAX: usize = 8;

/// The pause after a shrink step while `backlog` more files wait.
fn shrink_pause(backlog: usize) -> Duration {
    if backlog > REMOVER_BACKLOG_FILES_MAX {
        Duration::ZERO
    } else {
        SHRINK_PAUSE
    }
}

/// Removes `path` (already gone is fine), first shrinking it step by step when `shrink`,
/// pausing between steps as [`shrink_pause`] says for the files still waiting (`backlog`).
fn remove_gradually(path: &Path, shrink: bool, backlog: &dyn Fn() -> usize) -> io::Result<()> {
    if shrink {
        match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(file) => {
                let mut size = file.metadata()?.len();
                while size > SHRINK_STEP_BYTES {
                    size -= SHRINK_STEP_BYTES;
                    file.set_len(size)?;
                    let pause = shrink_pause(backlog());
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes all of `contents` at the start of `file`.
async fn write_all_at(file: &glommio::io::BufferedFile, contents: &[u8]) -> io::Result<()> {
    let mut at = 0;
    while at < contents.len() {
        let n = file.write_at(contents[at..].to_vec(), at as u64).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the file took no bytes",
            ));
        }
        at += n;
    }
    Ok(())
}

/// One direct-I/O file.
pub struct File {
    dma: DmaFile,
    path: PathBuf,
    faults: Option<Rc<Faults>>,
}

/// A buffer suitable for [`File::write_at`]: aligned for direct I/O.
pub struct WriteBuf(DmaBuffer);

impl WriteBuf {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }

    /// Zeroes the buffer from byte `at` to its end (the padding of the last block).
    pub fn zero_from(&mut self, at: usize) {
        self.0.as_bytes_mut()[at..].fill(0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

impl File {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A zero-filled buffer of `len` bytes (a multiple of [`BLOCK_BYTES`]).
    pub fn alloc(&self, len: usize) -> WriteBuf {
        let mut buf = self.alloc_unfilled(len);
        buf.as_mut_slice().fill(0);
        buf
    }

    /// A buffer of `len` bytes whose contents are unspecified: the caller must overwrite all of
    /// it (see [`WriteBuf::zero_from`]). Saves zero-filling what is copied over anyway (the
    /// appender's 1 MiB group commits).
    pub fn alloc_unfilled(&self, len: usize) -> WriteBuf {
        assert!(
            (len as u64).is_multiple_of(BLOCK_BYTES),
            "direct-I/O buffer length {len} is not block aligned"
        );
        WriteBuf(self.dma.alloc_dma_buffer(len))
    }

    /// Writes the whole buffer at `pos`. A short write is an error: the caller treats the range
    /// as unknown, exactly like a failed write.
    pub async fn write_at(&self, buf: WriteBuf, pos: u64) -> Result<()> {
        assert!(
            pos.is_multiple_of(BLOCK_BYTES),
            "direct-I/O write position {pos} is not block aligned"
        );
        let len = buf.len();
        if let Some(f) = &self.faults {
            f.before_write(&self.path)?;
        }
        let written = self
            .dma
            .write_at(buf.0, pos)
            .await
            .map_err(|e| Error::from_io("writing", &self.path, e.into()))?;
        if written != len {
            return Err(Error::from_io(
                "writing",
                &self.path,
                io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {written} of {len} bytes at {pos}"),
                ),
            ));
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `pos` (any alignment). Fewer bytes come back at end of file.
    pub async fn read_at(&self, pos: u64, len: usize) -> Result<ReadResult> {
        if let Some(f) = &self.faults {
            f.before_read(&self.path, len)?;
        }
        self.dma
            .read_at(pos, len)
            .await
            .map_err(|e| Error::from_io("reading", &self.path, e.into()))
    }

    /// `fdatasync`: makes every write that completed before it durable.
    pub async fn fdatasync(&self) -> Result<()> {
        if let Some(f) = &self.faults {
            f.before_sync(&self.path)?;
            if let Some(delay) = f.sync_delay() {
                sleep(delay).await;
            }
        }
        self.dma
            .fdatasync()
            .await
            .map_err(|e| Error::from_io("syncing", &self.path, e.into()))
    }

    /// Reserves space up to `len` bytes (unwritten extents that read as zeros); the file size
    /// grows to `len` if it was smaller.
    pub async fn pre_allocate(&self, len: u64) -> Result<()> {
        if let Some(f) = &self.faults {
            f.before_allocate(&self.path)?;
        }
        let size = self.size().await?;
        if size >= len {
            return Ok(());
        }
        self.dma
            .pre_allocate(len, false)
            .await
            .map_err(|e| Error::from_io("allocating", &self.path, e.into()))
    }

    /// Cuts (or extends with zeros) the file to `len` bytes.
    pub async fn truncate(&self, len: u64) -> Result<()> {
        self.dma
            .truncate(len)
            .await
            .map_err(|e| Error::from_io("truncating", &self.path, e.into()))
    }

    pub async fn size(&self) -> Result<u64> {
        self.dma
            .file_size()
            .await
            .map_err(|e| Error::from_io("inspecting", &self.path, e.into()))
    }

    pub async fn close(self) -> Result<()> {
        self.dma
            .close()
            .await
            .map_err(|e| Error::from_io("closing", &self.path, e.into()))
    }
}

/// The CPUs this process may run on, ascending.
pub fn online_cpus() -> Vec<usize> {
    let mut cpus = Vec::new();
    // SAFETY: `set` is a properly sized, zero-initialised cpu_set_t that sched_getaffinity
    // fills for the calling thread; CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            for cpu in 0..libc::CPU_SETSIZE as usize {
                if libc::CPU_ISSET(cpu, &set) {
                    cpus.push(cpu);
                }
            }
        }
    }
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        cpus = (0..n).collect();
    }
    cpus
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts afterwards, so
/// [`wait_for_termination_signal`] can take them synchronously. Call before starting
/// executors.
pub fn block_termination_signals() {
    // SAFETY: `set` is initialised by sigemptyset before use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits (blocking the thread) for SIGINT or SIGTERM and returns its number. Requires
/// [`block_termination_signals`] first.
pub fn wait_for_termination_signal() -> i32 {
    // SAFETY: `set` is initialised by sigemptyset before use; sigwait writes the signal number
    // into `sig`, which we read only on success.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let mut sig: libc::c_int = 0;
        loop {
            if libc::sigwait(&set, &mut sig) == 0 {
                return sig;
            }
        }
    }
}

/// Sleeps on the current executor's timer.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await
}

/// Milliseconds since the Unix epoch (batch timestamps, age retention).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Refuses filesystems that cannot do `O_DIRECT` (tmpfs, ramfs) with a message that says what
/// to change.
pub fn check_direct_io_filesystem(dir: &Path) -> Result<()> {
    let fs = filesystem_magic(dir)?;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    if fs == TMPFS_MAGIC || fs == RAMFS_MAGIC {
        return Err(Error::InvalidArgument(format!(
            "{} is on tmpfs/ramfs, which does not support O_DIRECT; \
             put the data directory on a disk-backed filesystem (ext4, xfs)",
            dir.display()
        )));
    }
    Ok(())
}

/// The `f_type` of the filesystem holding `path`.
pub fn filesystem_magic(path: &Path) -> Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path {} has a NUL byte", path.display())))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized out-parameter that
    // statfs fully initialises on success; we read it only then.
    let (rc, st) = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        let rc = libc::statfs(c.as_ptr(), &mut st);
        (rc, st)
    };
    if rc != 0 {
        return Err(Error::from_io(
            "inspecting filesystem of",
            path,
            io::Error::last_os_error(),
        ));
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

/// Below this locked-memory limit glommio cannot build its io_uring rings at all (its own
/// floor is 512 KiB).
pub const MEMLOCK_BYTES_MIN: u64 = 1 << 20;

/// Locked memory one executor would like: its registered I/O buffers plus ring memory. Below
/// it glommio still works, with unregistered buffers (slower).
pub fn memlock_bytes_wanted(executors: usize, io_memory_bytes: usize) -> u64 {
    executors as u64 * (io_memory_bytes as u64 + (1 << 20))
}

/// Makes sure RLIMIT_MEMLOCK is usable: raises the soft limit towards `want_bytes` (up to the
/// hard limit, or beyond it when the process may), and fails only below [`MEMLOCK_BYTES_MIN`],
/// with a message that says exactly what to change. Returns the limit now in force.
pub fn ensure_memlock(want_bytes: u64) -> std::result::Result<u64, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the properly sized `lim` and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(format!(
            "cannot read RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        ));
    }
    let want = want_bytes.max(MEMLOCK_BYTES_MIN);
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    // First try beyond the hard limit (allowed with CAP_SYS_RESOURCE), then up to it.
    let attempts = [
        libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(lim.rlim_max),
        },
        libc::rlimit {
            rlim_cur: want.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        },
    ];
    for attempt in attempts {
        // SAFETY: setrlimit only reads the properly initialised `attempt`.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &attempt) } == 0 {
            lim = attempt;
            break;
        }
    }
    if lim.rlim_cur >= MEMLOCK_BYTES_MIN {
        if lim.rlim_cur < want {
            log::warn!(
                "locked-memory limit is {} KiB, below the {} KiB wanted: I/O buffers will not be \
                 registered with io_uring (slower). Raise it with `ulimit -l {}` or \
                 LimitMEMLOCK= in the systemd unit",
                lim.rlim_cur / 1024,
                want / 1024,
                want / 1024
            );
        }
        return Ok(lim.rlim_cur);
    }
    Err(format!(
        "locked-memory limit is {} KiB; corelog needs at least {} KiB for io_uring. \
         Run `ulimit -l {}` (or set LimitMEMLOCK= in the systemd unit, or memlock in \
         /etc/security/limits.conf) and start again",
        lim.rlim_cur / 1024,
        MEMLOCK_BYTES_MIN / 1024,
        want / 1024
    ))
}

/// A per-process resource limit `corelog doctor` inspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceLimit {
    /// RLIMIT_MEMLOCK: memory io_uring may pin.
    LockedMemory,
    /// RLIMIT_NOFILE: open file descriptors (connections, segment files).
    OpenFiles,
}

/// A resource limit's soft and hard values; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitValues {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Reads a resource limit without changing it (unlike [`ensure_memlock`]).
pub fn resource_limit(which: ResourceLimit) -> io::Result<LimitValues> {
    let resource = match which {
        ResourceLimit::LockedMemory => libc::RLIMIT_MEMLOCK,
        ResourceLimit::OpenFiles => libc::RLIMIT_NOFILE,
    };
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the properly sized `lim` and reads nothing else.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let finite = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Ok(LimitValues {
        soft: finite(lim.rlim_cur),
        hard: finite(lim.rlim_max),
    })
}

/// Space on the filesystem holding a path, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilesystemSpace {
    /// Bytes an unprivileged process may still write.
    pub available_bytes: u64,
    pub total_bytes: u64,
}

/// `statvfs` of the filesystem holding `path`.
pub fn filesystem_space(path: &Path) -> Result<FilesystemSpace> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path {} has a NUL byte", path.display())))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized out-parameter that
    // statvfs fully initialises on success; we read it only then.
    let (rc, st) = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        let rc = libc::statvfs(c.as_ptr(), &mut st);
        (rc, st)
    };
    if rc != 0 {
        return Err(Error::from_io(
            "inspecting free space of",
            path,
            io::Error::last_os_error(),
        ));
    }
    #[allow(clippy::unnecessary_cast)]
    let block = st.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    Ok(FilesystemSpace {
        available_bytes: st.f_bavail as u64 * block,
        total_bytes: st.f_blocks as u64 * block,
    })
}

/// Writes one [`BLOCK_BYTES`] block with `O_DIRECT` to a scratch file in `dir`, `fdatasync`s
/// it and removes it: proves the filesystem takes direct I/O the way the log writes it.
pub fn probe_direct_write(dir: &Path) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(".corelog-doctor-probe");
    // An aligned block inside a larger heap buffer: O_DIRECT wants the memory aligned too.
    let mut backing = vec![0x5Au8; 2 * BLOCK_BYTES as usize];
    let skew = backing.as_ptr() as usize % BLOCK_BYTES as usize;
    let start = if skew == 0 {
        0
    } else {
        BLOCK_BYTES as usize - skew
    };
    let block = &mut backing[start..start + BLOCK_BYTES as usize];
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .and_then(|mut f| {
            let written = f.write(block)?;
            if written != block.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short direct write: {written} of {} bytes", block.len()),
                ));
            }
            f.sync_data()
        });
    let _ = std::fs::remove_file(&path);
    result
}

/// Runs `f` on a fresh unpinned glommio executor with 1 MiB of I/O memory (unit tests).
#[cfg(test)]
pub(crate) fn run_test_executor<F: std::future::Future<Output = ()>>(f: F) {
    ensure_memlock(memlock_bytes_wanted(1, 1 << 20)).expect("locked-memory limit");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("glommio executor")
        .run(f);
}

/// A fresh directory for unit test `name` under the repository's `target/` (a real
/// filesystem: tmpfs rejects O_DIRECT), unique to this process.
#[cfg(test)]
pub(crate) fn unit_test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/tmp/corelog-unit")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("unit test directory");
    dir
}

#[cfg(test)]
mod write_file_atomic_tests {
    use super::*;

    /// A file written atomically holds exactly the last contents written: a shorter write
    /// leaves nothing of a longer one, a temporary file left by a crash is replaced, and a
    /// failure names the path.
    #[test]
    fn the_file_holds_exactly_the_last_contents_written() {
        let dir = unit_test_dir("write-file-atomic");
        let path = dir.join("meta");
        let check_dir = dir.clone();
        run_test_executor(async move {
            let disk = Disk::new();
            disk.write_file_atomic(&path, &[7u8; 5000]).await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 5000]);
            disk.write_file_atomic(&path, b"short").await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"short");
            // A crash left a longer temporary file behind.
            std::fs::write(path.with_extension("tmp"), vec![1u8; 9000]).unwrap();
            disk.write_file_atomic(&path, b"after").await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"after");
            assert!(!path.with_extension("tmp").exists(), "renamed into place");

            let missing = check_dir.join("no-such-dir").join("meta");
            let err = disk.write_file_atomic(&missing, b"x").await.unwrap_err();
            assert!(err.to_string().contains("no-such-dir"), "{err}");
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod remover_tests {
    use super::*;

    /// The remover paces its shrinking until too many files wait behind it.
    #[test]
    fn the_remover_stops_pausing_when_it_falls_behind() {
        assert_eq!(shrink_pause(0), SHRINK_PAUSE);
        assert_eq!(shrink_pause(REMOVER_BACKLOG_FILES_MAX), SHRINK_PAUSE);
        assert_eq!(shrink_pause(REMOVER_BACKLOG_FILES_MAX + 1), Duration::ZERO);
    }

    /// A rename to a new name never replaces a file already there.
    #[test]
    fn rename_noreplace_refuses_an_existing_name() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("unit-tests")
            .join("rename-noreplace");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        rename_noreplace(&a, &c).unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), b"a");
        let e = rename_noreplace(&a, &dir.join("d")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The remover thread removes what it is given and counts what it could not remove. The
    /// counters are the process's, shared with other tests: only their growth is checked.
    #[test]
    fn background_removals_are_removed_or_counted_as_failed() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("unit-tests")
            .join("background-removals");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("not-a-file")).unwrap();
        let file = dir.join("segment.store.1.deleted");
        std::fs::write(&file, vec![7u8; 3 * SHRINK_STEP_BYTES as usize / 2]).unwrap();
        let before = background_removal_stats();
        Disk::new().remove_files_in_background(vec![
            (file.clone(), true),
            (dir.join("already-gone"), false),
            // remove_file on a directory fails (EISDIR): counted, not retried.
            (dir.join("not-a-file"), false),
        ]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let after = loop {
            let now = background_removal_stats();
            if now.failed > before.failed && now.removed >= before.removed + 2 {
                break now;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "removals did not finish: {before:?} → {now:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(!file.exists(), "the file was not removed");
        assert!(dir.join("not-a-file").is_dir());
        assert!(after.failed > before.failed);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
