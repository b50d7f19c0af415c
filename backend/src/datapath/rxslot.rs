//! One RX queue of a port as every sender shares it ([`RxSlot`]: the senders waiting for room,
//! its counters, whether a sender already waited a whole bound) and what a waiting sender
//! registers there ([`Waker`]). The ring itself is [`RxRing`](crate::datapath::rxq::RxRing),
//! under the queue's lock; a waiter list is changed only with that lock held, so a wake-up
//! cannot slip between a sender finding the ring full and registering.

use crate::stats::RxStats;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What a held-back sender registers with a full RX queue: an eventfd in the sender's worker
/// epoll set, and a flag that a polling worker checks without a system call.
pub struct Waker {
    fd: EventFd,
    pending: AtomicBool,
}

impl Waker {
    /// A new waker (non-blocking eventfd).
    pub fn new() -> std::io::Result<Self> {
        Ok(Waker {
            fd: EventFd::new(EFD_NONBLOCK)?,
            pending: AtomicBool::new(false),
        })
    }

    /// The eventfd, for the worker's epoll set.
    pub fn fd(&self) -> &EventFd {
        &self.fd
    }

    /// Wakes the worker (one eventfd write per batch of wakes).
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let _ = self.fd.write(1);
        }
    }

    /// Whether a wake is pending (no system call).
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Consumes a pending wake. The eventfd is read before the flag is cleared, so a wake
    /// that races with this either finds the flag set (and is seen by the caller's retry,
    /// which follows) or sets it anew and writes the eventfd again.
    pub fn take(&self) -> bool {
        let _ = self.fd.read();
        self.pending.swap(false, Ordering::AcqRel)
    }
}

/// One RX queue of a port as every sender shares it, besides its ring (which lives under
/// the queue lock in the [`Fabric`](crate::switch::Fabric)).
pub struct RxSlot {
    /// Senders held back by this full ring; woken when the guest posts buffers. Changed
    /// only with the queue lock held. Weak: a sender whose connection ended must not stay
    /// alive here (its eventfd would leak for as long as this ring stays full).
    waiters: Mutex<Vec<Weak<Waker>>>,
    /// Receive counters (written under the queue lock).
    pub stats: RxStats,
    /// A sender already waited the whole back-pressure bound on this ring: further frames
    /// are dropped at once until buffers are really posted (not merely kicked).
    pub stalled: AtomicBool,
}

impl Default for RxSlot {
    fn default() -> Self {
        RxSlot {
            waiters: Mutex::new(Vec::new()),
            stats: RxStats::default(),
            stalled: AtomicBool::new(false),
        }
    }
}

impl RxSlot {
    fn waiters(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Waker>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `w` to be woken (once) when the guest posts buffers (queue lock held).
    pub fn add_waiter(&self, w: &Arc<Waker>) {
        let mut l = self.waiters();
        l.retain(|x| x.strong_count() > 0);
        if !l.iter().any(|x| std::ptr::eq(x.as_ptr(), Arc::as_ptr(w))) {
            l.push(Arc::downgrade(w));
        }
    }

    /// Takes every registered waiter (queue lock held); wake them after unlocking.
    pub fn take_waiters(&self) -> Vec<Arc<Waker>> {
        let l = std::mem::take(&mut *self.waiters());
        l.iter().filter_map(Weak::upgrade).collect()
    }

    pub(crate) fn clear_stall(&self) {
        if self.stalled.load(Ordering::Relaxed) {
            self.stalled.store(false, Ordering::Release);
        }
    }
}
