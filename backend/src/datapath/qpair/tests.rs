use super::*;
use crate::switch::LockSet;
use pvnet_locks::family::{Percpu, StdMutex};
use std::sync::mpsc;
use std::time::Duration;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

/// Queue locks whose waiters sleep in the kernel, so that a test can see a thread wait.
type L = LockSet<Percpu, StdMutex>;

/// An RX vring of 64 entries, enabled and ready (no buffers needed to attach it).
fn ready_vring(mem: &GuestMemoryMmap) -> Vring {
    let v = Vring::new(GuestMemoryAtomic::new(mem.clone()), 256).expect("vring");
    v.set_queue_size(64);
    v.set_queue_info(0x0, 0x1000, 0x2000)
        .expect("queue addresses");
    v.set_queue_ready(true);
    v.set_enabled(true);
    v
}

/// The scheduler state of thread `tid` of this process (`R`, `S`, …).
fn thread_state(tid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .unwrap_or('?')
}

/// An RX event that passed its first look at the connection (still open) and then waits for
/// the queue lock while the connection is torn down (closing set, the ring detached under
/// the lock) must not attach the ring again once it gets the lock: the stale ring would stay
/// in the port's slot for the next connection.
#[test]
fn an_rx_event_racing_a_teardown_does_not_attach_the_ring_again() {
    let sw = Switch::new(Config {
        sockets: vec!["/tmp/pvnet-qpair-race.sock".into()],
        queue_pairs: 1,
        ..Config::default()
    });
    let fabric = Fabric::<L>::new(sw);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).expect("memory");
    fabric.ports[0]
        .grants
        .replace_from_memory(&mem)
        .expect("grants");
    let rx = ready_vring(&mem);
    let closing = AtomicBool::new(false);
    let cx = PortCtx {
        fabric: &fabric,
        port: 0,
        features: 1 << VIRTIO_F_VERSION_1,
        closing: &closing,
    };
    let mut qp = QueuePair::new(0, Arc::new(Waker::new().expect("waker")));
    // Without a teardown the event attaches the ring.
    qp.rx_event(&cx, &rx);
    assert!(
        MutexApi::lock(&fabric.ports[0].rings[0]).is_some(),
        "ring not attached"
    );
    assert!(fabric.detach_rx(0, 0));
    // The teardown holds the queue lock; the event gets past its first look and waits.
    let held = MutexApi::lock(&fabric.ports[0].rings[0]);
    let (tid_tx, tid_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let event = s.spawn(|| {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            qp.rx_event(&cx, &rx);
        });
        let tid = tid_rx.recv().expect("tid");
        let t0 = Instant::now();
        while thread_state(tid) != 'S' {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the event never waited"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        closing.store(true, Ordering::Release);
        drop(held);
        event.join().expect("event");
    });
    assert!(
        MutexApi::lock(&fabric.ports[0].rings[0]).is_none(),
        "the ring was attached again after the teardown"
    );
    assert_eq!(
        fabric.sw.ports[0].enabled_pairs(),
        0,
        "the queue shows enabled after the teardown"
    );
}
