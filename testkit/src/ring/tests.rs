//! The driver ring against the device side pvnet and vhost-user-backend use:
//! `virtio_queue::Queue` on the same guest memory pops what the kit posts, returns it, and
//! decides kicks and notifications from what the kit wrote.

use super::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

fn ring(event_idx: bool) -> (GuestMem, DriverRing, GuestMemoryMmap<()>) {
    let mut mem = GuestMem::new(1 << 20).unwrap();
    let r = DriverRing::new(&mut mem, 8, event_idx).unwrap();
    let m = mem.mem().clone();
    (mem, r, m)
}

/// The device's view of `r`, as a vhost-user device sets it up from SET_VRING_*.
fn device(r: &DriverRing, m: &GuestMemoryMmap<()>, event_idx: bool) -> Queue {
    let mut q = Queue::new(r.size).unwrap();
    q.set_size(r.size);
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(r.desc);
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(r.avail);
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(r.used);
    q.set_used_ring_address(lo, hi);
    q.set_event_idx(event_idx);
    q.set_ready(true);
    assert!(q.is_valid(m));
    q
}

/// The device takes the next chain and returns it with `len` bytes written.
fn device_returns(q: &mut Queue, m: &GuestMemoryMmap<()>, len: u32) -> u16 {
    let c = q.pop_descriptor_chain(m).expect("a chain");
    q.add_used(m, c.head_index(), len).unwrap();
    c.head_index()
}

/// Reads every new used entry and tells the device where the driver stands, as the guest's
/// receive and reclaim paths do.
fn harvest(r: &mut DriverRing) -> Vec<(u32, u32)> {
    let v: Vec<_> = (0..r.used_pending()).map(|_| r.pop_used()).collect();
    if !v.is_empty() {
        r.write_used_event();
    }
    v
}

#[test]
fn need_event_matches_spec() {
    // Device asked for a kick when idx passes 5; we moved 4 -> 6.
    assert!(need_event(5, 6, 4));
    // Moved 6 -> 7 after that: event 5 already passed, no kick.
    assert!(!need_event(5, 7, 6));
    // Wrap-around.
    assert!(need_event(0xffff, 1, 0xfffe));
    assert!(!need_event(3, 3, 3));
}

#[test]
fn chains_take_and_return_descriptors() {
    let (_mem, mut r, m) = ring(true);
    let mut q = device(&r, &m, true);
    let h = r
        .add_chain(
            &[(0x2000, 12, 1), (0x3000, 100, 2)],
            &[],
            Owner::Buf(0x2000, 112),
        )
        .unwrap();
    assert_eq!(r.free_descs(), 6);
    assert!(matches!(
        r.add_chain(&[(0, 1, 0); 7], &[], Owner::None),
        Err(Error::RingFull)
    ));
    r.publish().unwrap();
    assert_eq!(r.in_flight(), 1);
    // The device sees exactly that chain: a readable and a writable descriptor.
    let c = q.pop_descriptor_chain(&m).expect("chain");
    assert_eq!(c.head_index(), h);
    let d: Vec<(u64, u32, bool)> = c
        .clone()
        .map(|d| (d.addr().0, d.len(), d.is_write_only()))
        .collect();
    assert_eq!(d, [(0x2000, 12, false), (0x3000, 100, true)]);
    q.add_used(&m, h, 77).unwrap();
    assert_eq!(harvest(&mut r), vec![(u32::from(h), 77)]);
    assert_eq!(r.release(u32::from(h)), Some(Owner::Buf(0x2000, 112)));
    assert_eq!(r.release(u32::from(h)), None, "returned twice");
    assert_eq!(r.release(999), None, "not a head");
    assert_eq!(r.free_descs(), 8);
    assert_eq!(r.in_flight(), 0);
}

#[test]
fn kicks_follow_avail_event() {
    let (_mem, mut r, m) = ring(true);
    let mut q = device(&r, &m, true);
    // The device wants a kick for the first entry (avail_event = its next_avail, 0).
    assert!(!q.enable_notification(&m).unwrap());
    r.add_one(0x2000, 10, 0, Owner::None).unwrap();
    assert!(r.publish().unwrap());
    // A second one before the device looked: no kick (it has not asked again).
    r.add_one(0x2000, 10, 0, Owner::None).unwrap();
    assert!(!r.publish().unwrap());
    // The device consumes both and asks for a kick at its new position.
    device_returns(&mut q, &m, 0);
    device_returns(&mut q, &m, 0);
    assert!(!q.enable_notification(&m).unwrap());
    r.add_one(0x2000, 10, 0, Owner::None).unwrap();
    assert!(r.publish().unwrap());
    // A publish with nothing new never kicks.
    assert!(!r.publish().unwrap());
    assert_eq!(r.kicks, 2);
    assert_eq!(r.kick.read().unwrap(), 2);
}

