//! Per-thread deadlines: the timeouts a connection waits on — a write to a
//! slow client, an upstream read, a keep-alive connection's idle time — as
//! small entries in one table per worker thread, all served by a single
//! monoio sleep.
//!
//! A `monoio::time::Sleep` is 640 bytes and 128-byte aligned; one per
//! connection and one per exchange (re-armed, boxed) was about 1.4 KB of
//! every held stream. A [`Deadline`] is 8 bytes, its table slot 48.
//!
//! # How it works
//!
//! The table keeps, per slot, the deadline (`at`) and the waker of the task
//! waiting on it, and a min-heap of `(time, slot)` entries. Moving a deadline
//! later (the common case: each write or read re-arms its timeout) touches
//! only the slot; when the slot's heap entry comes due, the driver sees the
//! later time and queues it again. Moving it earlier pushes a new entry; the
//! older one is skipped when it comes up (it no longer matches the slot's
//! `queued` time). A dropped deadline bumps its slot's epoch, so its
//! entries are skipped too.
//!
//! The driver is a task spawned on the thread the first time a deadline is
//! waited on. It sleeps until the earliest queued time — or until a deadline
//! earlier than that is waited on, which nudges it — then wakes the tasks
//! whose deadlines passed. A [`Deadline`] never depends on the driver to be
//! correct about time: polled, it compares its own deadline with the clock.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Stale heap entries tolerated beyond the live ones before a rebuild.
const COMPACT_SLACK: usize = 1024;

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// `(time, slot, epoch)`, earliest first.
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Slots with a live heap entry (`queued` set); the rest of the heap is
    /// stale entries, dropped by [`Table::compact`] before they pile up.
    queued: usize,
    /// The driver task is running on this thread.
    running: bool,
    /// When the driver's sleep ends; `None` while it waits for a nudge.
    driver_at: Option<Instant>,
    driver: Option<Waker>,
    nudged: bool,
}

#[derive(Default)]
struct Slot {
    epoch: u32,
    /// The deadline; `None` when disarmed.
    at: Option<Instant>,
    /// The time of this slot's earliest live heap entry.
    queued: Option<Instant>,
    waker: Option<Waker>,
}

impl Table {
    fn slot(&mut self, d: &Deadline) -> &mut Slot {
        let s = &mut self.slots[d.idx as usize];
        debug_assert_eq!(
            s.epoch, d.epoch,
            "a deadline's slot is its own until dropped"
        );
        s
    }

    /// Wake the tasks whose deadlines passed by `now`, queue the postponed
    /// ones again; the earliest queued time after that.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&Reverse((t, idx, epoch))) = self.heap.peek() {
            if t > now {
                return Some(t);
            }
            self.heap.pop();
            let slot = &mut self.slots[idx as usize];
            if slot.epoch != epoch || slot.queued != Some(t) {
                continue;
            }
            slot.queued = None;
            self.queued -= 1;
            match slot.at {
                None => {}
                Some(at) if at <= now => {
                    if let Some(w) = slot.waker.take() {
                        w.wake();
                    }
                }
                Some(at) => {
                    slot.queued = Some(at);
                    self.queued += 1;
                    self.heap.push(Reverse((at, idx, epoch)));
                }
            }
        }
        None
    }

    /// Queue slot `idx` for `at` (a new entry; any older one goes stale).
    fn push(&mut self, idx: u32, at: Instant) {
        let slot = &mut self.slots[idx as usize];
        if slot.queued.replace(at).is_none() {
            self.queued += 1;
        }
        let epoch = slot.epoch;
        self.heap.push(Reverse((at, idx, epoch)));
        // Stale entries (dropped deadlines, ones moved earlier) would stay
        // until their time comes — minutes, for a stream's idle timeout,
        // with one per request. Rebuilt from the slots when they outnumber
        // the live ones: amortized O(1) per push.
        if self.heap.len() > 2 * self.queued + COMPACT_SLACK {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let live: Vec<_> = (self.slots.iter().enumerate())
            .filter_map(|(i, s)| s.queued.map(|q| Reverse((q, i as u32, s.epoch))))
            .collect();
        self.heap = BinaryHeap::from(live);
    }

    /// Make sure the driver runs and wakes by `at`.
    fn ensure_driver(&mut self, at: Instant) {
        if !self.running {
            self.running = true;
            monoio::spawn(drive());
            return;
        }
        if self.driver_at.is_none_or(|d| at < d) {
            self.nudged = true;
            if let Some(w) = self.driver.take() {
                w.wake();
            }
        }
    }
}

