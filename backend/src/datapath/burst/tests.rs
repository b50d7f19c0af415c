//! Unit tests of the burst steps: fetch, prefetch (with the translation it keeps) and classify.

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

/// Takes every chain of `q` into `b` (12-byte virtio headers), reading the ring through `g`.
fn fetch_all(b: &mut Burst, q: &mut Queue, g: &GrantReadGuard<'_, Percpu>) -> usize {
    let gm = GrantMemory::new(g, RegionHint::default());
    let lay = crate::datapath::ring::RingLayout::of(q).expect("layout");
    let table = lay.desc_table(&gm).expect("table");
    let avail = lay.avail_ring(&gm).expect("avail");
    let room = Room {
        frames: BURST,
        segs: 1 << 20,
    };
    fetch(b, q, &gm, (avail, &table), room, 12).expect("fetch")
}

fn one_queue(_: usize) -> u32 {
    1
}

/// How port 0 of two classifies: headers read, no port security, one RX queue per port.
fn ctx<'a>(fdb: &'a Fdb, stats: &'a TxStats) -> ClassifyCtx<'a> {
    ClassifyCtx {
        fdb,
        now: fdb.now(),
        port: 0,
        mac: ME,
        port_security: false,
        read_hdr: true,
        ports: 2,
        queues_of: &one_queue,
        stats,
        sender_queue: None,
    }
}

#[test]
fn fetch_and_classify_a_burst() {
    let mem: GuestMemoryMmap = pvnet_grant::memfd::guest_memory(&[(0, 0x10_0000)]).expect("memory");
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
    let mut b = Burst::default();
    assert_eq!(fetch_all(&mut b, &mut q, &g), 5);
    assert_eq!(q.next_avail(), 5);
    let fdb = Fdb::new();
    fdb.learn(&PEER, 1);
    let stats = TxStats::default();
    let mut cx = ClassifyCtx {
        port_security: true,
        queues_of: &|_| 2,
        ..ctx(&fdb, &stats)
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
    let mem: GuestMemoryMmap = pvnet_grant::memfd::guest_memory(&[(0, 0x10_0000)]).expect("memory");
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
        assert_eq!(fetch_all(&mut b, &mut q, &g), 2);
        prefetch(&mut b, &g, &mut hint, false);
    }
    let fdb = Fdb::new();
    let stats = TxStats::default();
    let cx = ctx(&fdb, &stats);
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
    let mem: GuestMemoryMmap = pvnet_grant::memfd::guest_memory(&[(0, 0x10_0000)]).expect("memory");
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
    let mut b = Burst::default();
    fetch_all(&mut b, &mut q, &g);
    let stats = TxStats::default();
    let cx = ctx(fdb, &stats);
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
