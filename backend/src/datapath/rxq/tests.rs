//! Unit tests of the RX ring: deliveries through a mock split queue on memfd guest memory.

use super::*;
use crate::datapath::Gm;
use crate::net::HdrWords;
use pvnet_grant::GrantTable;
use pvnet_locks::family::Percpu;
use std::cell::Cell;
use vhost_user_backend::VringRwLock;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{Bytes, GuestMemoryError, GuestMemoryMmap};

const SIZE: u16 = 128;
const BUF: u64 = 0x10_0000;
const BUF_LEN: u32 = 4096;

/// Guest memory whose guest posts one more 4 KiB RX buffer every time the device reads
/// the avail index (until `left` runs out): the worst case for a device that asks for a
/// kick and re-reads the index.
struct Posting<'m> {
    mem: &'m GuestMemoryMmap,
    avail: u64,
    desc: u64,
    left: Cell<u16>,
}

impl Posting<'_> {
    fn idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.avail + 2))
            .expect("idx")
    }

    fn post(&self) {
        let i = self.idx();
        let d = RawDescriptor::from(Descriptor::new(
            BUF + u64::from(i % SIZE) * u64::from(BUF_LEN),
            BUF_LEN,
            VRING_DESC_F_WRITE as u16,
            0,
        ));
        let m = self.mem;
        m.write_obj(d, GuestAddress(self.desc + 16 * u64::from(i % SIZE)))
            .expect("desc");
        m.write_obj(
            i % SIZE,
            GuestAddress(self.avail + 4 + 2 * u64::from(i % SIZE)),
        )
        .expect("entry");
        m.write_obj(i.wrapping_add(1), GuestAddress(self.avail + 2))
            .expect("idx");
    }
}

impl Posting<'_> {
    /// What the guest does when the device reads its avail index: posts one more buffer
    /// while `left` lasts.
    fn on_idx_read(&self) {
        if self.left.get() > 0 {
            self.left.set(self.left.get() - 1);
            self.post();
        }
    }
}

/// Guest memory `mem` whose driver runs `hook` every time the device reads the avail index
/// of the ring whose avail ring is at `avail`.
struct OnIdxRead<'m, H: Fn()> {
    mem: &'m GuestMemoryMmap,
    avail: u64,
    hook: H,
}

impl<H: Fn()> GuestMemory for OnIdxRead<'_, H> {
    type PhysicalMemory = GuestMemoryMmap;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        GuestMemory::check_range(self.mem, addr, count, access)
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> Result<impl GuestMemorySliceIterator<'a, BS<'a, ()>>, GuestMemoryError> {
        if addr.0 == self.avail + 2 && access == Permissions::Read {
            (self.hook)();
        }
        GuestMemory::get_slices(self.mem, addr, count, access)
    }
}

/// The Ethernet header a frame from guest buffers was checked with; the guest's buffers
/// hold other bytes there (it rewrote them after the check).
const CHECKED_HEAD: [u8; crate::datapath::CHECKED] = [0xcd; crate::datapath::CHECKED];

/// `n` copies of one frame.
/// (Without `segs`: the bytes in local memory; with: `segs` of guest memory holding them, as
/// a frame too long for the burst's prefix is delivered, after its head [`CHECKED_HEAD`].)
struct Frames(Vec<u8>, usize, Option<Vec<Seg>>);

impl FrameSet for Frames {
    fn count(&self) -> usize {
        self.1
    }
    fn get(&self, _: usize) -> FrameSrc<'_> {
        let data = match &self.2 {
            Some(segs) => Data::Guest {
                head: &CHECKED_HEAD,
                segs,
                skip: 0,
            },
            None => Data::Local(&self.0),
        };
        FrameSrc {
            hdr: HdrWords::PLAIN,
            len: self.0.len(),
            data,
        }
    }
    fn frame_len(&self, _: usize) -> usize {
        self.0.len()
    }
}

/// Where [`offer_with`] puts the frame for guest-memory frames: after the RX buffers, in two
/// pieces 4 KiB apart.
const SRC: u64 = BUF + SIZE as u64 * BUF_LEN as u64;