/// Start this thread's table afresh; called where a runtime starts on the
/// thread (a worker's, before any deadline). A driver left by an earlier
/// runtime on the same thread is never dropped (monoio leaks a task still
/// pending when its runtime ends), so its flag would stop a new one from
/// being spawned. The old table is leaked, not dropped: its wakers belong to
/// that runtime's tasks, which must not be dropped under a new one.
pub fn start_thread() {
    TABLE.with(|t| std::mem::forget(std::mem::take(&mut *t.borrow_mut())));
}

/// A deadline that can be re-armed; `.await`ing `&mut Deadline` completes
/// once the clock passes it (never, while disarmed). One per waiting place
/// (a connection's writes, an exchange's reads), reused.
pub struct Deadline {
    idx: u32,
    epoch: u32,
}

impl Deadline {
    /// A disarmed deadline.
    pub fn new() -> Deadline {
        TABLE.with(|t| {
            let mut t = t.borrow_mut();
            let idx = match t.free.pop() {
                Some(i) => i,
                None => {
                    t.slots.push(Slot::default());
                    (t.slots.len() - 1) as u32
                }
            };
            Deadline {
                idx,
                epoch: t.slots[idx as usize].epoch,
            }
        })
    }

    /// Arm (or re-arm) for `at`.
    pub fn reset(&mut self, at: Instant) {
        TABLE.with(|t| {
            let mut t = t.borrow_mut();
            let slot = t.slot(self);
            slot.at = Some(at);
            if slot.queued.is_none_or(|q| at < q) {
                t.push(self.idx, at);
            }
        })
    }

    /// Stop: `.await` no longer completes until the next [`Deadline::reset`].
    pub fn disarm(&mut self) {
        // Wakers are dropped after the table is released (see `Drop`).
        let _waker = TABLE.with(|t| {
            let mut t = t.borrow_mut();
            let slot = t.slot(self);
            slot.at = None;
            slot.waker.take()
        });
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Deadline::new()
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        // `try_with`: a deadline dropped while the thread exits finds the
        // table gone, and has nothing left to free. A slot that is not this
        // deadline's (a table started afresh under it) is left alone. The
        // waker is dropped once the table is released: dropping a task's
        // last waker drops the task, and its deadlines with it.
        let _waker = TABLE.try_with(|t| {
            let mut t = t.borrow_mut();
            let slot = t.slots.get_mut(self.idx as usize)?;
            if slot.epoch != self.epoch {
                return None;
            }
            slot.epoch = slot.epoch.wrapping_add(1);
            slot.at = None;
            let waker = slot.waker.take();
            if slot.queued.take().is_some() {
                t.queued -= 1;
            }
            t.free.push(self.idx);
            waker
        });
    }
}

impl Future for &mut Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A replaced waker is dropped once the table is released (see `Drop`).
        let (poll, _old) = TABLE.with(|t| {
            let mut t = t.borrow_mut();
            let slot = t.slot(&self);
            let Some(at) = slot.at else {
                return (Poll::Pending, slot.waker.take());
            };
            if Instant::now() >= at {
                return (Poll::Ready(()), None);
            }
            let old = match &slot.waker {
                Some(w) if w.will_wake(cx.waker()) => None,
                _ => slot.waker.replace(cx.waker().clone()),
            };
            t.ensure_driver(at);
            (Poll::Pending, old)
        });
        poll
    }
}

/// Clears the thread's `running` flag when the driver task ends (its
/// runtime shut down), so a later runtime on the thread spawns its own.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        let _ = TABLE.try_with(|t| {
            let mut t = t.borrow_mut();
            t.running = false;
            t.driver = None;
            t.driver_at = None;
        });
    }
}

/// The driver: one sleep for the thread's deadlines.
async fn drive() {
    let _running = Running;
    let mut sleep = Box::pin(monoio::time::sleep_until(monoio::time::Instant::now()));
    loop {
        let next = TABLE.with(|t| {
            let mut t = t.borrow_mut();
            t.nudged = false;
            let next = t.expire(Instant::now());
            t.driver_at = next;
            next
        });
        if let Some(at) = next {
            sleep.as_mut().reset(monoio::time::Instant::from_std(at));
            monoio::select! {
                _ = sleep.as_mut() => {}
                _ = Nudge => {}
            }
        } else {
            Nudge.await;
        }
    }
}

/// Completes when a deadline earlier than the driver's sleep is waited on.
struct Nudge;

