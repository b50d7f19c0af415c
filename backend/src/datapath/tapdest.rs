//! A tap port as a [`Destination`]: each frame is one `writev` into the tap queue its flow
//! hashes to — the virtio-net header, then the frame's bytes straight from the sender's
//! guest buffers (translated through the sender's grants, so the kernel's copy is the only
//! one) or from a local buffer.
//!
//! A queue that answers `EAGAIN` is full: the frame and every later one are
//! [`Fate::Full`], the sender's waker is registered on the queue's [`RxSlot`] and the
//! queue's reader thread watches the descriptor for room (`EPOLLOUT`), then wakes the
//! sender — the same back-pressure as a full guest RX ring. A tap whose interface is down
//! (`EIO`) is a destination that is not ready, as a guest that is not attached (a unicast
//! frame to it is dropped as `no_dest`, a flooded copy skips it). Any other refusal is a
//! counted drop: `EINVAL` (offload metadata the kernel rejects) as `bad_offload`, `EFAULT`
//! as `not_granted`, the rest as `tap_error`.
//!
//! [`RxSlot`]: crate::datapath::rxq::RxSlot

use crate::datapath::dest::{Destination, SrcGrants};
use crate::datapath::rxq::Waker;
use crate::datapath::{Data, Fate, FrameSet, Seg};
use crate::net::hdr::HDR_LEN;
use crate::stats::DropReason;
use crate::switch::{Locks, Port};
use crate::tap::TapPort;
use pvnet_grant::{Access, GrantReadGuard, RegionHint};
use pvnet_locks::family::RwFamily;
use std::io;
use std::sync::Arc;

/// Most iovecs of one `writev` (Linux's `UIO_MAXIOV`).
pub const MAX_IOV: usize = 1024;

/// A tap port of the switch as a [`Destination`].
pub struct TapDest<'a> {
    port: &'a Port,
    tap: &'a TapPort,
}

impl<'a> TapDest<'a> {
    /// Port `port`, backed by `tap`.
    pub fn new(port: &'a Port, tap: &'a TapPort) -> Self {
        TapDest { port, tap }
    }
}

/// Appends the host pieces of `len` bytes of `segs`, after `skip` bytes, to `iov`.
fn guest_iovs<F: RwFamily>(
    g: &GrantReadGuard<'_, F>,
    hint: &mut RegionHint,
    segs: &[Seg],
    mut skip: usize,
    mut len: usize,
    iov: &mut Vec<libc::iovec>,
) -> Result<(), DropReason> {
    for s in segs {
        if len == 0 {
            break;
        }
        let sl = s.len as usize;
        if skip >= sl {
            skip -= sl;
            continue;
        }
        let mut gpa = s.gpa.wrapping_add(skip as u64);
        let mut left = (sl - skip).min(len);
        skip = 0;
        while left > 0 {
            if iov.len() >= MAX_IOV {
                return Err(DropReason::ChainTooLong);
            }
            let v = g
                .slice_hinted(hint, gpa, left, Access::ReadOnly)
                .map_err(|_| DropReason::NotGranted)?;
            let n = v.len();
            iov.push(libc::iovec {
                iov_base: v.ptr_guard().as_ptr() as *mut libc::c_void,
                iov_len: n,
            });
            gpa = gpa.wrapping_add(n as u64);
            left -= n;
            len -= n;
        }
    }
    if len > 0 {
        return Err(DropReason::BadChain);
    }
    Ok(())
}

/// The fate of a failed write.
fn write_error(e: &io::Error) -> Fate {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Fate::Full,
        // The interface is down: like a guest that is not attached.
        Some(libc::EIO) => Fate::NotReady,
        Some(libc::EINVAL) => Fate::Dropped(DropReason::BadOffload),
        Some(libc::EFAULT) => Fate::Dropped(DropReason::NotGranted),
        _ => Fate::Dropped(DropReason::TapError),
    }
}

impl<L: Locks> Destination<L> for TapDest<'_> {
    fn port(&self) -> &Port {
        self.port
    }

    fn deliver(
        &self,
        q: usize,
        src: &mut SrcGrants<'_, L>,
        frames: &dyn FrameSet,
        fates: &mut [Fate],
        waker: &Arc<Waker>,
    ) {
        let n = frames.count().min(fates.len());
        let (Some(tq), Some(slot)) = (self.tap.queues.get(q), self.port.rx.get(q)) else {
            fates[..n].fill(Fate::NotReady);
            return;
        };
        // The sender's guard keeps its buffers mapped while the kernel reads them.
        let g = src.table.read();
        let mut iov = tq.write_lock();
        for i in 0..n {
            let f = frames.get(i);
            let hb = f.hdr.with_num_buffers(0).to_bytes();
            let v = &mut iov.0;
            v.clear();
            v.push(libc::iovec {
                iov_base: hb.as_ptr() as *mut libc::c_void,
                iov_len: HDR_LEN,
            });
            let data = match f.data {
                Data::Local(b) => {
                    v.push(libc::iovec {
                        iov_base: b.as_ptr() as *mut libc::c_void,
                        iov_len: b.len().min(f.len),
                    });
                    Ok(())
                }
                Data::Guest { head, segs, skip } => {
                    let head = &head[..head.len().min(f.len)];
                    v.push(libc::iovec {
                        iov_base: head.as_ptr() as *mut libc::c_void,
                        iov_len: head.len(),
                    });
                    let k = head.len();
                    guest_iovs(&g, src.hint, segs, skip + k, f.len - k, v)
                }
            };
            if let Err(r) = data {
                fates[i] = Fate::Dropped(r);
                continue;
            }
            // SAFETY: every iovec points into memory that stays valid for the call: the
            // header on this stack frame, a local buffer or a frame's checked head borrowed
            // by `frames`, or guest memory mapped under the grant guard `g`, held across the
            // call. The kernel only reads it. At most MAX_IOV <= c_int entries (`guest_iovs`
            // stops there).
            let r = unsafe { libc::writev(tq.fd(), v.as_ptr(), v.len() as libc::c_int) };
            fates[i] = if r >= 0 {
                slot.stats.frame(f.len);
                Fate::Delivered
            } else {
                write_error(&io::Error::last_os_error())
            };
            if fates[i] == Fate::Full {
                slot.add_waiter(waker);
                tq.want_room();
                fates[i..n].fill(Fate::Full);
                break;
            }
        }
    }
}
