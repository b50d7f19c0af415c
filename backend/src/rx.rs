//! The receive side of a delivery: reserving RX buffers (mergeable or not) in the
//! destination ring, scattering header and frame into them through the grant tables, and
//! staging them in the used ring; the used index is published once per run of frames into
//! the same queue ([`RxHold`], [`release`]). Called with the RX queue's lock held.

use crate::datapath::Worker;
use crate::net::{self, VirtioNetHdr};
use crate::stats::Drop;
use crate::switch::{Locks, Pair, Port, RingGuard, RxRing};
use pvnet_grant::{Access, GuardPair};
use pvnet_locks::family::RwFamily;
use std::sync::atomic::{fence, Ordering};
use vhost_user_backend::VringT;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryMmap};

/// Header plus frame bytes written with one grant copy from a local buffer.
const SMALL: usize = 512;

/// Result of one delivery attempt into one RX queue.
pub(crate) enum Deliver {
    Ok,
    Full,
    NotReady,
    Dropped(Drop),
}

/// Where a frame's bytes come from.
#[derive(Clone, Copy)]
pub(crate) enum Src<'a> {
    /// Guest TX descriptors, skipping the first `skip` bytes (the virtio header).
    Guest(&'a [(u64, u32)], usize),
    /// A local buffer (checksummed or segmented copy).
    Local(&'a [u8]),
}

/// Reads `out.len()` bytes at stream offset `skip` of the descriptor list `segs`.
pub(crate) fn gather<F: RwFamily>(
    g: &pvnet_grant::GrantReadGuard<'_, F>,
    segs: &[(u64, u32)],
    mut skip: usize,
    out: &mut [u8],
) -> Result<(), pvnet_grant::GrantError> {
    let mut done = 0;
    for &(gpa, len) in segs {
        let len = len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(out.len() - done);
        if n == 0 {
            break;
        }
        g.read_into(GuestAddress(gpa + skip as u64), &mut out[done..done + n])?;
        done += n;
        skip = 0;
        if done == out.len() {
            break;
        }
    }
    Ok(())
}

/// Copies `src` (from stream offset `from`, `len` bytes) into the writable list `dst` starting
/// at destination stream offset `at`.
pub(crate) fn scatter<F: RwFamily>(
    pair: &GuardPair<'_, F>,
    src: Src<'_>,
    from: usize,
    len: usize,
    dst: &[(u64, u32)],
    at: usize,
) -> Result<(), pvnet_grant::GrantError> {
    let mut left = len;
    let mut soff = from;
    let mut doff = at;
    let mut di = 0usize;
    // Find the destination descriptor holding offset `at`.
    let mut dbase = 0usize;
    while di < dst.len() && dbase + dst[di].1 as usize <= doff {
        dbase += dst[di].1 as usize;
        di += 1;
    }
    while left > 0 && di < dst.len() {
        let (dgpa, dlen) = dst[di];
        let dpos = doff - dbase;
        let droom = dlen as usize - dpos;
        let dgpa = dgpa + dpos as u64;
        let n = match src {
            Src::Local(buf) => {
                let n = droom.min(left);
                pair.dst()
                    .write_from(GuestAddress(dgpa), &buf[soff..soff + n])?;
                n
            }
            Src::Guest(segs, skip) => {
                // Locate the source piece holding stream offset skip + soff.
                let mut s = skip + soff;
                let mut piece = None;
                for &(g, l) in segs {
                    if s < l as usize {
                        piece = Some((g + s as u64, l as usize - s));
                        break;
                    }
                    s -= l as usize;
                }
                let Some((sg, sl)) = piece else { break };
                let n = droom.min(left).min(sl);
                pair.copy(GuestAddress(sg), GuestAddress(dgpa), n)?;
                n
            }
        };
        left -= n;
        soff += n;
        doff += n;
        if doff - dbase == dlen as usize {
            dbase += dlen as usize;
            di += 1;
        }
    }
    Ok(())
}

/// Writes `entries` to the used ring from `next_used` on and advances `next_used`, without
/// publishing the used index (the guest sees nothing until [`publish_idx`]).
pub(crate) fn stage(
    q: &mut virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    entries: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    let base = q.next_used();
    let size = q.size();
    if entries.is_empty() {
        return Ok(());
    }
    // The element array, looked up once for all entries.
    let ring = mem
        .get_slice(GuestAddress(q.used_ring() + 4), 8 * usize::from(size))
        .map_err(virtio_queue::Error::GuestMemory)?;
    for (k, &(h, l)) in entries.iter().enumerate() {
        if h >= size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        let slot = usize::from(base.wrapping_add(k as u16) % size);
        // One element (id: u32, len: u32), little-endian, in one write.
        let elem = u64::from(h) | (u64::from(l) << 32);
        ring.write_obj(elem.to_le(), slot * 8)
            .map_err(|e| virtio_queue::Error::GuestMemory(e.into()))?;
    }
    q.set_next_used(base.wrapping_add(entries.len() as u16));
    Ok(())
}

/// Publishes the used index (`next_used`): every staged entry appears at once.
pub(crate) fn publish_idx(
    q: &virtio_queue::Queue,
    mem: &GuestMemoryMmap,
) -> Result<(), virtio_queue::Error> {
    mem.store(
        q.next_used().to_le(),
        GuestAddress(q.used_ring() + 2),
        Ordering::Release,
    )
    .map_err(virtio_queue::Error::GuestMemory)
}

/// Publishes `entries` to the used ring with a single index update (a mergeable frame
/// must appear all at once).
pub(crate) fn publish(
    q: &mut virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    entries: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    stage(q, mem, entries)?;
    publish_idx(q, mem)
}

/// Whether the driver asked to be notified of the used entries added since the used index
/// was `old` (EVENT_IDX: `used_event` crossed; otherwise: no `VRING_AVAIL_F_NO_INTERRUPT`).
pub(crate) fn needs_signal(
    q: &virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    event_idx: bool,
    old: u16,
) -> bool {
    fence(Ordering::SeqCst);
    if event_idx {
        let ev_addr = GuestAddress(q.avail_ring() + 4 + 2 * u64::from(q.size()));
        match mem.read_obj::<u16>(ev_addr) {
            Ok(ev) => {
                let new = q.next_used();
                new.wrapping_sub(u16::from_le(ev)).wrapping_sub(1) < new.wrapping_sub(old)
            }
            Err(_) => true,
        }
    } else {
        match mem.read_obj::<u16>(GuestAddress(q.avail_ring())) {
            Ok(flags) => u16::from_le(flags) & 1 == 0,
            Err(_) => true,
        }
    }
}

/// The RX queue a worker is delivering a run of frames into: its lock is held from the
/// first frame of the run to the last, the frames' used entries are staged and published
/// with one index update when the run ends ([`release`]).
pub(crate) struct RxHold<'s, L: Locks> {
    pub d: usize,
    pub q: usize,
    pub guard: RingGuard<'s, L>,
    /// Used entries staged and not yet published.
    pub staged: bool,
}

