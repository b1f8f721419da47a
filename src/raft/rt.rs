//! openraft's [`AsyncRuntime`] on glommio: the runtime every Raft group of a core runs on.
//!
//! openraft is built with `single-threaded`, so nothing here needs `Send`: a group's tasks,
//! timers and join handles all live on the core (glommio executor) that owns the partition.
//!
//! What this adapter guarantees, and why each point matters:
//! - **Dropping a [`JoinHandle`] never cancels its task.** glommio cancels a task whose handle is
//!   dropped, while openraft drops handles all the time (it expects tokio's detach-on-drop);
//!   without `detach` a group compiles but never elects a leader.
//! - **`spawn` only schedules.** glommio runs a new task's first poll inside `spawn_local`;
//!   here the task first yields, so it starts after the spawner's next await, as with tokio.
//! - **A panicking task does not take the executor down.** A panic that unwinds out of a glommio
//!   task kills every partition on the core. Spawned futures run under `catch_unwind`; the panic
//!   comes back as [`JoinError::Panicked`] (`is_panic` is true), and openraft stops only the
//!   affected group (`Fatal::Stopped`).
//! - **Timers are created lazily.** A glommio `Timer` panics when made outside an executor, so
//!   [`Sleep`] only records its deadline and arms the timer on its first poll.
//! - Time is `std::time::Instant` (glommio's own clock); randomness is rand's thread-local RNG.
//! - Channels (mpsc with weak senders, watch, oneshot) and the async mutex are `tokio::sync`
//!   primitives. They do not need a tokio runtime (none is ever started) and are cheap enough;
//!   an `Rc`-based set could replace them later without changing openraft's view.
//!
//! [`GlommioRuntime::new`] and `block_on` exist for tests only (openraft's conformance suite):
//! in the node, groups are spawned from tasks already running on the shard's executor.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use glommio::timer::Timer;
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use openraft_rt::{
    AsyncRuntime, Mpsc, MpscReceiver, MpscSender, MpscWeakSender, OneshotSender, OptionalSend,
    OptionalSync, SendError, TryRecvError, mutex, oneshot, watch,
};

/// Registered I/O memory of an executor made by [`GlommioRuntime::new`]. Tests do no file
/// I/O through it; 1 MiB keeps the locked-memory demand low.
const TEST_EXECUTOR_IO_MEMORY_BYTES: usize = 1 << 20;

/// openraft's runtime on glommio. Name it in `declare_raft_types!` as `AsyncRuntime =
/// GlommioRuntime` (openraft defaults to tokio otherwise).
///
/// The value itself is only needed by tests ([`AsyncRuntime::new`] / `block_on`): it owns a
/// glommio executor bound to the calling thread.
pub struct GlommioRuntime {
    executor: LocalExecutor,
}

impl fmt::Debug for GlommioRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlommioRuntime")
            .field("executor_id", &self.executor.id())
            .finish()
    }
}

impl AsyncRuntime for GlommioRuntime {
    type JoinError = JoinError;
    type JoinHandle<T: OptionalSend + 'static> = JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = Instant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<R, T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;

