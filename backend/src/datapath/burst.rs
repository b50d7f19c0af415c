//! The TX side of a burst: the frames taken from one TX ring in one go, and the steps that
//! take, inspect and route them before any delivery.
//!
//! 1. [`fetch`]: one read of the avail index (an [`AvailSnapshot`] of the avail ring,
//!    translated once), then up to [`BURST`] chains walked into segment lists
//!    ([`read_chain`]); a chain refused there is already a dropped frame.
//! 2. [`prefetch`]: the first line of every frame is requested before any is read, so the
//!    cache misses on buffers the frontend's core just wrote overlap instead of adding up.
//! 3. [`classify`]: the virtio header (only from senders with `VIRTIO_NET_F_CSUM`, see
//!    [`reads_hdr`]) and the first [`PREFIX`] frame bytes read into the burst (the whole
//!    frame when it is that short, so small frames are delivered from there), the rest of
//!    the frame checked against the grants, the virtio header sanitised (only
//!    `NEEDS_CSUM` survives: `DATA_VALID` and `RSC_INFO` are the device's to set, a sender must
//!    not make a receiver skip checksum checks), port security applied, the source MAC
//!    learned, the destination looked up, the RX queue steering key set (the sender's
//!    queue under `--rx-steer queue`, else the flow hash; see
//!    [`RxSteer`](crate::config::RxSteer)).
//!
//! All of it runs under the source port's grant read guard.

use crate::datapath::chain::{read_chain, DescTable, Dir};
use crate::datapath::copy::{self, SegCursor};
use crate::datapath::ring::{one_slice, AvailRing, AvailSnapshot, RingError};
use crate::datapath::{Data, FrameSrc, Seg};
use crate::fdb::Fdb;
use crate::net::{self, hdr::NEEDS_CSUM, VirtioNetHdr};
use crate::stats::{DropReason, TxStats};
use pvnet_grant::{Access, GrantMemory, GrantReadGuard, RegionHint};
use pvnet_locks::family::RwFamily;
use virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};

/// Most chains taken from a TX ring per burst.
pub const BURST: usize = 64;
/// Frame bytes read while classifying (enough for the flow hash's headers).
pub const PREFIX: usize = net::HASH_PREFIX;
/// Largest frame accepted from a guest (after the virtio header).
pub const MAX_FRAME: usize = net::gso::MAX_GSO_FRAME;

const PREFIX_BUF: usize = net::hdr::HDR_LEN + PREFIX;

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Not yet classified.
    Unknown,
    /// Dropped for this reason (counted once, by the caller).
    Drop(DropReason),
    /// Unicast to this port.
    Port(usize),
    /// Every other connected port (broadcast, multicast, unknown unicast).
    Flood,
}

/// One frame taken from a TX ring.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    /// Head of its TX chain (what the used ring returns).
    pub head: u16,
    /// Its buffers: `segs[seg0..seg0 + nsegs]` of the burst (or of a held-back frame).
    pub seg0: u32,
    pub nsegs: u32,
    /// The sanitised virtio-net header.
    pub hdr: VirtioNetHdr,
    /// Length of the sender's virtio-net header (skipped in its buffers).
    pub hl: u8,
    /// Frame bytes after the header.
    pub len: u32,
    /// RX queue steering key ([`Port::pick_queue`](crate::switch::Port::pick_queue)): the
    /// sending queue's index, or the flow hash (`--rx-steer`).
    pub key: u32,
    pub route: Route,
}

/// The frames of one burst, their buffers and what was read of them.
pub struct Burst {
    pub frames: Vec<Frame>,
    pub segs: Vec<Seg>,
    prefix: Vec<[u8; PREFIX_BUF]>,
    /// Per frame, the host address of its first buffer, which [`prefetch`] translated whole
    /// and checked readable (0: not translated), for [`classify`] to read without a second
    /// translation; valid while the grant table is at generation `hosts_gen`.
    hosts: Vec<usize>,
    hosts_gen: u64,
}

