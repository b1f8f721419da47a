//! Single-threaded synchronisation primitives for tasks on one executor: no locks, no atomics.
//! Everything a partition owns lives on one core, so `Rc`/`RefCell` are enough.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A broadcast "something changed" signal. Listeners take the current generation and wait until
/// it moves, so a notification between checking a condition and waiting is never lost.
#[derive(Default)]
pub struct Event {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Event {
    pub fn new() -> Event {
        Event::default()
    }

    /// The current generation; pass it to [`Event::wait`].
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Wakes every waiter.
    pub fn notify(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Resolves once the generation differs from `seen`.
    pub fn wait(&self, seen: u64) -> EventWait<'_> {
        EventWait { event: self, seen }
    }
}

pub struct EventWait<'a> {
    event: &'a Event,
    seen: u64,
}

impl Future for EventWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.generation.get() != self.seen {
            return Poll::Ready(());
        }
        let mut wakers = self.event.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A one-shot channel between tasks of one executor.
pub fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let slot = Rc::new(Slot {
        value: RefCell::new(None),
        waker: RefCell::new(None),
        sender_alive: Cell::new(true),
    });
    (
        OneshotSender { slot: slot.clone() },
        OneshotReceiver { slot },
    )
}

struct Slot<T> {
    value: RefCell<Option<T>>,
    waker: RefCell<Option<Waker>>,
    sender_alive: Cell<bool>,
}

pub struct OneshotSender<T> {
    slot: Rc<Slot<T>>,
}

impl<T> OneshotSender<T> {
    pub fn send(self, value: T) {
        *self.slot.value.borrow_mut() = Some(value);
        // Drop wakes the receiver.
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        self.slot.sender_alive.set(false);
        if let Some(waker) = self.slot.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

pub struct OneshotReceiver<T> {
    slot: Rc<Slot<T>>,
}

/// The sender was dropped without sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canceled;

impl<T> Future for OneshotReceiver<T> {
    type Output = Result<T, Canceled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(value) = self.slot.value.borrow_mut().take() {
            return Poll::Ready(Ok(value));
        }
        if !self.slot.sender_alive.get() {
            return Poll::Ready(Err(Canceled));
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
