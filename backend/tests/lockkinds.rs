//! The same traffic test for every `--grant-lock` kind with a few `--queue-lock` kinds, and
//! every `--queue-lock` kind once.

use pvnet_locks::family::resolve_rw;
use pvnet_locks::{RwLockKind, SpinLockKind};
use pvnet_testkit::harness::{run, server, Run};

fn traffic(tag: &str, gl: RwLockKind, ql: SpinLockKind) {
    let s = server(&format!("{tag}-{gl}-{ql}"), 2, 4, gl, ql);
    let seen = run(&s, &Run::new(2, 4, 300));
    for g in &seen {
        assert_eq!(g.received, 300, "{gl}+{ql}: {g:?}");
    }
    let sw = s.switch();
    for p in 0..2 {
        for q in 0..4 {
            assert_eq!(sw.ports[p].queue_snapshot(q).total_drops(), 0, "{gl}+{ql}");
        }
    }
    // The data path was compiled for the requested kinds (percpu: fenced without membarrier).
    assert_eq!(s.lock_kinds(), (resolve_rw(gl), ql));
    s.shutdown();
}

#[test]
fn every_grant_lock_with_pvqspin_and_qspin() {
    for &gl in RwLockKind::ALL {
        for ql in [SpinLockKind::Pvqspin, SpinLockKind::Qspin] {
            traffic("g", gl, ql);
        }
    }
}

#[test]
fn every_queue_lock_kind() {
    for &ql in SpinLockKind::ALL {
        traffic("q", RwLockKind::Percpu, ql);
    }
}