impl Default for Burst {
    fn default() -> Self {
        Burst {
            frames: Vec::with_capacity(BURST),
            segs: Vec::with_capacity(4 * BURST),
            prefix: vec![[0u8; PREFIX_BUF]; BURST],
            hosts: Vec::with_capacity(BURST),
            hosts_gen: 0,
        }
    }
}

impl Burst {
    /// Empties the burst (keeps its allocations).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.segs.clear();
        self.hosts.clear();
    }

    /// The buffers of frame `i`.
    pub fn segs_of(&self, i: usize) -> &[Seg] {
        let f = &self.frames[i];
        let (a, n) = (f.seg0 as usize, f.nsegs as usize);
        self.segs.get(a..a + n).unwrap_or_default()
    }

    /// Frame `i` as a destination sees it: from the prefix when it fits there, else from
    /// the guest's buffers.
    #[inline(always)]
    pub fn src(&self, i: usize) -> FrameSrc<'_> {
        let f = &self.frames[i];
        let (hl, len) = (usize::from(f.hl), f.len as usize);
        let data = match self.prefix.get(i) {
            Some(p) if len <= PREFIX => Data::Local(&p[hl..hl + len]),
            _ => Data::Guest {
                segs: self.segs_of(i),
                skip: hl,
            },
        };
        FrameSrc {
            hdr: f.hdr.into(),
            len,
            data,
        }
    }
}

/// How much one [`fetch`] may take.
#[derive(Clone, Copy, Debug)]
pub struct Room {
    /// Chains.
    pub frames: usize,
    /// Buffers: a chain that would pass this is left on the ring for the next burst (unless
    /// it is the first of the burst).
    pub segs: usize,
}

/// Step 1: takes chains from the TX ring `q` with one avail-index read (at most [`BURST`]
/// and `room`) and walks each into the burst's segment list, reading the avail entries from
/// `avail` and descriptors from `table` (the ring's avail ring and descriptor table,
/// translated once). Returns the number taken; a ring whose avail index is bogus yields an
/// error and nothing.
pub fn fetch<'m, F: RwFamily>(
    b: &mut Burst,
    q: &mut Queue,
    mem: &'m GrantMemory<'_, '_, F>,
    ring: (AvailRing<'m>, &DescTable<'m>),
    room: Room,
    hl: usize,
) -> Result<usize, RingError> {
    let (avail, table) = ring;
    let mut indirect = |gpa: u64, len: u32| one_slice(mem, gpa, len as usize, Permissions::Read);
    let mut it = AvailSnapshot::take(avail, q.next_avail())?;
    let max = room.frames.min(BURST);
    let mut n = 0;
    while n < max {
        let Some(head) = it.next() else { break };
        let seg0 = b.segs.len();
        let r = read_chain(
            table,
            head,
            &mut indirect,
            Dir::Readable,
            MAX_FRAME + hl,
            &mut b.segs,
        );
        // A good chain's bytes are its segments' (a bad one leaves none).
        let (route, bytes) = match r {
            Ok(info) if info.bytes < hl + net::eth::ETH_HLEN => {
                (Route::Drop(DropReason::TooShort), info.bytes)
            }
            Ok(info) => (Route::Unknown, info.bytes),
            Err(e) => (Route::Drop(e.tx_drop()), 0),
        };
        if n > 0 && b.segs.len() > room.segs {
            // Leave it for the next burst.
            b.segs.truncate(seg0);
            it.back();
            break;
        }
        let nsegs = b.segs.len() - seg0;
        b.frames.push(Frame {
            head,
            // Bounded by BURST * MAX_CHAIN_DESCS: fits u32.
            seg0: seg0 as u32,
            nsegs: nsegs as u32,
            hdr: VirtioNetHdr::plain(),
            hl: hl as u8,
            len: bytes.saturating_sub(hl) as u32,
            key: 0,
            route,
        });
        n += 1;
    }
    q.set_next_avail(it.next_avail());
    Ok(n)
}