thread_local! {
    /// [`offer_with`] offers frames from guest memory (a test sets it for its own thread).
    static GUEST_SRC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A ring with `initial` buffers posted, whose guest posts `later` more one at a time,
/// offered `n` frames of `len` bytes. Returns their fates, the ring and the avail index
/// / avail_event at the end.
fn offer(initial: u16, later: u16, n: usize, len: usize) -> (Vec<Fate>, RxRing, u16, u16) {
    let o = offer_with(initial, later, n, len, |_, _| {});
    (o.fates, o.ring, o.idx, o.avail_event)
}

/// What [`offer_with`] saw.
struct Offered {
    fates: Vec<Fate>,
    ring: RxRing,
    /// The guest's avail index at the end.
    idx: u16,
    avail_event: u16,
    /// The used elements published (id, length).
    used: Vec<(u32, u32)>,
    mem: GuestMemoryMmap,
}

/// A mock split queue of [`SIZE`] entries in `mem` (EVENT_IDX on) and the RX ring over it
/// (mergeable buffers negotiated).
fn ring_in(mem: &GuestMemoryMmap) -> (MockSplitQueue<'_, GuestMemoryMmap>, RxRing) {
    let vq = MockSplitQueue::new(mem, SIZE);
    let mut q: Queue = vq.create_queue().expect("queue");
    q.set_event_idx(true);
    let vring = VringRwLock::new(Gm::new(mem.clone()), SIZE).expect("vring");
    let features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF);
    (vq, RxRing::new(q, vring, features).expect("ring"))
}

/// A grant table granting all of `mem`.
fn grants_of(mem: &GuestMemoryMmap) -> GrantTable<Percpu> {
    let t = GrantTable::<Percpu>::new();
    t.replace_from_memory(mem).expect("grants");
    t
}

/// [`offer`], with `tweak(memory, descriptor table address)` run after the initial
/// posting.
fn offer_with(
    initial: u16,
    later: u16,
    n: usize,
    len: usize,
    tweak: impl Fn(&GuestMemoryMmap, u64),
) -> Offered {
    let mem: GuestMemoryMmap = pvnet_grant::memfd::guest_memory(&[(0, 0x20_0000)]).expect("memory");
    let (vq, mut ring) = ring_in(&mem);
    let posting = Posting {
        mem: &mem,
        avail: vq.avail_addr().0,
        desc: vq.desc_table_addr().0,
        left: Cell::new(0),
    };
    for _ in 0..initial {
        posting.post();
    }
    tweak(&mem, vq.desc_table_addr().0);
    posting.left.set(later);
    let t = grants_of(&mem);
    let g = t.read();
    let (mut sh, mut dh) = (RegionHint::default(), RegionHint::default());
    let bufs = BufGuards {
        sg: &g,
        sh: &mut sh,
        dg: &g,
        dh: &mut dh,
    };
    let slot = RxSlot::default();
    let waker = Arc::new(Waker::new().expect("waker"));
    let mut fates = vec![Fate::Pending; n];
    let segs = GUEST_SRC.with(|g| g.get()).then(|| {
        let half = len / 2;
        let pieces = [(SRC, half), (SRC + 0x1000 + 3, len - half)];
        for &(at, n) in &pieces {
            mem.write_slice(&vec![0xab; n], GuestAddress(at))
                .expect("source");
        }
        pieces.map(|(gpa, n)| Seg { gpa, len: n as u32 }).to_vec()
    });
    let frames = Frames(vec![0xab; len], n, segs);
    // The guest sees nothing of a hold until it is published, then all of it. (The mock
    // queue's used index shares its address with an avail entry of this 128-entry ring:
    // compare with its value before the hold, not with 0.)
    let used_idx = || -> u16 {
        mem.read_obj(GuestAddress(vq.used_addr().0 + 2))
            .expect("used idx")
    };
    let before = used_idx();
    let view = OnIdxRead {
        mem: &mem,
        avail: posting.avail,
        hook: || posting.on_idx_read(),
    };
    ring.deliver_with(&view, bufs, &frames, &mut fates, &slot, &waker);
    assert_eq!(
        used_idx(),
        before,
        "frames visible before their publication"
    );
    ring.publish_with(&view, &slot);
    assert_eq!(used_idx(), ring.queue.next_used());
    let avail_event: u16 = mem
        .read_obj(GuestAddress(vq.used_addr().0 + 4 + 8 * u64::from(SIZE)))
        .expect("avail_event");
    let used = (0..u64::from(ring.queue.next_used()))
        .map(|i| {
            let at = vq.used_addr().0 + 4 + 8 * i;
            let id = mem.read_obj(GuestAddress(at)).expect("used id");
            let len = mem.read_obj(GuestAddress(at + 4)).expect("used len");
            (id, len)
        })
        .collect();
    let idx = posting.idx();
    Offered {
        fates,
        ring,
        idx,
        avail_event,
        used,
        mem,
    }
}

