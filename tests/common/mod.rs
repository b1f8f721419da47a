//! Shared test scaffolding: a glommio executor per test and data directories on the real
//! filesystem under `target/` (never tmpfs: it has no O_DIRECT).

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;

use glommio::{LocalExecutorBuilder, Placement};

/// Runs `f` on a fresh glommio executor on this thread.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    corelog::io::ensure_memlock(corelog::io::memlock_bytes_wanted(1, 1 << 20))
        .expect("locked-memory limit");
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("glommio executor");
    ex.run(f())
}

/// A fresh, empty directory for one test, under `target/tmp` (the same path every run, so
/// runs do not pile up; test names are unique).
pub fn test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("corelog-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// Removes a test's data directory when dropped, unless the test is failing (then the data is
/// kept for the post-mortem). Test logs pre-allocate their segments, so leftovers add up.
pub struct RemoveOnSuccess(pub PathBuf);

impl Drop for RemoveOnSuccess {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub mod cluster;
pub mod node;
pub mod proxy;