/// Step 2: prefetches the first line [`classify`] reads of every frame not yet dropped: the
/// virtio header's, or with `skip_hdr` the frame's. A frame's first buffer is translated
/// whole (checked readable) once, here: `classify`, under the same table generation, reads
/// it at that address.
pub fn prefetch<F: RwFamily>(
    b: &mut Burst,
    g: &GrantReadGuard<'_, F>,
    hint: &mut RegionHint,
    skip_hdr: bool,
) {
    b.hosts.clear();
    b.hosts_gen = g.generation();
    for (i, f) in b.frames.iter().enumerate() {
        let mut host = 0;
        let off = if skip_hdr { usize::from(f.hl) } else { 0 };
        match b.segs.get(f.seg0 as usize) {
            _ if f.route != Route::Unknown => {}
            // The rule: the line is in the first buffer (no cursor walk).
            Some(s) if f.nsegs > 0 && off < s.len as usize => {
                match g.host_range_hinted(hint, s.gpa, s.len as usize, Access::ReadOnly) {
                    Some(p) => {
                        host = p as usize;
                        copy::prefetch_ptr(p.wrapping_add(off));
                    }
                    None => copy::prefetch_gpa(g, hint, s.gpa.wrapping_add(off as u64)),
                }
            }
            _ => {
                let mut cur = SegCursor::new(b.segs_of(i));
                if cur.skip(off) {
                    copy::prefetch(g, hint, &cur);
                }
            }
        }
        b.hosts.push(host);
    }
}

/// Whether the sender's virtio headers must be read: only a guest that negotiated
/// `VIRTIO_NET_F_CSUM` may set anything in them (`NEEDS_CSUM`; every GSO type requires CSUM),
/// so without it the header is taken as plain and its cache line, which the sender's core
/// just wrote, is never fetched (DPDK's vhost library skips it the same way).
pub fn reads_hdr(features: u64) -> bool {
    features & (1 << VIRTIO_NET_F_CSUM) != 0
}

/// What [`classify`] needs to know about the sending port.
pub struct ClassifyCtx<'a> {
    pub fdb: &'a Fdb,
    /// The FDB's clock, read once per burst.
    pub now: u32,
    pub port: usize,
    /// The port's MAC, enforced as source MAC when `port_security` is on.
    pub mac: [u8; 6],
    pub port_security: bool,
    /// Whether the virtio headers are read ([`reads_hdr`]); if not, they count as plain.
    pub read_hdr: bool,
    /// Number of ports in use (a lone port has nobody to flood to, spare slots or not).
    pub ports: usize,
    /// RX queues enabled on port `d` now (asked at most once per port and burst).
    pub queues_of: &'a dyn Fn(usize) -> u32,
    pub stats: &'a TxStats,
    /// `Some(q)`: frames are steered by their sending queue `q` (`--rx-steer queue`);
    /// `None`: by flow hash.
    pub sender_queue: Option<u32>,
}

/// Step 3: reads, checks, sanitises and routes every frame not yet dropped.
pub fn classify<F: RwFamily>(
    b: &mut Burst,
    g: &GrantReadGuard<'_, F>,
    hint: &mut RegionHint,
    cx: &ClassifyCtx<'_>,
) {
    let mut memo = Memo::default();
    let hosts = b.hosts_gen == g.generation();
    for i in 0..b.frames.len() {
        if b.frames[i].route != Route::Unknown {
            continue;
        }
        let host = if hosts {
            b.hosts.get(i).copied().unwrap_or(0)
        } else {
            0
        };
        let route = classify_one(b, i, host, g, hint, cx, &mut memo);
        b.frames[i].route = route;
        if !matches!(
            route,
            Route::Drop(DropReason::NotGranted | DropReason::SpoofedMac)
        ) {
            cx.stats.frame(b.frames[i].len as usize);
        }
    }
}

/// What [`classify`] remembers from one frame of a burst to the next: the FDB at the burst's
/// clock gives the same answers for the same MACs (a burst mostly holds a few flows between
/// two ports), so a source MAC is learned and a destination MAC looked up once per run of
/// frames that repeat them, not per frame.
#[derive(Default)]
struct Memo {
    /// The source MAC learned last.
    src: Option<[u8; 6]>,
    /// The destination MAC looked up last, and the answer.
    dst: Option<([u8; 6], Option<usize>)>,
    queues: QueueCounts,
}

/// RX queue counts of the ports a burst sends to, asked once per port.
struct QueueCounts {
    known: u64,
    n: [u8; 64],
}

