//! Multi-port, multi-queue traffic through real vhost-user sockets.

use pvnet_locks::{RwLockKind, SpinLockKind};
use pvnet_testkit::harness::{run, server, Run};

fn total_drops(s: &pvnet_backend::Server) -> u64 {
    let sw = s.switch();
    (0..sw.ports.len())
        .flat_map(|p| (0..usize::from(sw.cfg.queue_pairs)).map(move |q| (p, q)))
        .map(|(p, q)| sw.ports[p].queue_snapshot(q).total_drops())
        .sum()
}

#[test]
fn two_ports_16_pairs_10k_frames() {
    let s = server("two", 2, 16, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let r = Run::new(2, 16, 5000);
    let seen = run(&s, &r);
    for g in &seen {
        assert_eq!(g.received, 5000);
        assert!(
            g.merged > 0 && g.max_buffers > 16,
            "mergeable RX spanning buffers: {g:?}"
        );
    }
    assert_eq!(total_drops(&s), 0);
    let sw = s.switch();
    // Traffic was spread over several RX queues.
    let used_queues = (0..16)
        .filter(|&q| sw.ports[1].queue_snapshot(q).rx_frames > 0)
        .count();
    assert!(
        used_queues >= 8,
        "flows hashed onto {used_queues} queues only"
    );
    s.shutdown();
}

/// `--rx-steer`: with `queue`, frames sent on queue pair 0 all arrive on the receiver's
/// queue 0 (each flow in order); with `hash`, the same flows are spread over its queues.
#[test]
fn rx_steering_by_queue_and_by_hash() {
    use pvnet_backend::config::RxSteer;
    for steer in [RxSteer::Queue, RxSteer::Hash] {
        let s = pvnet_testkit::harness::server_with(
            &format!("steer-{steer}"),
            2,
            8,
            RwLockKind::Percpu,
            SpinLockKind::Pvqspin,
            |c| c.rx_steer = steer,
        );
        let mut r = Run::new(2, 8, 2000);
        r.send_pairs = 1;
        let seen = run(&s, &r);
        for g in &seen {
            assert_eq!(g.received, 2000, "{steer}");
        }
        assert_eq!(total_drops(&s), 0);
        let sw = s.switch();
        for p in 0..2 {
            let per_queue: Vec<u64> = (0..8)
                .map(|q| sw.ports[p].queue_snapshot(q).rx_frames)
                .collect();
            let used = per_queue.iter().filter(|&&n| n > 0).count();
            match steer {
                RxSteer::Queue => assert_eq!(used, 1, "port {p}: {per_queue:?}"),
                RxSteer::Hash => assert!(used >= 4, "port {p}, {steer}: {per_queue:?}"),
            }
            if steer == RxSteer::Queue {
                assert!(per_queue[0] >= 2000, "port {p}: {per_queue:?}");
            }
        }
        s.shutdown();
    }
}

#[test]
fn three_ports_flood_learn_and_exchange() {
    let s = server("three", 3, 16, RwLockKind::Percpu, SpinLockKind::Pvqspin);
    let r = Run::new(3, 16, 3400);
    let seen = run(&s, &r);
    let total: u64 = seen.iter().map(|g| g.received).sum();
    assert_eq!(total, 3 * 3400);
    for g in &seen {
        assert_eq!(
            g.hellos, 2,
            "each broadcast reaches both other ports exactly once"
        );
    }
    assert_eq!(total_drops(&s), 0);
    s.shutdown();
}

/// The same traffic in every thread layout: one worker thread per queue pair (`--workers
/// 16`: 32 threads on this machine's CPUs), one thread serving every pair of a port
/// (`--workers 1`), and switch-wide polling threads (`--pmd-threads`): one serving all 32
/// pairs of both ports, and three (the two ports' pairs spread unevenly).
#[test]
fn two_ports_16_pairs_every_thread_layout() {
    for (workers, pmd_threads) in [(16, 0), (1, 0), (0, 1), (0, 3)] {
        let layout = format!("workers {workers}, pmd threads {pmd_threads}");
        let d = pvnet_testkit::harness::tmpdir(&format!("layout{workers}-{pmd_threads}"));
        let s = pvnet_backend::Server::start(pvnet_backend::Config {
            sockets: (0..2).map(|i| d.join(format!("p{i}.sock"))).collect(),
            queue_pairs: 16,
            workers,
            pmd_threads,
            backpressure_bound: std::time::Duration::from_secs(5),
            ..pvnet_backend::Config::default()
        })
        .expect("server");
        let seen = run(&s, &Run::new(2, 16, 3000));
        for g in &seen {
            assert_eq!(g.received, 3000, "{layout}");
        }
        assert_eq!(total_drops(&s), 0, "{layout}");
        // Busy time is counted in every layout (on the polling threads shared out by the
        // chains each worker took).
        let sw = s.switch();
        let busy: u64 = (0..2)
            .flat_map(|p| (0..16).map(move |q| (p, q)))
            .map(|(p, q)| sw.ports[p].queue_snapshot(q).busy_ns)
            .sum();
        assert!(busy > 0, "{layout}: no busy time counted");
        s.shutdown();
    }
}

/// `--pmd-cpus`: each polling thread runs pinned to its CPU (read back from /proc), and
/// traffic flows through it.
#[test]
fn pmd_threads_pinned_to_their_cpus() {
    let cpus = pvnet_backend::cpus::allowed().expect("affinity");
    if cpus.len() < 2 {
        eprintln!("SKIP: one CPU allowed: a pinned thread looks like any other");
        return;
    }
    let cpu = *cpus.last().expect("a CPU");
    let d = pvnet_testkit::harness::tmpdir("pmdcpus");
    let s = pvnet_backend::Server::start(pvnet_backend::Config {
        sockets: (0..2).map(|i| d.join(format!("p{i}.sock"))).collect(),
        queue_pairs: 2,
        pmd_cpus: vec![cpu],
        ..pvnet_backend::Config::default()
    })
    .expect("server");
    // The thread names itself once it runs: look until it has (for 5 s).
    let pmd_cpus = || -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .filter_map(|t| {
                let t = t.ok()?.path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                (comm.trim() == "pvnet-pmd0").then(|| {
                    let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                        .unwrap_or("")
                        .trim()
                        .to_string()
                })
            })
            .collect()
    };
    let t0 = std::time::Instant::now();
    let mut pmd = pmd_cpus();
    while !pmd.contains(&cpu.to_string()) && t0.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(1));
        pmd = pmd_cpus();
    }
    // (Another test of this binary may run a polling thread of the same name, unpinned.)
    assert!(
        pmd.contains(&cpu.to_string()),
        "pvnet-pmd0's CPUs: {pmd:?}, not {cpu}"
    );
    let seen = run(&s, &Run::new(2, 2, 500));
    for g in &seen {
        assert_eq!(g.received, 500);
    }
    s.shutdown();
}
