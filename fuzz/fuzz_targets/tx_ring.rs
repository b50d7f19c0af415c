//! Descriptor chains laid out by arbitrary bytes in a split ring (virtio-queue's mock
//! module), driven through port 0's real TX path into port 1: validation, grants, switching,
//! offload fallback and RX delivery never panic, and counters stay consistent.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use pvnet_backend::fuzzing::{run_tx, TxRing};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory: two adjacent 64 KiB regions, a gap, a third region at 1 MiB.
const REGIONS: [(u64, usize); 3] = [(0, 0x1_0000), (0x1_0000, 0x1_0000), (0x10_0000, 0x1_0000)];
/// Where the fuzzer's data bytes go (frames, headers, indirect tables), up to the gap.
const DATA: u64 = 0x4000;

#[derive(Arbitrary, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    size_log: u8,
    features: u64,
    rx_features: u64,
    descs: Vec<Desc>,
    avail: Vec<u16>,
    /// Published avail index: `avail.len()` unless this is set.
    avail_idx: Option<u16>,
    data: Vec<u8>,
}

/// Most addresses land in or near guest memory (including the gap and past the end); one
/// in eight is taken raw.
fn addr(a: u64) -> u64 {
    if a & 7 == 0 {
        a
    } else {
        (a >> 3) % 0x12_0000
    }
}

fuzz_target!(|inp: Input| {
    let size = 1u16 << (inp.size_log % 9);
    let mem = GuestMemoryMmap::<()>::from_ranges(&REGIONS.map(|(a, l)| (GuestAddress(a), l)))
        .expect("memory");
    let q = MockSplitQueue::create(&mem, GuestAddress(0), size);
    let room = (0x2_0000 - DATA) as usize;
    let data = &inp.data[..inp.data.len().min(room)];
    mem.write_slice(data, GuestAddress(DATA)).expect("data");
    for (i, d) in inp.descs.iter().take(usize::from(size)).enumerate() {
        let raw = RawDescriptor::from(Descriptor::new(addr(d.addr), d.len, d.flags, d.next));
        q.desc_table().store(i as u16, raw).expect("desc");
    }
    for (i, &head) in inp.avail.iter().take(usize::from(size)).enumerate() {
        q.avail()
            .ring()
            .ref_at(i)
            .expect("avail")
            .store(u16::to_le(head));
    }
    let idx = inp
        .avail_idx
        .unwrap_or(inp.avail.len().min(usize::from(size)) as u16);
    q.avail().idx().store(u16::to_le(idx));
    let ring = TxRing {
        desc: q.desc_table_addr().0,
        avail: q.avail_addr().0,
        used: q.used_addr().0,
        size,
    };
    let Some(r) = run_tx(&mem, ring, inp.features, inp.rx_features) else {
        return;
    };
    // Each chain becomes at most one frame (sent) or one drop of its own; delivered copies
    // are bounded by the sent frames' segments (a GSO frame may become up to 1024 frames).
    let chains = u64::from(size);
    assert!(r.tx_frames <= chains, "{r:?}");
    assert!(r.rx_frames <= r.tx_frames * 1024, "{r:?}");
});