#[test]
fn a_bad_chain_goes_back_in_ring_order() {
    // Chains 0..4 posted, chain 1 readable (bad in an RX ring): frame 0 takes chain 0,
    // frame 1 gives up chain 1 and takes chain 2, frame 2 takes chain 3. Used elements
    // must come in ring order (an IN_ORDER guest recycles descriptors by position);
    // before, the bad chain was staged first.
    let Offered { fates, used, .. } = offer_with(4, 0, 3, 60, |m, desc| {
        let flags = GuestAddress(desc + 16 + 12);
        m.write_obj(0u16, flags).expect("flags");
    });
    assert_eq!(fates, [Fate::Delivered; 3]);
    assert_eq!(used, [(0, 72), (1, 0), (2, 72), (3, 72)]);
}

/// A frame from guest buffers (too long for a burst's prefix) goes into a reserved buffer
/// the same way, through the address the reservation translated: header, the checked head
/// (not what the guest's buffer holds there now), then the bytes of both source pieces;
/// one byte more than the buffer holds takes two chains, and keeps the checked head too.
#[test]
fn frames_from_guest_buffers_land_whole() {
    GUEST_SRC.with(|g| g.set(true));
    let hl = net::hdr::HDR_LEN as u32;
    let o = offer_with(4, 0, 2, (BUF_LEN - hl) as usize, |_, _| {});
    assert_eq!(o.fates, [Fate::Delivered; 2]);
    assert_eq!(o.used, [(0, BUF_LEN), (1, BUF_LEN)]);
    for k in 0..2u64 {
        let mut b = vec![0u8; BUF_LEN as usize];
        let at = BUF + k * u64::from(BUF_LEN);
        o.mem.read_slice(&mut b, GuestAddress(at)).expect("buffer");
        let plain = HdrWords::PLAIN.with_num_buffers(1).to_bytes();
        assert_eq!(b[..hl as usize], plain, "buffer {k}: header");
        let (head, rest) = b[hl as usize..].split_at(CHECKED_HEAD.len());
        assert_eq!(
            head, CHECKED_HEAD,
            "buffer {k}: the guest's bytes, not the checked ones"
        );
        assert!(rest.iter().all(|&x| x == 0xab), "buffer {k}: frame");
    }
    let o = offer_with(4, 0, 1, (BUF_LEN - hl + 1) as usize, |_, _| {});
    assert_eq!(o.fates, [Fate::Delivered]);
    assert_eq!(o.used, [(0, BUF_LEN), (1, 1)]);
    let mut b = vec![0u8; BUF_LEN as usize + 1];
    o.mem
        .read_slice(&mut b[..BUF_LEN as usize], GuestAddress(BUF))
        .expect("buffer");
    o.mem
        .read_slice(
            &mut b[BUF_LEN as usize..],
            GuestAddress(BUF + u64::from(BUF_LEN)),
        )
        .expect("second buffer");
    let (head, rest) = b[hl as usize..].split_at(CHECKED_HEAD.len());
    assert_eq!(
        head, CHECKED_HEAD,
        "two chains: the guest's bytes, not the checked ones"
    );
    assert!(rest.iter().all(|&x| x == 0xab), "two chains: frame");
    GUEST_SRC.with(|g| g.set(false));
}

