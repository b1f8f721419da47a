//! openraft's runtime conformance suite (`openraft_rt::testing::Suite`) against
//! `corelog::raft::rt::GlommioRuntime`.
//!
//! Two ways in, because there are two ways the runtime gets an executor:
//! - `Suite::test_all` builds its own runtimes with `GlommioRuntime::new` + `block_on` (a glommio
//!   executor on the test thread), including the deterministic-RNG wrapper suite;
//! - the shard way: an executor made by `LocalExecutorBuilder::spawn` on its own thread, with
//!   the suite's public checks awaited inside it, as openraft's tasks will be in the node.

use std::future::Future;
use std::time::Duration;

use corelog::raft::rt::GlommioRuntime;
use glommio::{LocalExecutorBuilder, Placement};
use openraft::type_config::TypeConfigExt;
use openraft_rt::testing::Suite;

/// Registered I/O memory of the test executor: no file I/O happens here.
const EXECUTOR_IO_MEMORY_BYTES: usize = 1 << 20;

openraft::declare_raft_types!(
    /// A Raft type config on the glommio runtime; the rest are openraft's defaults.
    ProbeConfig: AsyncRuntime = GlommioRuntime
);

type S = Suite<GlommioRuntime>;

#[test]
fn conformance_suite_passes_with_runtimes_made_by_new() {
    S::test_all();
}

#[test]
fn conformance_checks_pass_on_an_executor_spawned_like_a_shard() {
    on_spawned_executor(|| async {
        S::test_spawn_join_handle().await;
        S::test_thread_rng().await;
        S::test_sleep().await;
        S::test_instant().await;
        S::test_instant_arithmetic().await;
        // `test_instant_sub_instant` also wants a 50 ms sleep to end within 200 ms, which a
        // starved CI machine can miss; `test_all` above runs it. Here only its lower bound.
        let t1 = <GlommioRuntime as openraft::AsyncRuntime>::Instant::now();
        corelog::io::sleep(Duration::from_millis(50)).await;
        let t2 = <GlommioRuntime as openraft::AsyncRuntime>::Instant::now();
        assert!(t2 - t1 >= Duration::from_millis(50));
        S::test_instant_saturating_duration_since().await;
        S::test_instant_ord().await;
        S::test_sleep_until().await;
        S::test_timeout().await;
        S::test_timeout_at().await;

        S::test_mpsc_recv_empty().await;
        S::test_mpsc_recv_channel_closed().await;
        S::test_mpsc_weak_sender_wont_prevent_channel_close().await;
        S::test_mpsc_weak_sender_upgrade().await;
        S::test_mpsc_send().await;
        S::test_mpsc_send_to_closed_channel().await;
        S::test_mpsc_backpressure().await;

        S::test_watch_init_value().await;
        S::test_watch_overwrite_init_value().await;
        S::test_watch_send_error_no_receiver().await;
        S::test_watch_send_if_modified().await;
        S::test_watch_wait_until_ge().await;
        S::test_watch_wait_until().await;
        S::test_watch_changed_marks_as_seen().await;
        S::test_watch_borrow_and_update_marks_seen().await;
        S::test_watch_changed_returns_immediately_when_unseen().await;
        S::test_watch_multiple_borrow_then_changed().await;
        S::test_watch_wait_loop_pattern().await;
        S::test_watch_multiple_receivers().await;
        S::test_watch_subscribe().await;
        S::test_watch_send_if_different().await;
        S::test_watch_send_if_greater().await;

        S::test_oneshot_drop_tx().await;
        S::test_oneshot().await;
        S::test_oneshot_send_from_another_task().await;
        S::test_oneshot_send_to_dropped_rx().await;

        S::test_mutex().await;
        S::test_mutex_contention().await;
        S::test_mutex_lock_owned().await;

        S::test_task_local().await;
        S::test_task_local_on_completion_drop().await;
        S::test_task_local_take_value().await;
        S::test_task_local_poll_after_take_value().await;
        S::test_task_local_get_value().await;
    });
}

#[test]
fn an_openraft_type_config_runs_tasks_and_timers_on_glommio() {
    on_spawned_executor(|| async {
        let started = ProbeConfig::now();
        let handle = ProbeConfig::spawn(async {
            ProbeConfig::sleep(Duration::from_millis(10)).await;
            42
        });
        assert_eq!(handle.await.ok(), Some(42));
        assert!(started.elapsed() >= Duration::from_millis(10));

        let timed_out =
            ProbeConfig::timeout(Duration::from_millis(5), std::future::pending::<()>());
        assert!(timed_out.await.is_err());
    });
}

/// Runs the future made by `make` on a glommio executor spawned on a thread of its own, the way
/// the node builds its shard executors, and fails the test if it panics.
fn on_spawned_executor<G, F>(make: G)
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    corelog::io::ensure_memlock(corelog::io::memlock_bytes_wanted(
        1,
        EXECUTOR_IO_MEMORY_BYTES,
    ))
    .expect("locked-memory limit");
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(EXECUTOR_IO_MEMORY_BYTES)
        .name("raft-rt-test")
        .spawn(make)
        .expect("spawn glommio executor")
        .join()
        .expect("executor thread");
}
