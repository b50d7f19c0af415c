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
use crate::datapath::{Data, FrameSrc, Seg, CHECKED};
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
// A long frame's checked head ([`CHECKED`]) is always in its prefix.
const _: () = assert!(PREFIX >= CHECKED);

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

    /// The first bytes of frame `i` as `classify` read and checked them (its Ethernet
    /// header, at most [`CHECKED`] bytes; empty before `classify`).
    #[inline(always)]
    pub fn head(&self, i: usize) -> &[u8] {
        let f = &self.frames[i];
        let hl = usize::from(f.hl);
        let n = (f.len as usize).min(CHECKED);
        self.prefix
            .get(i)
            .and_then(|p| p.get(hl..hl + n))
            .unwrap_or_default()
    }

    /// Frame `i` as a destination sees it: from the prefix when it fits there, else its
    /// checked head from the prefix and the rest from the guest's buffers.
    #[inline(always)]
    pub fn src(&self, i: usize) -> FrameSrc<'_> {
        let f = &self.frames[i];
        let (hl, len) = (usize::from(f.hl), f.len as usize);
        let data = match self.prefix.get(i) {
            Some(p) if len <= PREFIX => Data::Local(&p[hl..hl + len]),
            // PREFIX >= CHECKED: the head is all in the prefix.
            Some(p) => Data::Guest {
                head: &p[hl..hl + CHECKED],
                segs: self.segs_of(i),
                skip: hl,
            },
            None => Data::Guest {
                head: &[],
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
mod tests;