#[test]
fn kicks_follow_no_notify_flag() {
    let (_mem, mut r, m) = ring(false);
    let mut q = device(&r, &m, false);
    q.disable_notification(&m).unwrap();
    r.add_one(0x2000, 10, 0, Owner::None).unwrap();
    assert!(!r.publish().unwrap());
    assert!(q.enable_notification(&m).unwrap(), "an entry is pending");
    r.add_one(0x2000, 10, 0, Owner::None).unwrap();
    assert!(r.publish().unwrap());
    assert_eq!(r.kicks, 1);
    assert_eq!(r.kick.read().unwrap(), 1);
}

#[test]
fn used_event_asks_for_the_next_entry_and_suppression_for_none() {
    let (_mem, mut r, m) = ring(true);
    let mut q = device(&r, &m, true);
    for _ in 0..5 {
        r.add_one(0x2000, 10, 2, Owner::None).unwrap();
    }
    r.publish().unwrap();
    // Interrupts on: after the driver caught up, the next used entry is signalled.
    device_returns(&mut q, &m, 1);
    assert!(q.needs_notification(&m).unwrap());
    assert_eq!(harvest(&mut r).len(), 1);
    device_returns(&mut q, &m, 1);
    assert!(q.needs_notification(&m).unwrap());
    // Interrupts off: nothing is signalled, however far the device gets.
    r.set_suppress(true);
    device_returns(&mut q, &m, 1);
    assert!(!q.needs_notification(&m).unwrap());
    assert_eq!(harvest(&mut r).len(), 2);
    device_returns(&mut q, &m, 1);
    assert!(!q.needs_notification(&m).unwrap());
    // Before sleeping the driver re-arms: entries already there are reported instead.
    assert!(r.arm());
    assert_eq!(harvest(&mut r).len(), 1);
    assert!(!r.arm());
    // Polling mode asks for one notification after 1 more entry.
    assert!(!r.arm_after(1));
    device_returns(&mut q, &m, 1);
    assert!(q.needs_notification(&m).unwrap());
}

/// The device published entries and, before it checks `used_event`, the driver (interrupts
/// off) consumes them and writes `used_event` again: the device must still not signal. A
/// `used_event` "just behind the driver" lands in the window the device is about to check.
#[test]
fn interrupts_off_stay_off_when_the_driver_consumes_before_the_device_checks() {
    let (_mem, mut r, m) = ring(true);
    let mut q = device(&r, &m, true);
    r.set_suppress(true);
    for round in 0..3 {
        for _ in 0..4 {
            r.add_one(0x2000, 10, 0, Owner::None).unwrap();
        }
        r.publish().unwrap();
        for _ in 0..4 {
            device_returns(&mut q, &m, 0);
        }
        for (id, _) in harvest(&mut r) {
            r.release(id).expect("in flight");
        }
        assert!(!q.needs_notification(&m).unwrap(), "round {round}");
    }
}

#[test]
fn interrupt_flag_without_event_idx() {
    let (_mem, mut r, m) = ring(false);
    let avail = r.avail;
    let flags = || m.read_obj::<u16>(GuestAddress(avail)).unwrap();
    r.set_suppress(true);
    assert_eq!(flags(), VRING_AVAIL_F_NO_INTERRUPT as u16);
    assert!(!r.arm_after(4));
    assert_eq!(flags(), 0, "armed: the next entry interrupts");
    r.write_used_event();
    assert_eq!(flags(), VRING_AVAIL_F_NO_INTERRUPT as u16);
    r.set_suppress(false);
    assert_eq!(flags(), 0);
}

#[test]
fn raw_next_fields() {
    let (_mem, mut r, m) = ring(false);
    let table = r.desc;
    let desc =
        |i: u16| -> Descriptor { m.read_obj(GuestAddress(table + 16 * u64::from(i))).unwrap() };
    let h = r
        .add_chain(
            &[(0x2000, 1, 1), (0x3000, 1, 1)],
            &[None, Some(NextSlot::Chain(0))],
            Owner::None,
        )
        .unwrap();
    let d1 = desc(desc(h).next());
    assert_eq!(d1.next(), h, "loop back to the head");
    let h2 = r
        .add_chain(&[(0x2000, 1, 1)], &[Some(NextSlot::Raw(999))], Owner::None)
        .unwrap();
    assert_eq!(desc(h2).next(), 999);
    // Whatever the table says, releasing frees exactly the chain's own slots.
    assert_eq!(r.free_descs(), 5);
    r.release(u32::from(h)).unwrap();
    r.release(u32::from(h2)).unwrap();
    assert_eq!(r.free_descs(), 8);
}

#[test]
fn pinned_chains_are_reposted_and_never_freed() {
    let (_mem, mut r, m) = ring(true);
    let mut q = device(&r, &m, true);
    let h = r.pin(&[(0x2000, 60, 0)], &[]).unwrap();
    for _ in 0..3 {
        r.push_avail(h);
    }
    r.publish().unwrap();
    for _ in 0..3 {
        assert_eq!(device_returns(&mut q, &m, 0), h);
    }
    for (id, _) in harvest(&mut r) {
        assert_eq!(r.release(id), Some(Owner::None));
    }
    assert_eq!(r.free_descs(), 7);
    assert_eq!(r.in_flight(), 0);
    assert_eq!(r.device_used_idx(), 3);
}