/// Ends the held run (if any): publishes its staged used entries, records the queue for the
/// batch's notification round, unlocks.
pub(crate) fn release<L: Locks>(
    held: &mut Option<RxHold<'_, L>>,
    touched: &mut Vec<(usize, usize)>,
) {
    let Some(h) = held.take() else { return };
    if !h.staged {
        return;
    }
    if let Some(r) = h.guard.as_ref() {
        let mem = r.mem.memory();
        let vs = r.vring.get_ref();
        if let Err(e) = publish_idx(vs.get_queue(), &mem) {
            log::error!("RX publish: {e}");
        }
    }
    if !touched.contains(&(h.d, h.q)) {
        touched.push((h.d, h.q));
    }
}

// The used index at the last notification decision (kept beside the ring, under its lock).
pub(crate) fn r_signalled(r: &RxRing) -> u16 {
    r.signalled.load(Ordering::Relaxed)
}
pub(crate) fn set_signalled(r: &RxRing, v: u16) {
    r.signalled.store(v, Ordering::Relaxed);
}

/// Asks the guest to kick when it posts more RX buffers than are in the ring now; returns
/// true when the avail index moved meanwhile (the caller retries instead of waiting).
///
/// With EVENT_IDX, virtio-queue's `enable_notification` sets `avail_event` to our
/// `next_avail`. When the ring holds buffers but too few for the frame (a large mergeable
/// frame), the guest has already passed that index and would never kick again. Like
/// vhost-net, set `avail_event` to the guest's current avail index instead.
fn ask_for_kick(q: &mut virtio_queue::Queue, mem: &GuestMemoryMmap) -> bool {
    let moved = q.enable_notification(mem).unwrap_or(true);
    if !q.event_idx_enabled() {
        return moved;
    }
    let Ok(seen) = q.avail_idx(mem, Ordering::Acquire) else {
        return true;
    };
    let ev = GuestAddress(q.used_ring() + 4 + 8 * u64::from(q.size()));
    if mem.write_obj(seen.0.to_le(), ev).is_err() {
        return true;
    }
    fence(Ordering::SeqCst);
    q.avail_idx(mem, Ordering::Acquire).ok() != Some(seen)
}

