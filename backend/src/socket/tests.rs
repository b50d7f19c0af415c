use super::*;
use pvnet_testkit::harness::{close_listener, full_listener};
use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pvnet-sock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp");
    d
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777
}

fn answers(p: &Path) -> bool {
    UnixStream::connect(p).is_ok()
}

#[test]
fn mode_and_group_applied_before_anyone_can_connect() {
    let d = tmpdir("mode");
    let p = d.join("a.sock");
    // SAFETY: getegid has no preconditions.
    let gid = unsafe { libc::getegid() };
    for mode in [0o600, 0o660, 0o640] {
        let (l, f) = bind(&p, mode, Some(gid)).expect("bind");
        assert_eq!(mode_of(&p), mode, "mode {mode:o}");
        assert_eq!(std::fs::metadata(&p).unwrap().gid(), gid);
        assert!(answers(&p));
        // No temporary name left behind.
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "socket and lock only: {names:?}");
        drop((l, f));
        assert!(!p.exists(), "removed on drop");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn stale_socket_replaced_live_socket_kept() {
    let d = tmpdir("stale");
    let p = d.join("a.sock");
    // A stale socket: its listener is gone.
    close_listener(UnixListener::bind(&p).unwrap());
    assert!(p.exists() && !answers(&p));
    let (l, mut f) = bind(&p, 0o600, None).expect("stale socket replaced");
    assert!(answers(&p));
    // Our own live socket: a second bind fails on the lock.
    assert!(matches!(
        bind(&p, 0o600, None),
        Err(SocketError::Locked(..))
    ));
    f.remove();
    drop(l);
    // Somebody else's live socket (no lock file): left alone.
    let other = UnixListener::bind(&p).unwrap();
    let before = std::fs::symlink_metadata(&p).unwrap().ino();
    match bind(&p, 0o600, None) {
        Err(SocketError::Live(s)) => assert!(s.contains("a.sock")),
        r => panic!("expected Live, got {r:?}"),
    }
    assert_eq!(std::fs::symlink_metadata(&p).unwrap().ino(), before);
    assert!(answers(&p), "the other listener still reachable");
    drop(other);
    let _ = std::fs::remove_dir_all(&d);
}

/// A listener whose backlog is full is live: `bind` says so at once instead of waiting (a
/// blocking connect to it sleeps until it accepts, which a hung server never does).
#[test]
fn full_backlog_is_live_and_does_not_block() {
    let d = tmpdir("backlog");
    let p = d.join("a.sock");
    let (listener, _queued) = full_listener(&p);
    let (tx, rx) = mpsc::channel();
    let q = p.clone();
    std::thread::spawn(move || {
        let _ = tx.send(bind(&q, 0o600, None).map(|_| ()));
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Err(SocketError::Live(s))) => assert!(s.contains("a.sock"), "{s}"),
        Ok(r) => panic!("expected Live, got {r:?}"),
        Err(_) => panic!("bind blocked on a listener with a full backlog"),
    }
    assert!(p.exists(), "the other listener's socket was kept");
    drop(listener);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn non_sockets_never_removed() {
    let d = tmpdir("file");
    let p = d.join("a.sock");
    std::fs::write(&p, b"keep").unwrap();
    assert!(matches!(
        bind(&p, 0o600, None),
        Err(SocketError::NotSocket(_))
    ));
    let mut s = String::new();
    File::open(&p).unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "keep");
    // A symlink (even to a stale socket) is not a socket either.
    std::fs::remove_file(&p).unwrap();
    let target = d.join("target.sock");
    close_listener(UnixListener::bind(&target).unwrap());
    std::os::unix::fs::symlink(&target, &p).unwrap();
    assert!(matches!(
        bind(&p, 0o600, None),
        Err(SocketError::NotSocket(_))
    ));
    assert!(std::fs::symlink_metadata(&p)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(target.exists());
    // A directory at the temporary name is not removed either.
    let q = d.join("b.sock");
    std::fs::create_dir(d.join(".b.sock.tmp")).unwrap();
    assert!(matches!(
        bind(&q, 0o600, None),
        Err(SocketError::NotSocket(_))
    ));
    assert!(d.join(".b.sock.tmp").is_dir());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn remove_spares_a_socket_that_replaced_ours() {
    let d = tmpdir("replaced");
    let p = d.join("a.sock");
    let (l, mut f) = bind(&p, 0o600, None).expect("bind");
    // Somebody moved another socket over ours: shutdown must not delete it.
    let q = d.join("other.sock");
    let other = UnixListener::bind(&q).unwrap();
    std::fs::rename(&q, &p).unwrap();
    f.remove();
    assert!(p.exists() && answers(&p));
    drop((l, other));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn lock_excludes_a_second_binder_and_is_released() {
    let d = tmpdir("lock");
    let p = d.join("a.sock");
    let (_l, f) = bind(&p, 0o600, None).expect("bind");
    let err = bind(&p, 0o600, None).unwrap_err();
    assert!(err.to_string().contains("lock"), "{err}");
    drop(f);
    assert!(!d.join("a.sock.lock").exists(), "lock file removed");
    let (_l2, _f2) = bind(&p, 0o600, None).expect("free again");
    let _ = std::fs::remove_dir_all(&d);
}

/// A lock file pvnet did not create (another program's, or one a crashed pvnet left) is
/// used, never removed.
#[test]
fn a_lock_file_pvnet_did_not_create_is_not_removed() {
    let d = tmpdir("foreign-lock");
    let p = d.join("a.sock");
    let lock = d.join("a.sock.lock");
    std::fs::write(&lock, b"theirs").unwrap();
    let (l, f) = bind(&p, 0o600, None).expect("bind");
    // Still the lock: a second binder is refused.
    assert!(matches!(
        bind(&p, 0o600, None),
        Err(SocketError::Locked(..))
    ));
    drop((l, f));
    assert!(!p.exists(), "our socket removed");
    assert_eq!(std::fs::read(&lock).expect("lock file kept"), b"theirs");
    let _ = std::fs::remove_dir_all(&d);
}

/// A bind that fails after taking the lock leaves no lock file behind.
#[test]
fn failed_binds_leave_no_lock_file() {
    let d = tmpdir("failed-lock");
    let no_lock = |name: &str| {
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".lock"))
            .collect();
        assert!(names.is_empty(), "{name}: lock files left: {names:?}");
    };
    // Somebody else's live socket.
    let p = d.join("live.sock");
    let other = UnixListener::bind(&p).unwrap();
    assert!(matches!(bind(&p, 0o600, None), Err(SocketError::Live(_))));
    no_lock("live socket");
    drop(other);
    // Not a socket.
    let p = d.join("file.sock");
    std::fs::write(&p, b"keep").unwrap();
    assert!(matches!(
        bind(&p, 0o600, None),
        Err(SocketError::NotSocket(_))
    ));
    no_lock("not a socket");
    // Not a socket at the temporary name.
    let p = d.join("tmp.sock");
    std::fs::create_dir(d.join(".tmp.sock.tmp")).unwrap();
    assert!(matches!(
        bind(&p, 0o600, None),
        Err(SocketError::NotSocket(_))
    ));
    no_lock("temporary name taken");
    // Too long for a socket address (not for a file name).
    let p = d.join("x".repeat(110));
    assert!(matches!(
        bind(&p, 0o600, None),
        Err(SocketError::TooLong(_))
    ));
    no_lock("too long");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn too_long_and_canonical() {
    let d = tmpdir("long");
    let long = d.join("x".repeat(120));
    assert!(matches!(
        bind(&long, 0o600, None),
        Err(SocketError::TooLong(_)) | Err(SocketError::Io { .. })
    ));
    let a = canonical(&d.join("a.sock")).unwrap();
    let b = canonical(Path::new(&format!("{}//./a.sock", d.display()))).unwrap();
    assert_eq!(a, b);
    assert!(canonical(Path::new("/")).is_err());
    let _ = std::fs::remove_dir_all(&d);
}
