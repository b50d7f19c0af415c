use super::*;
use std::sync::atomic::AtomicU64;
use std::thread::JoinHandle;

/// A stand-in for a connection's worker: finds work while `work_left` lasts.
#[derive(Default)]
struct Fake {
    work_left: AtomicU64,
    /// Chains one working round takes.
    per_round: u64,
    /// Time one working round spins (so that busy time is measurable).
    spin: Duration,
    rounds: AtomicU64,
    retries: AtomicU64,
    arms: AtomicU64,
    busy_ns: AtomicU64,
    deadline: Mutex<Option<Instant>>,
    /// A working round holds a frame back for this long.
    hold: Option<Duration>,
}

impl Fake {
    fn new(work: u64, per_round: u64) -> Arc<Fake> {
        Arc::new(Fake {
            work_left: AtomicU64::new(work),
            per_round,
            ..Fake::default()
        })
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Acquire)
    }
}

impl Member for Fake {
    fn usable(&self) -> bool {
        true
    }

    fn round(&self, _w: usize, _scratch: &mut Burst, retry: bool) -> Round {
        self.rounds.fetch_add(1, Ordering::AcqRel);
        if retry {
            self.retries.fetch_add(1, Ordering::AcqRel);
            // The retry gives the held-back frame its fate: no bound left.
            *self.deadline.lock().expect("deadline") = None;
        }
        let work = self
            .work_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if let (true, Some(h)) = (work, self.hold) {
            *self.deadline.lock().expect("deadline") = Some(Instant::now() + h);
        }
        if work {
            let t0 = Instant::now();
            while t0.elapsed() < self.spin {
                std::hint::spin_loop();
            }
        }
        Round {
            work,
            full: false,
            taken: if work { self.per_round } else { 0 },
        }
    }

    fn arm(&self, _w: usize) -> bool {
        self.arms.fetch_add(1, Ordering::AcqRel);
        false
    }

    fn deadline(&self, _w: usize) -> Option<Instant> {
        *self.deadline.lock().expect("deadline")
    }

    fn add_busy(&self, _w: usize, busy: Duration) {
        self.busy_ns
            .fetch_add(busy.as_nanos() as u64, Ordering::AcqRel);
    }
}

