//! What a misbehaving (or merely unusual) guest does to its rings and its connection:
//! hand-made descriptor chains (out of range, looping, writable where they must not be,
//! indirect tables of any length), chains re-published without waiting for them, bare kicks,
//! a bogus avail index, a connection closed under a busy ring, a memory table replaced under
//! traffic.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use vmm_sys_util::eventfd::EventFd;

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;

use crate::guest::{region_info, vh};
use crate::mem::{fresh_memory, regions_of};
use crate::ring::{DescSpec, NextSlot, Owner};
use crate::{Error, TestGuest};

/// `VRING_DESC_F_*` flags for [`RawDesc::flags`].
pub mod desc {
    use super::*;

    /// `VRING_DESC_F_NEXT`: the chain continues at `next`.
    pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    /// `VRING_DESC_F_WRITE`: the device writes this buffer (RX).
    pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    /// `VRING_DESC_F_INDIRECT`: the buffer is a table of descriptors.
    pub const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
}

/// Where a [`RawDesc`]'s `next` field points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RawNext {
    /// The next descriptor of the slice (its table slot); 0 for the last one.
    #[default]
    Follow,
    /// The descriptor at this position of the slice (e.g. 0 to make a loop).
    Chain(usize),
    /// This raw descriptor-table index, unchecked (may be out of range).
    Raw(u16),
}

