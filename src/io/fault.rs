//! Fault injection for the I/O seam (tests only; production `Disk`s carry none).
//!
//! Fault model: an operation either fails before touching the file (the error is returned and
//! nothing is written), or the disk is "full" and every write and allocation fails with ENOSPC
//! until space returns. This covers the storage engine's error handling; torn writes are
//! covered separately by cutting and corrupting real files.

use std::cell::Cell;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};

/// What to fail, shared between a test and the files it opened.
#[derive(Default)]
pub struct Faults {
    write_errors: Cell<u32>,
    write_errno: Cell<i32>,
    sync_errors: Cell<u32>,
    read_errors: Cell<u32>,
    rename_errors: Cell<u32>,
    renames_before_errors: Cell<u32>,
    disk_full: Cell<bool>,
    /// The disk becomes full once this many writes reached it.
    full_after_writes: Cell<Option<u64>>,
    /// Every `fdatasync` waits this long first, as on a slow disk.
    sync_delay: Cell<Option<std::time::Duration>>,
    writes: Cell<u64>,
    syncs: Cell<u64>,
    reads: Cell<u64>,
    read_bytes: Cell<u64>,
}

impl Faults {
    pub fn new() -> Faults {
        Faults::default()
    }

    /// The next `n` writes fail with `errno` (e.g. `libc::EIO`).
    pub fn fail_writes(&self, n: u32, errno: i32) {
        self.write_errors.set(n);
        self.write_errno.set(errno);
    }

    /// The next `n` `fdatasync`s fail with EIO.
    pub fn fail_syncs(&self, n: u32) {
        self.sync_errors.set(n);
    }

    /// The next `n` reads fail with EIO.
    pub fn fail_reads(&self, n: u32) {
        self.read_errors.set(n);
    }

    /// The next `n` renames fail with EIO.
    pub fn fail_renames(&self, n: u32) {
        self.fail_renames_after(0, n);
    }

    /// After `ok` more renames succeed, the next `n` fail with EIO.
    pub fn fail_renames_after(&self, ok: u32, n: u32) {
        self.renames_before_errors.set(ok);
        self.rename_errors.set(n);
    }

    /// While set, every write and allocation fails with ENOSPC.
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.set(full);
    }

    /// The disk becomes full (as [`Faults::set_disk_full`]) once `n` writes reached it.
    pub fn set_disk_full_after_writes(&self, n: u64) {
        self.full_after_writes.set(Some(n));
    }

    /// Every later `fdatasync` takes `delay` longer, as on a slow or overloaded disk.
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.sync_delay.set(Some(delay));
    }

    pub(super) fn sync_delay(&self) -> Option<std::time::Duration> {
        self.sync_delay.get()
    }

    /// Writes that reached the disk (not failed by injection).
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// `fdatasync`s that reached the disk.
    pub fn syncs(&self) -> u64 {
        self.syncs.get()
    }

    /// Reads that reached the disk.
    pub fn reads(&self) -> u64 {
        self.reads.get()
    }

    /// Bytes asked for by reads that reached the disk.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.get()
    }

    pub(super) fn before_write(&self, path: &Path) -> Result<()> {
        if self
            .full_after_writes
            .get()
            .is_some_and(|n| self.writes.get() >= n)
        {
            self.disk_full.set(true);
        }
        if self.disk_full.get() {
            return Err(enospc("writing", path));
        }
        if take(&self.write_errors) {
            return Err(Error::from_io(
                "writing",
                path,
                io::Error::from_raw_os_error(self.write_errno.get()),
            ));
        }
        self.writes.set(self.writes.get() + 1);
        Ok(())
    }

    pub(super) fn before_allocate(&self, path: &Path) -> Result<()> {
        if self.disk_full.get() {
            return Err(enospc("allocating", path));
        }
        Ok(())
    }

    pub(super) fn before_sync(&self, path: &Path) -> Result<()> {
        if take(&self.sync_errors) {
            return Err(Error::from_io(
                "syncing",
                path,
                io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        self.syncs.set(self.syncs.get() + 1);
        Ok(())
    }

    pub(super) fn before_rename(&self, path: &Path) -> Result<()> {
        if self.rename_errors.get() > 0 && take(&self.renames_before_errors) {
            return Ok(());
        }
        if take(&self.rename_errors) {
            return Err(Error::from_io(
                "renaming",
                path,
                io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }

    pub(super) fn before_read(&self, path: &Path, len: usize) -> Result<()> {
        if take(&self.read_errors) {
            return Err(Error::from_io(
                "reading",
                path,
                io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        self.reads.set(self.reads.get() + 1);
        self.read_bytes.set(self.read_bytes.get() + len as u64);
        Ok(())
    }
}

fn take(counter: &Cell<u32>) -> bool {
    let n = counter.get();
    if n == 0 {
        return false;
    }
    counter.set(n - 1);
    true
}

fn enospc(op: &'static str, path: &Path) -> Error {
    Error::from_io(op, path, io::Error::from_raw_os_error(libc::ENOSPC))
}
