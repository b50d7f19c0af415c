use super::*;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{FileOffset, MmapRegion};

fn memfd(len: u64, sealing: bool) -> File {
    let flags = libc::MFD_CLOEXEC | if sealing { libc::MFD_ALLOW_SEALING } else { 0 };
    // SAFETY: a valid NUL-terminated name; memfd_create has no other inputs.
    let fd = unsafe { libc::memfd_create(c"pvnet-memguard-test".as_ptr(), flags) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: `fd` was just created and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).expect("set_len");
    f
}

fn map(f: &File, len: usize) -> Arc<MmapRegion> {
    let fo = FileOffset::new(f.try_clone().expect("dup"), 0);
    Arc::new(MmapRegion::from_file(fo, len).expect("mmap"))
}

fn life(m: &Arc<MmapRegion>) -> Weak<dyn Any + Send + Sync> {
    let a: Arc<dyn Any + Send + Sync> = m.clone();
    Arc::downgrade(&a)
}

/// Reads one byte of guest memory the way the data path does (a volatile access).
fn touch(m: &MmapRegion, off: usize) -> u8 {
    assert!(off < m.size());
    // SAFETY: `off` is inside the mapping, which `m` keeps alive.
    unsafe { std::ptr::read_volatile(m.as_ptr().add(off)) }
}

#[test]
fn region_larger_than_its_file_is_refused() {
    let f = memfd(4096, false);
    match check_region(&f, 0, 1 << 20) {
        Err(MemGuardError::FileTooSmall { size: 4096, .. }) => {}
        r => panic!("expected FileTooSmall, got {r:?}"),
    }
    // The offset counts too, and must not overflow.
    let f = memfd(1 << 20, false);
    assert!(check_region(&f, 0, 1 << 20).is_ok());
    assert!(matches!(
        check_region(&f, 4096, 1 << 20),
        Err(MemGuardError::FileTooSmall { .. })
    ));
    assert!(check_region(&f, u64::MAX, 2).is_err());
    // Not a regular file.
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
    // SAFETY: a dup of a descriptor we own, owned by the new File only.
    let sock = unsafe { File::from_raw_fd(libc::dup(std::os::fd::AsRawFd::as_raw_fd(&a))) };
    assert!(matches!(
        check_region(&sock, 0, 4096),
        Err(MemGuardError::NotRegularFile(_))
    ));
}

#[test]
fn sealable_files_are_sealed_against_shrinking() {
    let f = memfd(1 << 16, true);
    let r = check_region(&f, 0, 1 << 16).expect("ok");
    assert!(r.sealed);
    assert_eq!(r.gran, 4096);
    let e = f.set_len(4096).expect_err("shrinking a sealed file fails");
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    // Growing is still allowed (only SHRINK is sealed).
    f.set_len(1 << 17).expect("grow");
    // Without MFD_ALLOW_SEALING: accepted, not sealed.
    let f = memfd(1 << 16, false);
    assert!(!check_region(&f, 0, 1 << 16).expect("ok").sealed);
}

#[test]
fn truncation_under_a_guarded_mapping_poisons_its_owner() {
    let g = MemGuard::new();
    let other = MemGuard::new();
    let called = Arc::new(AtomicUsize::new(0));
    let c = called.clone();
    g.on_fault(move || {
        c.fetch_add(1, Ordering::SeqCst);
    });
    let f = memfd(4 * 4096, false);
    let m = map(&f, 4 * 4096);
    g.register(m.as_ptr() as usize, m.size(), 4096, life(&m))
        .expect("register");
    f.write_all_at_start(&[7u8; 4]);
    assert_eq!(touch(&m, 1), 7);
    assert!(!g.poisoned());
    f.set_len(4096).expect("truncate");
    // The first page is still backed by the file; the third is not.
    assert_eq!(touch(&m, 1), 7);
    assert_eq!(touch(&m, 2 * 4096 + 5), 0, "zero page after the fault");
    assert!(g.poisoned());
    assert_eq!(g.faults(), 1);
    assert!(!other.poisoned(), "another owner is not affected");
    // Writing to the replaced page works and faults no more.
    // SAFETY: inside the mapping `m` keeps alive.
    unsafe { std::ptr::write_volatile(m.as_ptr().add(2 * 4096), 1u8) };
    assert_eq!(g.faults(), 1);
    let t0 = Instant::now();
    while called.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "callback never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A second fault (another page) does not call back again until cleared.
    assert_eq!(touch(&m, 3 * 4096), 0);
    assert_eq!(g.faults(), 2);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(called.load(Ordering::SeqCst), 1);
    g.clear();
    assert!(!g.poisoned());
    g.release_all();
    assert_eq!(registry::registered(g.id.unwrap()), 0);
}