/// A descriptor exactly as the caller wants it in the table, for hostile / malformed chains.
/// `flags` are raw `VRING_DESC_F_*` bits ([`desc`]); the kit does not add NEXT by itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest-physical buffer address (may be outside guest memory).
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VRING_DESC_F_*` flags.
    pub flags: u16,
    /// What to write in the `next` field.
    pub next: RawNext,
}

impl RawDesc {
    /// A descriptor `(addr, len, flags)` whose `next` follows the slice.
    pub fn new(addr: u64, len: u32, flags: u16) -> RawDesc {
        RawDesc {
            addr,
            len,
            flags,
            next: RawNext::Follow,
        }
    }

    /// This descriptor with `next` set.
    pub fn next(self, next: RawNext) -> RawDesc {
        RawDesc { next, ..self }
    }
}

fn raw_chain(descs: &[RawDesc]) -> (Vec<DescSpec>, Vec<Option<NextSlot>>) {
    let d = descs.iter().map(|d| (d.addr, d.len, d.flags)).collect();
    let n = descs
        .iter()
        .map(|d| match d.next {
            RawNext::Follow => None,
            RawNext::Chain(i) => Some(NextSlot::Chain(i)),
            RawNext::Raw(r) => Some(NextSlot::Raw(r)),
        })
        .collect();
    (d, n)
}

impl TestGuest {
    /// Places an arbitrary (possibly malformed or hostile) descriptor chain on the TX ring of
    /// `pair` and kicks; returns its head. Buffers are whatever the caller put at those
    /// addresses ([`Self::alloc`], [`Self::write_guest`]); indirect tables too
    /// ([`Self::write_indirect`]).
    pub fn send_chain(&mut self, pair: u16, descs: &[RawDesc]) -> Result<u16, Error> {
        let (d, n) = raw_chain(descs);
        if self.pair(pair)?.tx.free_descs() < d.len() {
            self.reclaim(pair)?;
        }
        let p = self.pair(pair)?;
        let head = p.tx.add_chain(&d, &n, Owner::None)?;
        p.tx.publish()?;
        Ok(head)
    }

    /// Like [`Self::send_chain`] but on the RX ring: an arbitrary buffer chain offered to the
    /// device for receiving (e.g. read-only or out-of-range buffers). If the device uses it,
    /// [`Self::recv`] skips it and counts a device error.
    pub fn post_rx_chain(&mut self, pair: u16, descs: &[RawDesc]) -> Result<u16, Error> {
        let (d, n) = raw_chain(descs);
        let p = self.pair(pair)?;
        let head = p.rx.add_chain(&d, &n, Owner::None)?;
        p.rx.publish()?;
        Ok(head)
    }

    /// Writes an indirect descriptor table (`RawNext::Follow`: the next entry of the table,
    /// 0 for the last) into freshly allocated guest memory; returns `(address, length)` for a
    /// descriptor with [`desc::INDIRECT`].
    pub fn write_indirect(&mut self, descs: &[RawDesc]) -> Result<(u64, u32), Error> {
        let len = 16 * descs.len();
        let len32 = u32::try_from(len)
            .map_err(|_| Error::InvalidArgument(format!("{} descriptors", descs.len())))?;
        let mut table = Vec::with_capacity(len);
        for (i, d) in descs.iter().enumerate() {
            let next = match d.next {
                RawNext::Follow if i + 1 < descs.len() => (i + 1) as u16,
                RawNext::Follow => 0,
                RawNext::Chain(j) => j as u16,
                RawNext::Raw(r) => r,
            };
            table.extend_from_slice(&d.addr.to_le_bytes());
            table.extend_from_slice(&d.len.to_le_bytes());
            table.extend_from_slice(&d.flags.to_le_bytes());
            table.extend_from_slice(&next.to_le_bytes());
        }
        let addr = self.mem.alloc(len as u64, 16)?;
        self.mem.mem().write_slice(&table, GuestAddress(addr))?;
        Ok((addr, len32))
    }

    /// Writes a chain into descriptor slots of `pair`'s TX ring that stay taken for good,
    /// without making it available; returns its head for [`Self::repost_pinned`].
    pub fn pin_chain(&mut self, pair: u16, descs: &[RawDesc]) -> Result<u16, Error> {
        let (d, n) = raw_chain(descs);
        self.pair(pair)?.tx.pin(&d, &n)
    }

    /// Publishes the pinned chain `head` `n` more times on the TX ring of `pair`, without
    /// waiting for the device to return it (a guest that keeps its TX ring full forever);
    /// kicks if the device wants a kick.
    pub fn repost_pinned(&mut self, pair: u16, head: u16, n: u16) -> Result<(), Error> {
        let tx = &mut self.pair(pair)?.tx;
        for _ in 0..n {
            tx.push_avail(head);
        }
        tx.publish()?;
        Ok(())
    }

    /// Chains published on the TX ring of `pair` and not yet returned by the device.
    pub fn tx_outstanding(&self, pair: u16) -> u16 {
        self.pairs
            .get(usize::from(pair))
            .map_or(0, |p| p.tx.avail_idx().wrapping_sub(p.tx.device_used_idx()))
    }

    /// Kicks vring `q` (`2 * pair` RX, `2 * pair + 1` TX) without publishing anything.
    pub fn bare_kick(&self, q: usize) -> Result<(), Error> {
        let p = self
            .pairs
            .get(q / 2)
            .ok_or(Error::NoSuchPair((q / 2) as u16))?;
        let ring = if q % 2 == 0 { &p.rx } else { &p.tx };
        Ok(ring.kick.write(1)?)
    }

    /// Sets the avail index of vring `q` to `v` (bogus values included), without a kick.
    pub fn set_avail_idx(&mut self, q: usize, v: u16) -> Result<(), Error> {
        let p = self
            .pairs
            .get_mut(q / 2)
            .ok_or(Error::NoSuchPair((q / 2) as u16))?;
        if q % 2 == 0 { &mut p.rx } else { &mut p.tx }.set_avail_idx(v);
        Ok(())
    }

    /// Sends SET_VRING_CALL for vring `q` with `fd` (any descriptor: a pipe nobody reads, say)
    /// in place of the ring's eventfd, and waits until the device handled it (an error when
    /// it refused it and dropped the connection). The kit keeps polling the ring as before.
    pub fn set_vring_call_fd(&mut self, q: usize, fd: OwnedFd) -> Result<(), Error> {
        // SAFETY: `fd` is an open descriptor this function owns; the EventFd takes it over
        // and closes it when dropped (after the message carried a copy to the device).
        let e = unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) };
        vh("SET_VRING_CALL", self.frontend.set_vring_call(q, &e))?;
        // Requests are handled in order: the reply to a later one means this one is done.
        vh("GET_FEATURES", self.frontend.get_features())?;
        Ok(())
    }

    /// Sends SET_PROTOCOL_FEATURES with `bits` (offered or not) and waits until the device
    /// handled it (an error when it refused them and dropped the connection).
    pub fn ack_protocol_features(&mut self, bits: u64) -> Result<(), Error> {
        let f = VhostUserProtocolFeatures::from_bits_retain(bits);
        vh(
            "SET_PROTOCOL_FEATURES",
            self.frontend.set_protocol_features(f),
        )?;
        vh("GET_FEATURES", self.frontend.get_features())?;
        Ok(())
    }

    /// Sends RESET_DEVICE (whether or not it was negotiated) and waits until the device
    /// handled it.
    pub fn reset_device(&mut self) -> Result<(), Error> {
        vh("RESET_DEVICE", self.frontend.reset_device())?;
        vh("GET_FEATURES", self.frontend.get_features())?;
        Ok(())
    }

    /// Closes the vhost-user connection (the device sees EOF) while the guest's memory and
    /// rings stay as they are.
    pub fn shutdown_socket(&self) -> Result<(), Error> {
        // SAFETY: shutdown on the frontend's socket fd, which `self.frontend` owns and keeps
        // open; it changes no memory of this process.
        let rc = unsafe { libc::shutdown(self.frontend.as_raw_fd(), libc::SHUT_RDWR) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// The used index of the TX ring of `pair` as the device last wrote it, read in `mem`
    /// (this guest's memory, or other memory with the same layout).
    pub fn tx_used_idx_in(&self, mem: &GuestMemoryMmap<()>, pair: u16) -> Result<u16, Error> {
        let p = self
            .pairs
            .get(usize::from(pair))
            .ok_or(Error::NoSuchPair(pair))?;
        Ok(mem.read_obj::<u16>(GuestAddress(p.tx.used + 2))?)
    }

    /// Sends SET_MEM_TABLE with fresh memfd memory of the same layout (its content is not
    /// copied) and waits until the device has handled it; returns the new memory. The guest
    /// keeps writing its rings in the old memory (which it still maps).
    pub fn replace_memory(&mut self) -> Result<GuestMemoryMmap<()>, Error> {
        let fresh = fresh_memory(self.cfg.mem_size)?;
        let regions: Vec<_> = regions_of(&fresh)?.iter().map(region_info).collect();
        vh("SET_MEM_TABLE", self.frontend.set_mem_table(&regions))?;
        // Requests are handled in order: the reply to a later one means this one is done.
        vh("GET_FEATURES", self.frontend.get_features())?;
        Ok(fresh)
    }
}
