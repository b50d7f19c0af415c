//! A tap port's queues as the switch shares them ([`TapPort`]): every sending worker writes
//! frames into a queue's descriptor ([`TapQueue::write_lock`] serialises writers, so a flow's
//! frames keep their order and the queue's receive counters have one writer at a time); the
//! queue's own reader thread reads frames from it and watches it for room (`EPOLLOUT`) when a
//! sender found it full ([`TapQueue::want_room`]).

use crate::tap::dev::TapDevice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Scratch `iovec`s of a queue's writer (meaningful only during one `writev`).
pub struct IoVecs(pub Vec<libc::iovec>);

// SAFETY: the pointers in an `IoVecs` are written and used by one writer during one
// `writev`, with the queue's write lock held, and never dereferenced by Rust code; between
// writes the contents are stale values that are overwritten before the next use.
unsafe impl Send for IoVecs {}

/// One queue of a tap device.
pub struct TapQueue {
    fd: OwnedFd,
    /// Held by a sender while it writes frames into this queue.
    write: Mutex<IoVecs>,
    /// A sender found the queue full: the reader thread watches for room.
    want_room: AtomicBool,
    /// Tells the reader thread to look at `want_room`.
    pub ctl: EventFd,
}

impl TapQueue {
    /// The queue's descriptor.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Serialises writers of this queue; the guard holds the iovec scratch.
    pub fn write_lock(&self) -> MutexGuard<'_, IoVecs> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sender found the queue full (call with the write lock held, after registering
    /// the sender's waker): the reader thread is asked to watch for room.
    pub fn want_room(&self) {
        if !self.want_room.swap(true, Ordering::AcqRel) {
            let _ = self.ctl.write(1);
        }
    }

    /// Whether a sender waits for room (cleared by the reader once it watches).
    pub fn take_want_room(&self) -> bool {
        self.want_room.swap(false, Ordering::AcqRel)
    }
}

/// A tap device as a switch port.
pub struct TapPort {
    pub name: String,
    pub queues: Box<[TapQueue]>,
    /// Whether frames carry offload metadata both ways (`TUNSETOFFLOAD` accepted).
    pub offload: bool,
    /// Whether pvnet created the device.
    pub created: bool,
}

impl TapPort {
    /// The port of an opened device.
    pub fn new(dev: TapDevice) -> std::io::Result<TapPort> {
        let queues = dev
            .fds
            .into_iter()
            .map(|fd| {
                Ok(TapQueue {
                    fd,
                    write: Mutex::new(IoVecs(Vec::with_capacity(64))),
                    want_room: AtomicBool::new(false),
                    ctl: EventFd::new(EFD_NONBLOCK)?,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(TapPort {
            name: dev.name,
            queues: queues.into_boxed_slice(),
            offload: dev.offload,
            created: dev.created,
        })
    }

    /// The virtio-net features this port has as a receiver: with offloads, the kernel takes
    /// partial checksums and TCP segmentation jobs as they are (a vnet header on `write`
    /// always may carry them); without, senders complete and segment in software.
    pub fn features(&self) -> u64 {
        if !self.offload {
            return 0;
        }
        [
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
        ]
        .iter()
        .fold(0, |f, b| f | (1u64 << b))
    }
}