impl Future for Nudge {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        TABLE.with(|t| {
            let mut t = t.borrow_mut();
            if t.nudged {
                t.nudged = false;
                return Poll::Ready(());
            }
            t.driver = Some(cx.waker().clone());
            Poll::Pending
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    fn live_slots() -> usize {
        TABLE.with(|t| {
            let t = t.borrow();
            t.slots.len() - t.free.len()
        })
    }

    #[test]
    fn a_deadline_completes_once_its_time_has_passed_never_before() {
        rt().block_on(async {
            let mut d = Deadline::new();
            let at = Instant::now() + Duration::from_millis(30);
            d.reset(at);
            (&mut d).await;
            assert!(Instant::now() >= at);
            // Still passed: awaiting again completes at once.
            (&mut d).await;
        });
    }

    #[test]
    fn moving_a_deadline_later_or_earlier_is_honoured() {
        rt().block_on(async {
            let mut d = Deadline::new();
            let start = Instant::now();
            d.reset(start + Duration::from_millis(10));
            let later = start + Duration::from_millis(60);
            d.reset(later);
            (&mut d).await;
            assert!(Instant::now() >= later, "fired at the old, earlier time");

            // Earlier than what is queued: a new entry, and the old one is
            // skipped when it comes up.
            let t = Instant::now();
            d.reset(t + Duration::from_secs(3600));
            let sooner = t + Duration::from_millis(20);
            d.reset(sooner);
            (&mut d).await;
            assert!(Instant::now() >= sooner);
        });
    }

    #[test]
    fn a_disarmed_deadline_never_completes_and_others_still_fire() {
        rt().block_on(async {
            let mut off = Deadline::new();
            off.reset(Instant::now() + Duration::from_millis(5));
            off.disarm();
            let mut on = Deadline::new();
            let at = Instant::now() + Duration::from_millis(40);
            on.reset(at);
            let which = monoio::select! {
                _ = &mut off => "disarmed",
                _ = &mut on => "armed",
            };
            assert_eq!(which, "armed");
            assert!(Instant::now() >= at);
        });
    }

    #[test]
    fn many_deadlines_each_wake_their_own_task_and_dropped_ones_free_their_slot() {
        rt().block_on(async {
            let before = live_slots();
            let start = Instant::now();
            let mut tasks = Vec::new();
            // Spread out, registered in reverse order: the heap orders them.
            for i in (0..50u64).rev() {
                tasks.push(monoio::spawn(async move {
                    let mut d = Deadline::new();
                    let at = start + Duration::from_millis(2 * i);
                    d.reset(at);
                    (&mut d).await;
                    assert!(Instant::now() >= at);
                    i
                }));
            }
            // A deadline dropped while queued: its entry is skipped.
            {
                let mut gone = Deadline::new();
                gone.reset(start + Duration::from_millis(1));
            }
            let mut done = Vec::new();
            for t in tasks {
                done.push(t.await);
            }
            done.sort_unstable();
            assert_eq!(done, (0..50).collect::<Vec<_>>());
            assert_eq!(live_slots(), before, "every slot was freed");
        });
    }

    #[test]
    fn dropped_and_moved_deadlines_do_not_pile_up_in_the_heap() {
        rt().block_on(async {
            let far = Instant::now() + Duration::from_secs(3600);
            let mut kept = Deadline::new();
            for i in 0..20_000u32 {
                // One per request, dropped armed (an exchange's wait) ...
                let mut d = Deadline::new();
                d.reset(far);
                // ... and one moved earlier each time.
                kept.reset(far - Duration::from_millis(u64::from(i)));
            }
            let (heap, queued) = TABLE.with(|t| {
                let t = t.borrow();
                (t.heap.len(), t.queued)
            });
            assert_eq!(queued, 1, "only `kept` is queued");
            assert!(
                heap <= 2 * queued + COMPACT_SLACK,
                "heap holds {heap} entries"
            );
            // And the live one still fires, at its latest (earliest) time.
            let at = Instant::now() + Duration::from_millis(5);
            kept.reset(at);
            (&mut kept).await;
            assert!(Instant::now() >= at);
        });
    }

    #[test]
    fn a_second_runtime_on_the_same_thread_gets_its_own_driver() {
        for _ in 0..2 {
            rt().block_on(async {
                start_thread();
                let mut d = Deadline::new();
                let at = Instant::now() + Duration::from_millis(10);
                d.reset(at);
                (&mut d).await;
                assert!(Instant::now() >= at);
            });
        }
    }
}