/// Pops RX chain(s) of ring `r`, writes header + frame, publishes them. Called with the
/// RX queue lock held.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fill<L: Locks>(
    w: &mut Worker,
    pair: &Pair<'_, L>,
    r: &mut RxRing,
    dport: &Port,
    stats: &crate::stats::RxStats,
    hdr: &VirtioNetHdr,
    src: Src<'_>,
    frame_len: usize,
) -> Deliver {
    let dfeat = dport.features.load(Ordering::Acquire);
    let mrg = dfeat & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
    let dhl = net::net_hdr_len(dfeat);
    let total = dhl + frame_len;
    let mem = r.mem.memory();
    let mut vs = r.vring.get_mut();
    if !vs.is_enabled() || !vs.get_queue().ready() {
        return Deliver::NotReady;
    }
    w.rxsegs.clear();
    w.popped.clear();
    let mut cap = 0usize;
    let mut signal = false;
    let mut retries = 0u16;
    // Phase 1: reserve enough buffers.
    while cap < total {
        let Some(chain) = vs.get_queue_mut().pop_descriptor_chain(&*mem) else {
            for _ in 0..w.popped.len() {
                vs.get_queue_mut().go_to_previous_position();
            }
            w.popped.clear();
            w.rxsegs.clear();
            cap = 0;
            // Ask for a kick when the guest posts buffers; if some arrived meanwhile, retry
            // (and re-arm: `avail_event` must be at the guest's latest index, or a frame
            // needing more buffers than arrived would never be kicked again). Each retry
            // needs newly posted buffers, at most a ring's worth; the cap only guards
            // against a ring that cannot be read.
            if retries <= vs.get_queue().size() && ask_for_kick(vs.get_queue_mut(), &mem) {
                retries += 1;
                continue;
            }
            if signal {
                let _ = vs.signal_used_queue();
            }
            return Deliver::Full;
        };
        let head = chain.head_index();
        let start = w.rxsegs.len();
        let mut ccap = 0usize;
        let mut ok = true;
        let mut cut = false;
        for d in chain {
            cut = d.has_next();
            if d.len() == 0 {
                continue;
            }
            if !d.is_write_only()
                || pair
                    .dst()
                    .check(d.addr(), d.len() as usize, Access::WriteOnly)
                    .is_err()
            {
                ok = false;
                continue;
            }
            ccap += d.len() as usize;
            w.rxsegs.push((d.addr().0, d.len()));
        }
        if !ok || cut || ccap < dhl.min(total) {
            // A malformed RX chain: the frame being assembled is abandoned (its buffers
            // return empty, in ring order) and the bad chain returns empty too.
            for &(h, _) in w.popped.iter() {
                let _ = vs.get_queue_mut().add_used(&*mem, h, 0);
            }
            let _ = vs.get_queue_mut().add_used(&*mem, head, 0);
            w.popped.clear();
            w.rxsegs.clear();
            cap = 0;
            signal = true;
            stats.drop(Drop::RxBadChain);
            log::debug!("port {}: malformed RX chain returned empty", dport.idx);
            continue;
        }
        if !mrg && ccap < total {
            w.rxsegs.truncate(start);
            vs.get_queue_mut().go_to_previous_position();
            if signal {
                let _ = vs.signal_used_queue();
            }
            return Deliver::Dropped(Drop::RxTooSmall);
        }
        let used = ccap.min(total - cap);
        cap += ccap;
        w.popped.push((head, used as u32));
    }
    // Phase 2: header, then the frame (a small local frame: both in one write).
    let mut h = *hdr;
    h.num_buffers = if mrg { w.popped.len() as u16 } else { 1 };
    let hb = h.to_bytes();
    let mut small = [0u8; SMALL];
    let ok = match src {
        Src::Local(f) if dhl + f.len() <= SMALL => {
            small[..dhl].copy_from_slice(&hb[..dhl]);
            small[dhl..dhl + f.len()].copy_from_slice(f);
            let n = dhl + f.len();
            scatter(pair, Src::Local(&small[..n]), 0, n, &w.rxsegs, 0).is_ok()
        }
        _ => {
            scatter(pair, Src::Local(&hb[..dhl]), 0, dhl, &w.rxsegs, 0).is_ok()
                && scatter(pair, src, 0, frame_len, &w.rxsegs, dhl).is_ok()
        }
    };
    if !ok {
        for _ in 0..w.popped.len() {
            vs.get_queue_mut().go_to_previous_position();
        }
        return Deliver::Dropped(Drop::NotGranted);
    }
    // Phase 3: stage all buffers of the frame; the caller publishes the used index once per
    // run of frames, so every buffer of a mergeable frame appears at once.
    if let Err(e) = stage(vs.get_queue_mut(), &mem, &w.popped) {
        log::error!("RX publish: {e}");
        return Deliver::Dropped(Drop::RxBadChain);
    }
    Deliver::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvnet_grant::read_pair;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;

    #[test]
    fn publish_writes_all_entries_then_one_index_update() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("memory");
        let mock = MockSplitQueue::new(&mem, 4);
        let mut q: Queue = mock.create_queue().expect("queue");
        // Start near the wrap-around point of a 4-entry ring.
        q.set_next_used(3);
        publish(&mut q, &mem, &[(2, 100), (0, 200), (1, 300)]).expect("publish");
        assert_eq!(q.next_used(), 6);
        let used = mock.used_addr().0;
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).expect("idx");
        assert_eq!(idx, 6);
        let elem = |slot: u64| -> (u32, u32) {
            let a = GuestAddress(used + 4 + slot * 8);
            (
                mem.read_obj(a).expect("id"),
                mem.read_obj(GuestAddress(a.0 + 4)).expect("len"),
            )
        };
        assert_eq!(elem(3), (2, 100));
        assert_eq!(elem(0), (0, 200));
        assert_eq!(elem(1), (1, 300));
        publish(&mut q, &mem, &[]).expect("empty publish");
        assert_eq!(q.next_used(), 6);
    }

    #[test]
    fn scatter_spans_descriptors_and_offsets() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("memory");
        let t = pvnet_grant::GrantTable::<pvnet_locks::family::Percpu>::new();
        t.replace_from_memory(&mem).expect("grant");
        let pair = read_pair(&t, &t);
        let data: Vec<u8> = (0..100u8).collect();
        // Source: guest bytes at 0x100 (after a 12-byte "header") split in three pieces.
        pair.dst()
            .write_from(GuestAddress(0x100), &[0xee; 12])
            .expect("hdr");
        pair.dst()
            .write_from(GuestAddress(0x10c), &data[..30])
            .expect("a");
        pair.dst()
            .write_from(GuestAddress(0x400), &data[30..31])
            .expect("b");
        pair.dst()
            .write_from(GuestAddress(0x800), &data[31..])
            .expect("c");
        let src = [(0x100u64, 42u32), (0x400, 1), (0x800, 69)];
        let dst = [(0x2000u64, 7u32), (0x3000, 13), (0x4000, 200)];
        scatter(&pair, Src::Guest(&src, 12), 0, 100, &dst, 5).expect("scatter");
        let mut out = vec![0u8; 220];
        let mut at = 0;
        for (g, l) in dst {
            pair.src()
                .read_into(GuestAddress(g), &mut out[at..at + l as usize])
                .expect("read");
            at += l as usize;
        }
        assert_eq!(&out[5..105], &data[..]);
        let mut local = [0u8; 20];
        scatter(&pair, Src::Local(&data[..20]), 0, 20, &dst, 0).expect("local");
        pair.src()
            .read_into(GuestAddress(0x2000), &mut local[..7])
            .expect("r1");
        pair.src()
            .read_into(GuestAddress(0x3000), &mut local[7..20])
            .expect("r2");
        assert_eq!(&local[..], &data[..20]);
        // Outside every grant: refused.
        assert!(scatter(&pair, Src::Local(&data), 0, 10, &[(0x20000, 10)], 0).is_err());
    }
}