    /// Spawns onto the current executor, in the current task queue. Panics outside a glommio
    /// executor (a programming error: Raft groups only live on shard executors).
    #[track_caller]
    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        let task = glommio::spawn_local(async move {
            // glommio polls a new task inline, inside `spawn_local`; tokio, which openraft is
            // written against, only schedules it. Yield first, so that the spawner never runs
            // the task's code while it holds a borrow (a `RefCell`, a watch `Ref`) the task needs.
            futures_lite::future::yield_now().await;
            AssertUnwindSafe(future).catch_unwind().await
        });
        JoinHandle {
            task: task.detach(),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Sleep::until(Instant::now() + duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Sleep::until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Self::timeout_at(Instant::now() + duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        let finished: fn(R) -> Result<R, Elapsed> = Ok;
        let expired: fn(()) -> Result<R, Elapsed> = |()| Err(Elapsed);
        futures_lite::future::or(future.map(finished), Sleep::until(deadline).map(expired))
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        matches!(join_error, JoinError::Panicked { .. })
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        rand::rng()
    }

    type Mpsc = TokioMpsc;
    type Watch = TokioWatch;
    type Oneshot = TokioOneshot;
    type Mutex<T: OptionalSend + 'static> = TokioMutex<T>;

    /// Makes a glommio executor on the calling thread (`threads` is ignored: glommio is one
    /// executor per thread). Tests only; panics when the executor cannot be built, with the
    /// reason (usually the locked-memory limit).
    fn new(_threads: usize) -> Self {
        let want_bytes = crate::io::memlock_bytes_wanted(1, TEST_EXECUTOR_IO_MEMORY_BYTES);
        if let Err(reason) = crate::io::ensure_memlock(want_bytes) {
            panic!("GlommioRuntime::new: {reason}");
        }
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(TEST_EXECUTOR_IO_MEMORY_BYTES)
            .make()
            .unwrap_or_else(|e| panic!("GlommioRuntime::new: cannot build executor: {e}"));
        GlommioRuntime { executor }
    }

    /// Runs `future` to completion on this runtime's executor, on the calling thread. Panics
    /// when a glommio executor is already running on this thread (they do not nest).
    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.executor.run(future)
    }
}

/// Why awaiting a [`JoinHandle`] gave no value.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The task panicked; the panic was caught and did not reach the executor.
    #[error("task panicked: {message}")]
    Panicked { message: String },
    /// The task was dropped before finishing (its executor or task queue went away).
    #[error("task was cancelled before it finished")]
    Cancelled,
}

/// The handle of a spawned task. Awaiting it yields the task's output; dropping it lets the
/// task run on (unlike glommio's own `Task`, which cancels on drop).
pub struct JoinHandle<T> {
    task: glommio::task::JoinHandle<Result<T, Box<dyn Any + Send>>>,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle").finish_non_exhaustive()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task)
            .poll(cx)
            .map(|outcome| match outcome {
                Some(Ok(value)) => Ok(value),
                Some(Err(payload)) => Err(JoinError::Panicked {
                    message: panic_message(payload.as_ref()),
                }),
                // With panics caught inside the task, `None` can only mean cancellation.
                None => Err(JoinError::Cancelled),
            })
    }
}

/// A sleep until a deadline on the current executor's timer.
///
/// The glommio timer is armed on the first poll, not at construction, because making one
/// outside an executor panics. A sleep whose deadline has already passed at its first poll still
/// yields once: openraft's `yield_now()` is `sleep(1ns)` and must let other tasks run.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Sleep {
    deadline: Instant,
    state: SleepState,
}

enum SleepState {
    Unpolled,
    Armed(Timer),
    Done,
}

impl Sleep {
    fn until(deadline: Instant) -> Sleep {
        Sleep {
            deadline,
            state: SleepState::Unpolled,
        }
    }
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        match &mut this.state {
            SleepState::Unpolled => {
                let remaining = this.deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    this.state = SleepState::Done;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let mut timer = Timer::new(remaining);
                // A fresh timer is never due yet, but poll it anyway: that registers the waker.
                if Pin::new(&mut timer).poll(cx).is_ready() {
                    this.state = SleepState::Done;
                    return Poll::Ready(());
                }
                this.state = SleepState::Armed(timer);
                Poll::Pending
            }
            SleepState::Armed(timer) => match Pin::new(timer).poll(cx) {
                Poll::Ready(_fired_at) => {
                    this.state = SleepState::Done;
                    Poll::Ready(())
                }
                Poll::Pending => Poll::Pending,
            },
            SleepState::Done => Poll::Ready(()),
        }
    }
}

/// The error of a [`Timeout`] whose deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct Elapsed;

/// A future raced against a [`Sleep`]. The future is polled first, so one that is ready at the
/// deadline still wins (as with tokio). Built from pinning combinators, so `F` need not be
/// `Unpin` and nothing is boxed.
pub type Timeout<R, F> = futures_lite::future::Or<
    futures::future::Map<F, fn(R) -> Result<R, Elapsed>>,
    futures::future::Map<Sleep, fn(()) -> Result<R, Elapsed>>,
>;

/// Bounded mpsc channels: `tokio::sync::mpsc`.
pub struct TokioMpsc;

/// Sending half of a [`TokioMpsc`] channel.
pub struct TokioMpscSender<T>(tokio::sync::mpsc::Sender<T>);

/// Receiving half of a [`TokioMpsc`] channel.
pub struct TokioMpscReceiver<T>(tokio::sync::mpsc::Receiver<T>);

