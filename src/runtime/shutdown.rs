//! Graceful drain. On SIGTERM/SIGINT the process sets [`DRAINING`] and
//! wakes every worker; a worker then stops accepting, answers `/health` with
//! 503, closes each connection after its current response, and waits for
//! its in-flight requests up to `[server] drain_timeout_ms`. At that
//! deadline it fires its core's [`Shutdown`]: waits on an upstream end —
//! a stream with the client format's error event, a request still waiting
//! for its head with a 503 — and the worker flushes its log batch and exits.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

/// Set once, when the process starts draining. Read with one relaxed load.
pub static DRAINING: AtomicBool = AtomicBool::new(false);

/// Whether the process is draining.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// One core's end-of-drain signal: fired once, waited on by every upstream
/// wait of that core. Waiting allocates only when a new slot is needed;
/// slots are reused.
#[derive(Default)]
pub struct Shutdown {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Shutdown {
    /// Wake every waiter; later waits resolve at once.
    pub fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = self.wakers.borrow_mut().drain(..).flatten().collect();
        self.free.borrow_mut().clear();
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves when [`Shutdown::fire`] has been called.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            shutdown: self,
            slot: None,
        }
    }
}

/// The future of [`Shutdown::wait`]; leaves its slot when dropped.
pub struct Wait<'a> {
    shutdown: &'a Shutdown,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.fired.get() {
            return Poll::Ready(());
        }
        let waker = Some(cx.waker().clone());
        let mut wakers = self.shutdown.wakers.borrow_mut();
        match self.slot {
            Some(i) if i < wakers.len() => wakers[i] = waker,
            _ => {
                let i = match self.shutdown.free.borrow_mut().pop() {
                    Some(i) => {
                        wakers[i] = waker;
                        i
                    }
                    None => {
                        wakers.push(waker);
                        wakers.len() - 1
                    }
                };
                drop(wakers);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot
            && !self.shutdown.fired.get()
        {
            if let Some(w) = self.shutdown.wakers.borrow_mut().get_mut(i) {
                *w = None;
            }
            self.shutdown.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn waiters_are_woken_once_fired_and_slots_are_reused() {
        let s = Shutdown::default();
        let count = Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..100 {
            // A wait that is dropped before the signal frees its slot.
            let mut w = s.wait();
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        }
        assert_eq!(s.wakers.borrow().len(), 1, "one slot, reused");
        let mut a = s.wait();
        let mut b = s.wait();
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
        s.fire();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(Pin::new(&mut a).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut s.wait()).poll(&mut cx).is_ready());
    }
}
