//! The reactor stall detector: one task per core that notices when something held the core.
//!
//! glommio is cooperative: a task runs until it returns `Pending`, and nothing else on that
//! core — no I/O completion, no timer, no Raft heartbeat — runs meanwhile. A *stall* is a
//! stretch in which the core was held too long. The detector observes it from the outside:
//! it sleeps for a fixed tick ([`STALL_TICK_INTERVAL_MS`]) and measures how much later than
//! asked it woke up. Every tick's lateness goes into the core's lateness histogram, and a
//! lateness of at least the threshold ([`STALL_THRESHOLD_MS`]) counts as one stall. It does not
//! say *which* task held the core (glommio's own signal-based `detect_stalls` can log a
//! backtrace for that); it says how often and how long, cheaply, always on.
//!
//! What lateness includes: a task that computed or blocked in a syscall without yielding; a
//! long run of ready tasks in the same task queue; and the timer's own granularity (well under
//! a millisecond). The detector runs in its own task queue with `Latency::Matters(tick)`, so
//! glommio asks other queues to yield at least that often; a tick that is still late means a
//! task did not yield — which is exactly a stall.
//!
//! Cost: one timer wake-up per tick per core (100 a second by default), a few hundred
//! nanoseconds each.

use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::task::JoinHandle;
use glommio::{Latency, Shares};

use super::core_stats::CoreStats;

/// How often the detector wakes up, in milliseconds.
pub const STALL_TICK_INTERVAL_MS: u64 = 10;
/// A tick this late or later counts as a stall, in milliseconds.
pub const STALL_THRESHOLD_MS: u64 = 10;

/// Settings of one core's stall detector.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StallDetectorConfig {
    /// How often to wake up; at least 1 ms.
    pub tick_interval_ms: u64,
    /// Lateness that counts as a stall; at least 1 ms.
    pub stall_threshold_ms: u64,
}

impl Default for StallDetectorConfig {
    fn default() -> StallDetectorConfig {
        StallDetectorConfig {
            tick_interval_ms: STALL_TICK_INTERVAL_MS,
            stall_threshold_ms: STALL_THRESHOLD_MS,
        }
    }
}

/// Starts the stall detector on the current core's executor, in a task queue of its own, and
/// returns its handle (`cancel()` stops it; it also stops with the executor). Call it once per
/// core, from that core, with that core's stats.
pub fn spawn_stall_detector(stats: Rc<CoreStats>, config: StallDetectorConfig) -> JoinHandle<()> {
    let queue = glommio::executor().create_task_queue(
        Shares::default(),
        Latency::Matters(Duration::from_millis(config.tick_interval_ms)),
        "corelog-stall-detector",
    );
    glommio::spawn_local_into(run_stall_detector(stats, config), queue)
        .expect("a task queue created just now exists")
        .detach()
}

/// The detector's loop: runs until cancelled. [`spawn_stall_detector`] is the usual way in.
pub async fn run_stall_detector(stats: Rc<CoreStats>, config: StallDetectorConfig) {
    assert!(
        config.tick_interval_ms >= 1 && config.stall_threshold_ms >= 1,
        "stall detector tick and threshold must be at least 1 ms: {config:?}"
    );
    let tick = Duration::from_millis(config.tick_interval_ms);
    let threshold_us = config.stall_threshold_ms.saturating_mul(1000);
    loop {
        let asked = Instant::now();
        crate::io::sleep(tick).await;
        let lateness = asked.elapsed().saturating_sub(tick);
        let lateness_us = u64::try_from(lateness.as_micros()).unwrap_or(u64::MAX);
        stats.record_reactor_lateness(lateness_us, threshold_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::io::run_test_executor as run;

    /// Fault model: a task blocks its thread for 80 ms without yielding (a synchronous syscall
    /// or a long computation). The detector must count it as a stall and record the lateness.
    #[test]
    fn a_task_that_blocks_the_core_is_counted_as_a_stall() {
        run(async {
            let stats = Rc::new(CoreStats::new(0));
            let config = StallDetectorConfig {
                tick_interval_ms: 5,
                stall_threshold_ms: 30,
            };
            let detector = spawn_stall_detector(stats.clone(), config);
            // Let the detector tick a few times undisturbed first.
            crate::io::sleep(Duration::from_millis(30)).await;
            glommio::spawn_local(async {
                std::thread::sleep(Duration::from_millis(80));
            })
            .await;
            crate::io::sleep(Duration::from_millis(30)).await;
            detector.cancel();
            let snap = stats.snapshot();
            assert!(
                snap.reactor.stalls >= 1,
                "no stall seen: {:?}",
                snap.reactor
            );
            assert_eq!(snap.reactor.stall_threshold_us, 30_000);
            assert!(
                snap.reactor.lateness_us.max() >= 40_000,
                "lateness max {} µs",
                snap.reactor.lateness_us.max()
            );
            assert!(snap.reactor.lateness_us.len() >= 3, "ticks recorded");
        });
    }

    #[test]
    fn an_idle_core_has_no_stalls() {
        run(async {
            let stats = Rc::new(CoreStats::new(0));
            let detector = spawn_stall_detector(stats.clone(), StallDetectorConfig::default());
            crate::io::sleep(Duration::from_millis(500)).await;
            detector.cancel();
            let snap = stats.snapshot();
            let ticks = snap.reactor.lateness_us.len();
            assert!(ticks >= 3, "{:?}", snap.reactor);
            // A loaded test machine preempts the thread now and then (10 ms or more is a
            // stall); a detector that counted most ticks of an idle executor would be a bug.
            assert!(snap.reactor.stalls * 4 <= ticks, "{:?}", snap.reactor);
        });
    }
}