/// A sender that does not keep a [`TokioMpsc`] channel open.
pub struct TokioMpscWeakSender<T>(tokio::sync::mpsc::WeakSender<T>);

impl<T> Clone for TokioMpscSender<T> {
    fn clone(&self) -> Self {
        TokioMpscSender(self.0.clone())
    }
}

impl<T> Clone for TokioMpscWeakSender<T> {
    fn clone(&self) -> Self {
        TokioMpscWeakSender(self.0.clone())
    }
}

impl Mpsc for TokioMpsc {
    type Sender<T: OptionalSend> = TokioMpscSender<T>;
    type Receiver<T: OptionalSend> = TokioMpscReceiver<T>;
    type WeakSender<T: OptionalSend> = TokioMpscWeakSender<T>;

    fn channel<T: OptionalSend>(buffer: usize) -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = tokio::sync::mpsc::channel(buffer);
        (TokioMpscSender(tx), TokioMpscReceiver(rx))
    }
}

impl<T: OptionalSend> MpscSender<TokioMpsc, T> for TokioMpscSender<T> {
    async fn send(&self, msg: T) -> Result<(), SendError<T>> {
        self.0.send(msg).await.map_err(|e| SendError(e.0))
    }

    fn downgrade(&self) -> TokioMpscWeakSender<T> {
        TokioMpscWeakSender(self.0.downgrade())
    }
}

impl<T: OptionalSend> MpscReceiver<T> for TokioMpscReceiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + OptionalSend {
        self.0.recv()
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map_err(|e| match e {
            tokio::sync::mpsc::error::TryRecvError::Empty => TryRecvError::Empty,
            tokio::sync::mpsc::error::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })
    }
}

impl<T: OptionalSend> MpscWeakSender<TokioMpsc, T> for TokioMpscWeakSender<T> {
    fn upgrade(&self) -> Option<TokioMpscSender<T>> {
        self.0.upgrade().map(TokioMpscSender)
    }
}

/// Watch channels: `tokio::sync::watch`.
pub struct TokioWatch;

/// Sending half of a [`TokioWatch`] channel.
pub struct TokioWatchSender<T>(tokio::sync::watch::Sender<T>);

/// Receiving half of a [`TokioWatch`] channel.
pub struct TokioWatchReceiver<T>(tokio::sync::watch::Receiver<T>);

impl<T> Clone for TokioWatchSender<T> {
    fn clone(&self) -> Self {
        TokioWatchSender(self.0.clone())
    }
}

impl<T> Clone for TokioWatchReceiver<T> {
    fn clone(&self) -> Self {
        TokioWatchReceiver(self.0.clone())
    }
}

impl watch::Watch for TokioWatch {
    type Sender<T: OptionalSend + OptionalSync> = TokioWatchSender<T>;
    type Receiver<T: OptionalSend + OptionalSync> = TokioWatchReceiver<T>;
    type Ref<'a, T: OptionalSend + 'a> = tokio::sync::watch::Ref<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = tokio::sync::watch::channel(init);
        (TokioWatchSender(tx), TokioWatchReceiver(rx))
    }
}

impl<T: OptionalSend + OptionalSync> watch::WatchSender<TokioWatch, T> for TokioWatchSender<T> {
    fn send(&self, value: T) -> Result<(), watch::SendError<T>> {
        self.0.send(value).map_err(|e| watch::SendError(e.0))
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        self.0.send_if_modified(modify)
    }

    fn borrow_watched(&self) -> tokio::sync::watch::Ref<'_, T> {
        self.0.borrow()
    }

    fn subscribe(&self) -> TokioWatchReceiver<T> {
        TokioWatchReceiver(self.0.subscribe())
    }
}

impl<T: OptionalSend + OptionalSync> watch::WatchReceiver<TokioWatch, T> for TokioWatchReceiver<T> {
    async fn changed(&mut self) -> Result<(), watch::RecvError> {
        self.0.changed().await.map_err(|_| watch::RecvError(()))
    }

    fn borrow_watched(&self) -> tokio::sync::watch::Ref<'_, T> {
        self.0.borrow()
    }

    fn borrow_and_update(&mut self) -> tokio::sync::watch::Ref<'_, T> {
        self.0.borrow_and_update()
    }
}

/// Oneshot channels: `tokio::sync::oneshot`.
pub struct TokioOneshot;