/// Around the one-buffer shortcut of the reservation (`pop_whole`): a frame that fills a
/// buffer exactly takes one chain; one byte more takes two (mergeable buffers, the general
/// walk); a chain of two descriptors, or one too small, goes the general way and still
/// holds its share.
#[test]
fn frames_at_a_buffer_s_size_take_one_chain_one_byte_more_two() {
    let hl = net::hdr::HDR_LEN as u32;
    let Offered {
        fates, used, mem, ..
    } = offer_with(4, 0, 2, (BUF_LEN - hl) as usize, |_, _| {});
    assert_eq!(fates, [Fate::Delivered; 2]);
    assert_eq!(used, [(0, BUF_LEN), (1, BUF_LEN)]);
    // Written where the guest looks (the buffer's host address was taken at reservation):
    // the header (num_buffers 1 at byte 10), then the frame.
    for k in 0..2u64 {
        let mut b = vec![0u8; BUF_LEN as usize];
        let at = BUF + k * u64::from(BUF_LEN);
        mem.read_slice(&mut b, GuestAddress(at)).expect("buffer");
        let plain = HdrWords::PLAIN.with_num_buffers(1).to_bytes();
        assert_eq!(b[..hl as usize], plain, "buffer {k}: header");
        assert!(
            b[hl as usize..].iter().all(|&x| x == 0xab),
            "buffer {k}: frame"
        );
    }
    let Offered { fates, used, .. } = offer_with(4, 0, 2, (BUF_LEN - hl + 1) as usize, |_, _| {});
    assert_eq!(fates, [Fate::Delivered; 2]);
    assert_eq!(used, [(0, BUF_LEN), (1, 1), (2, BUF_LEN), (3, 1)]);
    // Chain 0 shrunk to 100 bytes, chain 1 made two descriptors (1 -> 3; chain 3 is never
    // popped): 200-byte frames.
    let Offered { fates, used, .. } = offer_with(4, 0, 2, 200, |m, desc| {
        m.write_obj(100u32, GuestAddress(desc + 8)).expect("len");
        let flags = (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16;
        m.write_obj(flags, GuestAddress(desc + 16 + 12))
            .expect("flags");
        m.write_obj(3u16, GuestAddress(desc + 16 + 14))
            .expect("next");
    });
    assert_eq!(fates, [Fate::Delivered; 2]);
    // Frame 0: chain 0 (100) + chain 1 (its two buffers); frame 1: chain 2.
    assert_eq!(used, [(0, 100), (1, 112), (2, 212)]);
}

#[test]
fn a_ring_that_runs_dry_asks_for_a_kick_at_the_newest_index() {
    // 2 buffers, then 2 more posted while the device looks: still short of 5. The device
    // must give up with the kick requested at the guest's newest index (4), or the
    // guest's next posting would not kick and the sender would never be woken.
    let (fates, ring, idx, avail_event) = offer(2, 2, 1, 17_000);
    assert_eq!(fates, [Fate::Full]);
    assert_eq!(idx, 4);
    assert_eq!(avail_event, idx, "kick requested at a stale index");
    assert_eq!(ring.queue.next_avail(), 0, "buffers given back");
    // Enough arrives while asking: taken incrementally, the frame is delivered.
    let (fates, ring, idx, _) = offer(2, 3, 1, 17_000);
    assert_eq!(fates, [Fate::Delivered]);
    assert_eq!(
        (idx, ring.queue.next_avail(), ring.queue.next_used()),
        (5, 5, 5)
    );
}

#[test]
fn one_hold_copies_at_most_hold_bytes() {
    // Six 60,000-byte frames (15 buffers each): the hold stops after the frame that
    // reaches HOLD_BYTES; the rest is left for the next hold.
    let (fates, ring, _, _) = offer(120, 0, 6, 60_000);
    let done = HOLD_BYTES.div_ceil(60_000);
    assert_eq!(&fates[..done], &vec![Fate::Delivered; done][..]);
    assert!(
        fates[done..].iter().all(|f| *f == Fate::Pending),
        "{fates:?}"
    );
    assert_eq!(ring.queue.next_used(), 15 * done as u16);
}

/// With EVENT_IDX, a sender held back on a dry ring asks for a kick at the position it
/// stopped at. If the guest posts one buffer there (and kicks) and another sender takes that
/// buffer before the kick is handled, the kick finds nothing new — and must ask again at
/// the new position: `avail_event` left behind would never be crossed again, and the
/// held-back sender would wait for its bound although the guest keeps posting.
#[test]
fn a_kick_whose_buffers_another_sender_took_asks_again() {
    let mem: GuestMemoryMmap = pvnet_grant::memfd::guest_memory(&[(0, 0x20_0000)]).expect("memory");
    let (vq, mut ring) = ring_in(&mem);
    let posting = Posting {
        mem: &mem,
        avail: vq.avail_addr().0,
        desc: vq.desc_table_addr().0,
        left: Cell::new(0),
    };
    posting.post();
    let t = grants_of(&mem);
    let g = t.read();
    let slot = RxSlot::default();
    let avail_event = || -> u16 {
        mem.read_obj(GuestAddress(vq.used_addr().0 + 4 + 8 * u64::from(SIZE)))
            .expect("avail_event")
    };
    let mut deliver = |n: usize, waker: &Arc<Waker>| -> Vec<Fate> {
        let (mut sh, mut dh) = (RegionHint::default(), RegionHint::default());
        let bufs = BufGuards {
            sg: &g,
            sh: &mut sh,
            dg: &g,
            dh: &mut dh,
        };
        let mut fates = vec![Fate::Pending; n];
        let frames = Frames(vec![0xab; 60], n, None);
        ring.deliver_with(&mem, bufs, &frames, &mut fates, &slot, waker);
        ring.publish_with(&mem, &slot);
        fates
    };
    // S: one frame fits, the second is held back; kicks asked for at 1.
    let s = Arc::new(Waker::new().expect("waker"));
    assert_eq!(deliver(2, &s), [Fate::Delivered, Fate::Full]);
    assert_eq!(avail_event(), 1);
    // The guest posts one buffer (and kicks: avail went past 1); T takes it first.
    posting.post();
    let t_waker = Arc::new(Waker::new().expect("waker"));
    assert_eq!(deliver(1, &t_waker), [Fate::Delivered]);
    // The kick: nothing new to see, S keeps waiting — and the ring asks again at 2.
    let woken = ring.kicked(&g, &slot);
    assert!(
        woken.is_none(),
        "nothing was posted since T took the buffer"
    );
    posting.post();
    let (new, old, event) = (posting.idx(), posting.idx().wrapping_sub(1), avail_event());
    // The virtio spec's vring_need_event: the driver kicks when the index moved past the event.
    assert!(
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old),
        "the guest's next posting (avail {new}) does not kick: avail_event {} stayed behind",
        avail_event()
    );
    assert_eq!(slot.take_waiters().len(), 1, "S no longer waits");
}