fn start(poll_us: u32) -> (Arc<Pmd>, JoinHandle<()>) {
    let pmd = Arc::new(Pmd::new(0).expect("pmd"));
    let p = pmd.clone();
    (pmd, std::thread::spawn(move || p.run(poll_us)))
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Rounds run while there is work; then the thread arms kicks and sleeps (no rounds without
/// a wake); a wake brings a round that offers held-back frames again.
#[test]
fn works_until_idle_then_sleeps_until_woken() {
    let (pmd, t) = start(0);
    let f = Fake::new(100, 1);
    pmd.attach(1, f.clone(), 0);
    wait_for("work done and kicks armed", || {
        Fake::get(&f.work_left) == 0 && Fake::get(&f.arms) > 0
    });
    let asleep = Fake::get(&f.rounds);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(Fake::get(&f.rounds), asleep, "rounds while asleep");
    let retries = Fake::get(&f.retries);
    f.work_left.store(5, Ordering::Release);
    pmd.waker().wake();
    wait_for("woken", || Fake::get(&f.work_left) == 0);
    assert!(
        Fake::get(&f.retries) > retries,
        "a wake retries held-back frames"
    );
    pmd.stop();
    t.join().expect("join");
}

/// After `detach` returns the thread never runs the member again, and holds no reference
/// to it (a closed connection's device, eventfds and memory go with its last reference).
#[test]
fn detach_returns_once_the_thread_is_done_with_the_member() {
    let (pmd, t) = start(50);
    let f = Fake::new(u64::MAX, 1);
    let g = Fake::new(u64::MAX, 1);
    pmd.attach(1, f.clone(), 0);
    pmd.attach(2, g.clone(), 0);
    assert_eq!(pmd.len(), 2);
    wait_for("running", || Fake::get(&f.rounds) > 10);
    pmd.detach(1);
    let n = Fake::get(&f.rounds);
    let other = Fake::get(&g.rounds);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(Fake::get(&f.rounds), n, "a detached member ran");
    assert!(Fake::get(&g.rounds) > other, "the other member stopped too");
    assert_eq!(Arc::strong_count(&f), 1, "the thread kept a reference");
    assert_eq!(pmd.len(), 1);
    pmd.stop();
    t.join().expect("join");
}

/// A held-back frame's bound ends the sleep without any wake: the thread runs a retry round
/// when it passes (not before), then sleeps for good.
#[test]
fn a_passed_bound_gives_a_retry_round() {
    let (pmd, t) = start(0);
    let f = Arc::new(Fake {
        work_left: AtomicU64::new(1),
        per_round: 1,
        hold: Some(Duration::from_millis(40)),
        ..Fake::default()
    });
    let t0 = Instant::now();
    // attach() wakes the thread: its first round is a retry; the work in it holds a frame
    // back for 40 ms.
    pmd.attach(1, f.clone(), 0);
    wait_for("the first round", || Fake::get(&f.retries) == 1);
    wait_for("the bound's retry round", || Fake::get(&f.retries) == 2);
    assert!(
        t0.elapsed() >= Duration::from_millis(35),
        "retried after {:?}, before the bound",
        t0.elapsed()
    );
    assert!(Fake::get(&f.arms) > 0, "kicks armed before sleeping");
    let rounds = Fake::get(&f.rounds);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        Fake::get(&f.rounds),
        rounds,
        "rounds without a bound or a wake"
    );
    pmd.stop();
    t.join().expect("join");
}

/// The busy time of a phase goes to the members by the chains each took in it.
#[test]
fn busy_time_is_shared_by_chains_taken() {
    let (pmd, t) = start(0);
    let a = Arc::new(Fake {
        work_left: AtomicU64::new(200),
        per_round: 30,
        spin: Duration::from_micros(20),
        ..Fake::default()
    });
    let b = Arc::new(Fake {
        work_left: AtomicU64::new(200),
        per_round: 10,
        spin: Duration::from_micros(20),
        ..Fake::default()
    });
    pmd.attach(1, a.clone(), 0);
    pmd.attach(2, b.clone(), 0);
    wait_for("work done", || {
        Fake::get(&a.work_left) == 0 && Fake::get(&b.work_left) == 0 && Fake::get(&a.arms) > 0
    });
    let (ba, bb) = (Fake::get(&a.busy_ns), Fake::get(&b.busy_ns));
    assert!(bb > 0, "busy time counted: {ba} / {bb}");
    let ratio = ba as f64 / bb as f64;
    assert!((2.5..=3.5).contains(&ratio), "shares {ba} / {bb}");
    // At least the spinning: 400 rounds of 20 µs (CPU time, unless preempted throughout).
    assert!(ba + bb >= 2_000_000, "busy {ba} + {bb} ns");
    pmd.stop();
    t.join().expect("join");
}

/// A count left in the eventfd with the pending flag clear (a wake that set the flag, lost it
/// to the thread's `take`, and only then wrote) is consumed by the sleep: the thread does not
/// spin while idle.
#[test]
fn a_stray_eventfd_count_does_not_keep_the_thread_awake() {
    let (pmd, t) = start(0);
    let f = Fake::new(0, 1);
    pmd.attach(1, f.clone(), 0);
    wait_for("asleep", || Fake::get(&f.arms) > 0);
    std::thread::sleep(Duration::from_millis(5));
    // The eventfd written without the flag (as the losing side of that race leaves it).
    pmd.waker().fd().write(1).expect("eventfd");
    std::thread::sleep(Duration::from_millis(50));
    let rounds = Fake::get(&f.rounds);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(Fake::get(&f.rounds), rounds, "rounds while idle");
    assert!(rounds < 10, "{rounds} rounds for one stray count");
    pmd.stop();
    t.join().expect("join");
}