impl Default for QueueCounts {
    fn default() -> Self {
        QueueCounts {
            known: 0,
            n: [0; 64],
        }
    }
}

impl QueueCounts {
    fn of(&mut self, d: usize, ask: &dyn Fn(usize) -> u32) -> u32 {
        let bit = 1u64.checked_shl(d as u32).unwrap_or(0);
        match self.n.get_mut(d) {
            Some(n) if self.known & bit != 0 => u32::from(*n),
            Some(n) => {
                let q = ask(d);
                *n = u8::try_from(q).unwrap_or(u8::MAX);
                self.known |= bit;
                q
            }
            None => ask(d),
        }
    }
}

fn classify_one<F: RwFamily>(
    b: &mut Burst,
    i: usize,
    host: usize,
    g: &GrantReadGuard<'_, F>,
    hint: &mut RegionHint,
    cx: &ClassifyCtx<'_>,
    memo: &mut Memo,
) -> Route {
    let f = b.frames[i];
    let (hl, len) = (usize::from(f.hl), f.len as usize);
    // Bytes read: a short frame whole (it is delivered from here); of a longer one what its
    // routing reads — the flow hash's headers, or without a flow hash (`--rx-steer queue`)
    // only the MACs: the lines after the first are the copy's to fetch.
    let plen = match (len <= PREFIX, cx.sender_queue) {
        (true, _) => len,
        (false, Some(_)) => net::eth::ETH_HLEN,
        (false, None) => PREFIX,
    };
    let (a, n) = (f.seg0 as usize, f.nsegs as usize);
    let segs = b.segs.get(a..a + n).unwrap_or_default();
    let Some(pre) = b.prefix.get_mut(i) else {
        return Route::Drop(DropReason::BadChain);
    };
    // The header's bytes stay as they are in the prefix when it is not read: only `hdr`
    // below is used.
    let from = if cx.read_hdr { 0 } else { hl };
    let whole = match segs {
        [s] if host != 0 => {
            let out = &mut pre[from..hl + plen];
            let fits = from + out.len() <= s.len as usize;
            if fits {
                let src = (host + from) as *const u8;
                // SAFETY: `prefetch` translated this buffer, `s.len` bytes at `host`,
                // readable, at the table generation the caller's guard `g` still holds (the
                // mapping lives while `g` does); `from + out.len() <= s.len` (checked): the
                // bytes read lie in it. `out` is local memory, not the guest's.
                unsafe { copy::copy_small(out.as_mut_ptr(), src, out.len()) };
            }
            Some(fits)
        }
        _ => None,
    };
    let read = whole.unwrap_or_else(|| {
        let mut cur = SegCursor::new(segs);
        cur.skip(from) && copy::read_into(g, hint, &mut cur, &mut pre[from..hl + plen]).is_ok()
    });
    if !read {
        return Route::Drop(DropReason::NotGranted);
    }
    // The rest of the frame must be readable too (checked once here, per grant piece; a
    // frame in one buffer translated whole by `prefetch` is).
    if len > plen && whole.is_none() {
        let mem = GrantMemory::new(g, *hint);
        let ok = segs
            .iter()
            .all(|s| mem.check_range(GuestAddress(s.gpa), s.len as usize, Permissions::Read));
        *hint = mem.hint();
        if !ok {
            return Route::Drop(DropReason::NotGranted);
        }
    }
    let mut hdr = match cx.read_hdr {
        true => match VirtioNetHdr::from_bytes(&pre[..hl]) {
            Ok(h) => h,
            Err(_) => return Route::Drop(DropReason::TooShort),
        },
        false => VirtioNetHdr::plain(),
    };
    hdr.flags &= NEEDS_CSUM;
    hdr.num_buffers = 0;
    let frame = &pre[hl..hl + plen];
    let mut dmac = [0u8; 6];
    let mut smac = [0u8; 6];
    dmac.copy_from_slice(&frame[..6]);
    smac.copy_from_slice(&frame[6..12]);
    if cx.port_security && smac != cx.mac {
        return Route::Drop(DropReason::SpoofedMac);
    }
    if !net::is_multicast(&smac) && memo.src != Some(smac) {
        cx.fdb.learn_at(&smac, cx.port, cx.now);
        memo.src = Some(smac);
        // What was looked up before may just have been learned here.
        memo.dst = None;
    }
    let known = match memo.dst {
        _ if net::is_multicast(&dmac) => None,
        Some((m, known)) if m == dmac => known,
        _ => {
            let known = cx.fdb.lookup_at(&dmac, cx.now);
            memo.dst = Some((dmac, known));
            known
        }
    };
    let route = match known {
        Some(d) if d == cx.port => Route::Drop(DropReason::NoDest),
        Some(d) => Route::Port(d),
        None if cx.ports < 2 => Route::Drop(DropReason::NoDest),
        None => Route::Flood,
    };
    // The flow hash only picks among several RX queues: a unicast frame to a port with
    // one queue enabled does without it, and so does steering by the sending queue.
    let key = match (cx.sender_queue, route) {
        (Some(q), _) => q,
        (None, Route::Port(d)) if memo.queues.of(d, cx.queues_of) < 2 => 0,
        (None, _) => net::flow_hash(frame),
    };
    let fr = &mut b.frames[i];
    fr.hdr = hdr;
    fr.key = key;
    route
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::hdr::DATA_VALID;
    use pvnet_grant::GrantTable;
    use pvnet_locks::family::Percpu;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestMemoryMmap};

    const ME: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// Header (flags `f`) + a 60-byte frame from `src` to `dst` at `at`.
    fn frame(mem: &GuestMemoryMmap, at: u64, f: u8, dst: [u8; 6], src: [u8; 6]) -> u32 {
        let mut b = vec![0u8; 12 + 60];
        b[0] = f;
        b[12..18].copy_from_slice(&dst);
        b[18..24].copy_from_slice(&src);
        mem.write_slice(&b, GuestAddress(at)).expect("frame");
        b.len() as u32
    }

    #[test]
    fn fetch_and_classify_a_burst() {
        let mem: GuestMemoryMmap =
            pvnet_grant::memfd::guest_memory(&[(0, 0x10_0000)]).expect("memory");
        let vq = MockSplitQueue::new(&mem, 16);
        let len = frame(&mem, 0x1000, DATA_VALID | NEEDS_CSUM, PEER, ME);
        frame(&mem, 0x2000, 0, [0xff; 6], ME);
        frame(&mem, 0x3000, 0, PEER, PEER);
        let next = VRING_DESC_F_NEXT as u16;
        vq.add_desc_chains(
            &[
                // 0: header and frame split over two descriptors, to a known peer.
                desc(0x1000, 12, next, 1),
                desc(0x100c, len - 12, 0, 0),
                // 2: broadcast.
                desc(0x2000, len, 0, 0),
                // 3: too short for a header and an Ethernet header.
                desc(0x2000, 20, 0, 0),
                // 4: writable in a TX chain.
                desc(0x2000, len, VRING_DESC_F_WRITE as u16, 0),
                // 5: another port's source MAC.
                desc(0x3000, len, 0, 0),
            ],
            0,
        )
        .expect("chains");
        let mut q: Queue = vq.create_queue().expect("queue");
        let t = GrantTable::<Percpu>::new();
        t.replace_from_memory(&mem).expect("grants");
        let g = t.read();
        let gm = GrantMemory::new(&g, RegionHint::default());
        let mut b = Burst::default();
        let room = Room {
            frames: BURST,
            segs: 1 << 20,
        };
        let lay = crate::datapath::ring::RingLayout::of(&q).expect("layout");
        let table = lay.desc_table(&gm).expect("table");
        let avail = lay.avail_ring(&gm).expect("avail");
        assert_eq!(
            fetch(&mut b, &mut q, &gm, (avail, &table), room, 12).expect("fetch"),
            5
        );
        assert_eq!(q.next_avail(), 5);
        let fdb = Fdb::new();
        fdb.learn(&PEER, 1);
        let stats = TxStats::default();
        let mut cx = ClassifyCtx {
            fdb: &fdb,
            now: fdb.now(),
            port: 0,
            mac: ME,
            port_security: true,
            read_hdr: true,
            ports: 2,
            queues_of: &|_| 2,
            stats: &stats,
            sender_queue: None,
        };
        let mut hint = RegionHint::default();
        prefetch(&mut b, &g, &mut hint, false);
        classify(&mut b, &g, &mut hint, &cx);
        let routes: Vec<Route> = b.frames.iter().map(|f| f.route).collect();
        assert_eq!(
            routes,
            [
                Route::Port(1),
                Route::Flood,
                Route::Drop(DropReason::TooShort),
                Route::Drop(DropReason::WritableInTx),
                Route::Drop(DropReason::SpoofedMac),
            ]
        );
        // Only NEEDS_CSUM survives from the sender's flags.
        assert_eq!(b.frames[0].hdr.flags, NEEDS_CSUM);
        assert_eq!(b.frames[0].len, 60);
        assert_eq!(fdb.lookup(&ME), Some(0), "source learned");
        // A small frame is delivered from what was read.
        assert!(matches!(b.src(0).data, Data::Local(f) if f.len() == 60 && f[..6] == PEER));
        // A sender without VIRTIO_NET_F_CSUM: its header is not read, the flags it wrote
        // do not count, the frame is read and routed as before.
        cx.read_hdr = false;
        b.frames[0].route = Route::Unknown;
        prefetch(&mut b, &g, &mut hint, true);
        classify(&mut b, &g, &mut hint, &cx);
        assert_eq!(b.frames[0].route, Route::Port(1));
        assert_eq!(b.frames[0].hdr.flags, 0);
        assert!(matches!(b.src(0).data, Data::Local(f) if f.len() == 60 && f[..6] == PEER));
        assert!(reads_hdr(1 << VIRTIO_NET_F_CSUM) && !reads_hdr(0));
        cx.read_hdr = true;
        // Without port security the same frame is forwarded (and PEER moves to port 0).
        cx.port_security = false;
        b.frames[4].route = Route::Unknown;
        classify(&mut b, &g, &mut hint, &cx);
        assert_eq!(b.frames[4].route, Route::Drop(DropReason::NoDest));
        // The steering key: the flow hash, or the sending queue under `--rx-steer queue`.
        let frame0 = |b: &Burst| match b.src(0).data {
            Data::Local(f) => f.to_vec(),
            _ => Vec::new(),
        };
        assert_eq!(b.frames[0].key, net::flow_hash(&frame0(&b)));
        cx.sender_queue = Some(5);
        fdb.learn(&PEER, 1);
        b.frames[0].route = Route::Unknown;
        classify(&mut b, &g, &mut hint, &cx);
        assert_eq!((b.frames[0].route, b.frames[0].key), (Route::Port(1), 5));
    }

    /// A buffer `prefetch` translated is read at that address by `classify` only while the
    /// grant table is unchanged: revoked in between, the frame is not granted (read at the
    /// kept address, it would have been flooded).
    #[test]
    fn kept_host_addresses_die_with_the_table_generation() {
        let mem: GuestMemoryMmap =
            pvnet_grant::memfd::guest_memory(&[(0, 0x10_0000)]).expect("memory");
        let vq = MockSplitQueue::new(&mem, 16);
        let len = frame(&mem, 0x2000, 0, [0xff; 6], ME);
        vq.add_desc_chains(&[desc(0x2000, len, 0, 0), desc(0x2000, len, 0, 0)], 0)
            .expect("chains");
        let mut q: Queue = vq.create_queue().expect("queue");
        let t = GrantTable::<Percpu>::new();
        t.replace_from_memory(&mem).expect("grants");
        let mut b = Burst::default();
        let mut hint = RegionHint::default();
        {
            let g = t.read();
            let gm = GrantMemory::new(&g, RegionHint::default());
            let lay = crate::datapath::ring::RingLayout::of(&q).expect("layout");
            let table = lay.desc_table(&gm).expect("table");
            let avail = lay.avail_ring(&gm).expect("avail");
            let room = Room {
                frames: BURST,
                segs: 1 << 20,
            };
            let n = fetch(&mut b, &mut q, &gm, (avail, &table), room, 12).expect("fetch");
            assert_eq!(n, 2);
            prefetch(&mut b, &g, &mut hint, false);
        }
        let fdb = Fdb::new();
        let stats = TxStats::default();
        let cx = ClassifyCtx {
            fdb: &fdb,
            now: fdb.now(),
            port: 0,
            mac: ME,
            port_security: false,
            read_hdr: true,
            ports: 2,
            queues_of: &|_| 1,
            stats: &stats,
            sender_queue: None,
        };
        // Unchanged table: read at the kept address.
        let g = t.read();
        b.frames[1].route = Route::Drop(DropReason::BadChain);
        classify(&mut b, &g, &mut hint, &cx);
        assert_eq!(b.frames[0].route, Route::Flood);
        drop(g);
        // Revoked after the prefetch.
        t.revoke(GuestAddress(0x2000), 0x1000).expect("revoke");
        let g = t.read();
        b.frames[1].route = Route::Unknown;
        classify(&mut b, &g, &mut hint, &cx);
        assert_eq!(b.frames[1].route, Route::Drop(DropReason::NotGranted));
    }

    /// The routes `classify` gives a burst of 60-byte frames (dst, src) sent on port 0 of two,
    /// with `fdb`.
    fn routes_of(fdb: &Fdb, frames: &[([u8; 6], [u8; 6])]) -> Vec<Route> {
        let mem: GuestMemoryMmap =
            pvnet_grant::memfd::guest_memory(&[(0, 0x10_0000)]).expect("memory");
        let vq = MockSplitQueue::new(&mem, 16);
        let descs: Vec<RawDescriptor> = frames
            .iter()
            .enumerate()
            .map(|(i, &(dst, src))| {
                let at = 0x1000 * (i as u64 + 1);
                desc(at, frame(&mem, at, 0, dst, src), 0, 0)
            })
            .collect();
        vq.add_desc_chains(&descs, 0).expect("chains");
        let mut q: Queue = vq.create_queue().expect("queue");
        let t = GrantTable::<Percpu>::new();
        t.replace_from_memory(&mem).expect("grants");
        let g = t.read();
        let gm = GrantMemory::new(&g, RegionHint::default());
        let lay = crate::datapath::ring::RingLayout::of(&q).expect("layout");
        let table = lay.desc_table(&gm).expect("table");
        let avail = lay.avail_ring(&gm).expect("avail");
        let room = Room {
            frames: BURST,
            segs: 1 << 20,
        };
        let mut b = Burst::default();
        fetch(&mut b, &mut q, &gm, (avail, &table), room, 12).expect("fetch");
        let stats = TxStats::default();
        let cx = ClassifyCtx {
            fdb,
            now: fdb.now(),
            port: 0,
            mac: ME,
            port_security: false,
            read_hdr: true,
            ports: 2,
            queues_of: &|_| 1,
            stats: &stats,
            sender_queue: None,
        };
        let mut hint = RegionHint::default();
        prefetch(&mut b, &g, &mut hint, false);
        classify(&mut b, &g, &mut hint, &cx);
        b.frames.iter().map(|f| f.route).collect()
    }

    /// Within a burst the FDB is asked once per run of repeated MACs, and never answers from
    /// before a MAC was learned in the same burst: a frame from B (learned on this port) to B
    /// after one to B while B was unknown is not flooded but stays on this port.
    #[test]
    fn repeated_macs_in_a_burst_route_as_if_asked_every_time() {
        const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
        const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
        let fdb = Fdb::new();
        fdb.learn(&PEER, 1);
        let routes = routes_of(
            &fdb,
            &[
                (B, A),
                (B, A),
                (B, B),
                (B, A),
                (PEER, A),
                (PEER, B),
                ([0xff; 6], A),
            ],
        );
        let nd = Route::Drop(DropReason::NoDest);
        let want = [
            Route::Flood,
            Route::Flood,
            nd,
            nd,
            Route::Port(1),
            Route::Port(1),
            Route::Flood,
        ];
        assert_eq!(routes, want);
        assert_eq!((fdb.lookup(&A), fdb.lookup(&B)), (Some(0), Some(0)));
    }
}