/// However many frames a hold is offered, the chains it walks (and stages) are bounded per
/// hold, not per frame: against a ring that never holds a usable buffer, 64 frames once
/// walked 64 × 2 rings' worth of chains under the queue lock.
#[test]
fn a_hold_walks_a_bounded_number_of_bad_chains() {
    let mem: GuestMemoryMmap = pvnet_grant::memfd::guest_memory(&[(0, 0x20_0000)]).expect("memory");
    let (vq, mut ring) = ring_in(&mem);
    // Every avail entry is 0: descriptor 0, readable — a bad chain in an RX ring.
    let d = RawDescriptor::from(Descriptor::new(BUF, BUF_LEN, 0, 0));
    mem.write_obj(d, vq.desc_table_addr()).expect("desc");
    // Its driver publishes a whole ring's worth more of them every time the device reads
    // the avail index: the most a receiver can make a sender walk.
    let idx = GuestAddress(vq.avail_addr().0 + 2);
    let flooding = OnIdxRead {
        mem: &mem,
        avail: vq.avail_addr().0,
        hook: || {
            let i: u16 = mem.read_obj(idx).expect("idx");
            mem.write_obj(i.wrapping_add(SIZE), idx).expect("idx");
        },
    };
    let t = grants_of(&mem);
    let g = t.read();
    let (mut sh, mut dh) = (RegionHint::default(), RegionHint::default());
    let bufs = BufGuards {
        sg: &g,
        sh: &mut sh,
        dg: &g,
        dh: &mut dh,
    };
    let slot = RxSlot::default();
    let waker = Arc::new(Waker::new().expect("waker"));
    let n = 64;
    let mut fates = vec![Fate::Pending; n];
    let frames = Frames(vec![0xab; 60], n, None);
    ring.deliver_with(&flooding, bufs, &frames, &mut fates, &slot, &waker);
    let walked = ring.st.shadow.len();
    assert!(
        walked <= 2 * usize::from(SIZE) + n,
        "one hold walked {walked} chains for {n} frames (ring of {SIZE})"
    );
    assert!(fates
        .iter()
        .all(|f| *f == Fate::Dropped(DropReason::RxBadChain)));
}