#[test]
fn dead_and_overlapped_ranges_are_swept() {
    let g = MemGuard::new();
    let id = g.id.unwrap();
    let f = memfd(4096, false);
    let m = map(&f, 4096);
    g.register(m.as_ptr() as usize, 4096, 4096, life(&m))
        .unwrap();
    assert_eq!(registry::registered(id), 1);
    drop(m);
    // The next registration sweeps the dead entry.
    let m2 = map(&f, 4096);
    g.register(m2.as_ptr() as usize, 4096, 4096, life(&m2))
        .unwrap();
    assert_eq!(registry::registered(id), 1);
    // A range overlapping a registered one replaces it (the kernel reused the addresses).
    let h = MemGuard::new();
    h.register(m2.as_ptr() as usize, 4096, 4096, life(&m2))
        .unwrap();
    assert_eq!(registry::registered(id), 0);
    assert_eq!(registry::registered(h.id.unwrap()), 1);
    drop(h);
    assert_eq!(
        registry::find(m2.as_ptr() as usize),
        None,
        "released on drop"
    );
}

trait WriteStart {
    fn write_all_at_start(&self, b: &[u8]);
}

impl WriteStart for File {
    fn write_all_at_start(&self, b: &[u8]) {
        use std::os::unix::fs::FileExt;
        self.write_all_at(b, 0).expect("write");
    }
}

/// In the child process of the test below: touch memory beyond its file in one of three
/// ways the handler must not swallow.
fn child(what: &str) -> ! {
    let g = MemGuard::new();
    match what {
        "unregistered" => {
            let f = memfd(2 * 4096, false);
            let m = map(&f, 2 * 4096);
            f.set_len(0).unwrap();
            touch(&m, 4096);
        }
        "released" => {
            let f = memfd(2 * 4096, false);
            let m = map(&f, 2 * 4096);
            g.register(m.as_ptr() as usize, m.size(), 4096, life(&m))
                .unwrap();
            g.release_all();
            f.set_len(0).unwrap();
            touch(&m, 4096);
        }
        "kill" => {
            // SAFETY: raising a signal at ourselves.
            unsafe { libc::raise(libc::SIGBUS) };
        }
        _ => {}
    }
    // Reaching this line means the fault was swallowed.
    std::process::exit(0);
}

/// A fault outside every guarded range still kills the process with SIGBUS: in a guest
/// mapping never registered, in one whose registration was released, and a SIGBUS sent
/// with raise(3). The test runs itself as the child process for each case.
#[test]
fn faults_outside_guest_memory_still_crash() {
    const VAR: &str = "PVNET_MEMGUARD_CHILD";
    if let Ok(what) = std::env::var(VAR) {
        child(&what);
    }
    let exe = std::env::current_exe().expect("exe");
    for what in ["unregistered", "released", "kill"] {
        let st = std::process::Command::new(&exe)
            .args([
                "--exact",
                "memguard::tests::faults_outside_guest_memory_still_crash",
                "--nocapture",
            ])
            .env(VAR, what)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("spawn");
        assert_eq!(st.signal(), Some(libc::SIGBUS), "{what}: {st:?}");
    }
}