/// Sending half of a [`TokioOneshot`] channel.
pub struct TokioOneshotSender<T>(tokio::sync::oneshot::Sender<T>);

impl oneshot::Oneshot for TokioOneshot {
    type Sender<T: OptionalSend> = TokioOneshotSender<T>;
    type Receiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type ReceiverError = tokio::sync::oneshot::error::RecvError;

    fn channel<T: OptionalSend>() -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneshotSender(tx), rx)
    }
}

impl<T: OptionalSend> OneshotSender<T> for TokioOneshotSender<T> {
    fn send(self, value: T) -> Result<(), T> {
        self.0.send(value)
    }
}

/// The async mutex: `tokio::sync::Mutex` (fair, FIFO).
pub struct TokioMutex<T>(tokio::sync::Mutex<T>);

impl<T: OptionalSend + 'static> mutex::Mutex<T> for TokioMutex<T> {
    type Guard<'a> = tokio::sync::MutexGuard<'a, T>;

    fn new(value: T) -> Self {
        TokioMutex(tokio::sync::Mutex::new(value))
    }

    fn lock(&self) -> impl Future<Output = Self::Guard<'_>> + OptionalSend {
        self.0.lock()
    }
}

/// The message of a caught panic (`panic!` payloads are `&str` or `String`).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic payload is not a string".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    #[test]
    fn dropping_a_join_handle_does_not_cancel_the_task() {
        GlommioRuntime::new(1).block_on(async {
            let ran = Rc::new(Cell::new(false));
            let flag = ran.clone();
            drop(GlommioRuntime::spawn(async move {
                GlommioRuntime::sleep(Duration::from_millis(5)).await;
                flag.set(true);
            }));
            GlommioRuntime::sleep(Duration::from_millis(50)).await;
            assert!(
                ran.get(),
                "the task was cancelled when its handle was dropped"
            );
        });
    }

    #[test]
    fn spawn_returns_before_the_task_first_runs() {
        GlommioRuntime::new(1).block_on(async {
            let ran = Rc::new(Cell::new(false));
            let flag = ran.clone();
            let handle = GlommioRuntime::spawn(async move { flag.set(true) });
            assert!(
                !ran.get(),
                "the task ran inside spawn, on the spawner's stack"
            );
            assert!(handle.await.is_ok());
            assert!(ran.get());
        });
    }

    #[test]
    fn a_panicking_task_is_reported_as_panic_and_the_executor_survives() {
        GlommioRuntime::new(1).block_on(async {
            let handle = GlommioRuntime::spawn(async {
                GlommioRuntime::sleep(Duration::from_millis(1)).await;
                panic!("boom in a raft task");
            });
            let error = handle
                .await
                .expect_err("a panicking task must not yield a value");
            assert!(GlommioRuntime::is_panic(&error));
            assert!(error.to_string().contains("boom in a raft task"), "{error}");

            // The executor keeps running other tasks after the panic.
            let after = GlommioRuntime::spawn(async { 7 }).await;
            assert_eq!(after.ok(), Some(7));
        });
    }

    #[test]
    fn timeout_fires_at_its_deadline_and_passes_a_ready_value_through() {
        GlommioRuntime::new(1).block_on(async {
            let started = Instant::now();
            let never = std::future::pending::<()>();
            let result = GlommioRuntime::timeout(Duration::from_millis(20), never).await;
            assert_eq!(result, Err(Elapsed));
            assert!(started.elapsed() >= Duration::from_millis(20));

            let ready = GlommioRuntime::timeout(Duration::ZERO, async { 3 }).await;
            assert_eq!(ready, Ok(3), "a ready future wins over an expired deadline");
        });
    }

    #[test]
    fn a_sleep_that_is_already_due_yields_once() {
        GlommioRuntime::new(1).block_on(async {
            let other_ran = Rc::new(Cell::new(false));
            let flag = other_ran.clone();
            drop(GlommioRuntime::spawn(async move { flag.set(true) }));
            GlommioRuntime::sleep(Duration::ZERO).await;
            assert!(other_ran.get(), "sleep(0) must let the spawned task run");
        });
    }

    #[test]
    fn sleep_can_be_made_outside_an_executor() {
        // Only polling needs the executor; openraft may build a sleep in synchronous code.
        let sleep = GlommioRuntime::sleep(Duration::from_millis(1));
        GlommioRuntime::new(1).block_on(sleep);
    }
}
