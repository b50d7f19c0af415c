//! The listening sockets: created with a chosen mode and group, never stealing a path from a
//! live listener, never deleting what is not a socket.
//!
//! A vhost-user frontend hands its guest's whole memory to whoever answers on the socket
//! path, so the path is a security boundary: a local user who can create it while pvnet is
//! down receives a reconnecting QEMU's memory. Creating a port's socket therefore goes:
//!
//! 1. **Lock** `PATH.lock` (created `0600` when missing, `flock(LOCK_EX | LOCK_NB)`, held for
//!    the life of the port, checked to still be the file at that path after locking). Two
//!    pvnet processes, or two ports of one process, never work on the same path at once; a
//!    second one fails at once with a clear error. A lock file that was already there
//!    (another program's, or one a crashed pvnet left) is used but never removed; one pvnet
//!    created is removed when the port goes, and when its socket could not be created.
//! 2. **Look** at `PATH` (`lstat`): absent is fine; a socket that refuses connections is a
//!    stale one (its server died); a socket that accepts (or whose backlog is full) belongs
//!    to a live server — another pvnet, or someone else — and is left alone with an error;
//!    anything that is not a socket is left alone with an error.
//! 3. **Bind** a new socket to `.NAME.tmp` in the same directory (a stale one of those, left
//!    by a crash, is ours under the lock and removed if it is a socket), `chown` it to the
//!    requested group and `chmod` it to the requested mode, and only then `listen`: before
//!    `listen` nobody can connect, so there is no moment where the socket is reachable with
//!    the wrong owner or mode.
//! 4. **Look again** at `PATH` as in 2, then **rename** the new socket over it. The rename
//!    replaces a stale socket atomically: a reconnecting frontend finds either the old dead
//!    socket (and retries) or the new one, never a missing or half-set-up path.
//!
//! Why a lock file and a rename rather than unlink-then-bind: between an unlink and a bind
//! anybody with write access to the directory may create the path, and two starting pvnet
//! processes can each remove the other's fresh socket. The lock excludes other pvnet
//! processes; what remains is a non-pvnet process creating something at `PATH` between step 4's
//! look and the rename, which needs write access to the directory (none in `/run/pvnet`
//! laid out as `docs/security.md` describes; in a sticky directory such as `/tmp` the
//! rename cannot replace another user's file at all).
//!
//! On shutdown the socket is removed only while `PATH` is still the socket this port created
//! (same device and inode), then the lock file if pvnet created it, while still holding its
//! lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default mode of the sockets pvnet creates: only its own user may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Errors creating a port's socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{0}: a process is listening on it (another pvnet?); not replaced")]
    Live(String),
    #[error("{0}: exists and is not a socket; not removed")]
    NotSocket(String),
    #[error("{0}: in use by another pvnet process or port (lock {1} is held)")]
    Locked(String, String),
    #[error("{0}: path too long for a Unix socket (with room for a temporary name)")]
    TooLong(String),
    #[error("{path}: {what}: {err}")]
    Io {
        path: String,
        what: &'static str,
        err: io::Error,
    },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |err| SocketError::Io {
        path: path.display().to_string(),
        what,
        err,
    }
}

/// `dir/name` with `dir` resolved (symlinks, `.`, `..`, repeated slashes); the last
/// component is kept as written (the socket itself does not need to exist). Two spellings
/// of one socket path give the same result.
pub fn canonical(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "socket path has no file name")
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok(std::fs::canonicalize(dir)?.join(name))
}

/// What is at a socket path.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Nothing,
    Stale,
    Live,
    NotSocket,
}

fn probe(path: &Path) -> Result<Found, SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(io_err(path, "cannot inspect")(e)),
    };
    if !meta.file_type().is_socket() {
        return Ok(Found::NotSocket);
    }
    match connect(path, Duration::ZERO) {
        Ok(_) => Ok(Found::Live),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(Found::Stale),
        // A full backlog: somebody listens (and may never accept: not waited for).
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Found::Live),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Nothing),
        Err(e) => Err(io_err(path, "cannot probe the existing socket")(e)),
    }
}

fn check_free(path: &Path) -> Result<(), SocketError> {
    let shown = || path.display().to_string();
    match probe(path)? {
        Found::Nothing | Found::Stale => Ok(()),
        Found::Live => Err(SocketError::Live(shown())),
        Found::NotSocket => Err(SocketError::NotSocket(shown())),
    }
}

/// `PATH` + `suffix` in the same directory, `.` prefixed when `hidden`.
fn sibling(path: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let mut name = std::ffi::OsString::from(prefix);
    name.push(path.file_name().unwrap_or_default());
    name.push(suffix);
    path.with_file_name(name)
}

/// A held lock on `PATH.lock`: the `flock` is the lock, released when this is dropped. The
/// file is removed then (still under the lock, and only while the path is still that file)
/// when this process created it; a lock file that was there before (another program's, or
/// one a crashed pvnet left) is used and left in place.
#[derive(Debug)]
struct Lock {
    file: File,
    path: PathBuf,
    created: bool,
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        if let (Ok(m), Ok(ours)) = (std::fs::symlink_metadata(&self.path), self.file.metadata()) {
            if m.dev() == ours.dev() && m.ino() == ours.ino() {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Opens `path` for locking: a new file (`create`), or the existing one.
fn open_lock_file(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens and locks `PATH.lock` (creating it when missing), retrying when the file was
/// removed or replaced while we waited.
fn lock(path: &Path) -> Result<Lock, SocketError> {
    let lock_path = sibling(path, "", ".lock");
    for _ in 0..8 {
        let (file, created) = match open_lock_file(&lock_path, true) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                match open_lock_file(&lock_path, false) {
                    Ok(f) => (f, false),
                    // Removed in between by its previous holder.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&lock_path, "cannot open lock file")(e)),
                }
            }
            Err(e) => return Err(io_err(&lock_path, "cannot create lock file")(e)),
        };
        // Not removed on drop until it is locked: a file we created may already be locked
        // by another process that opened it in between, and is then that process's lock.
        let mut lock = Lock {
            file,
            path: lock_path.clone(),
            created: false,
        };
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(SocketError::Locked(
                    path.display().to_string(),
                    lock_path.display().to_string(),
                ));
            }
            return Err(io_err(&lock_path, "cannot lock")(e));
        }
        lock.created = created;
        // The previous holder may have removed the file between our open and our lock.
        let ours = lock
            .file
            .metadata()
            .map_err(io_err(&lock_path, "cannot stat"))?;
        match std::fs::symlink_metadata(&lock_path) {
            Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => return Ok(lock),
            _ => continue,
        }
    }
    Err(SocketError::Locked(
        path.display().to_string(),
        lock_path.display().to_string(),
    ))
}

fn sockaddr(path: &Path) -> Option<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return None;
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Some((addr, len as libc::socklen_t))
}

/// A new Unix stream socket (close-on-exec, and `flags`: `SOCK_NONBLOCK` or 0).
fn unix_socket(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Connects to the Unix stream socket at `path`, waiting at most `wait` (zero: not at all)
/// while the listener's backlog is full; past that it fails with `WouldBlock` (`EAGAIN`). A
/// plain blocking connect to such a listener sleeps until the listener accepts, which a hung
/// server never does. The stream returned is blocking, without timeouts.
pub fn connect(path: &Path, wait: Duration) -> io::Result<UnixStream> {
    let (addr, len) = sockaddr(path).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "path too long for a Unix socket",
        )
    })?;
    let nonblock = if wait.is_zero() {
        libc::SOCK_NONBLOCK
    } else {
        0
    };
    let sock = UnixStream::from(unix_socket(nonblock)?);
    if !wait.is_zero() {
        // On Linux SO_SNDTIMEO bounds a blocking connect's wait for room in the backlog.
        sock.set_write_timeout(Some(wait))?;
    }
    // SAFETY: `addr` is a valid sockaddr_un of which `len` bytes are initialised; the fd is
    // open for the whole call.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the listener does not accept connections (its backlog is full)",
            ));
        }
        return Err(e);
    }
    if wait.is_zero() {
        sock.set_nonblocking(false)?;
    } else {
        sock.set_write_timeout(None)?;
    }
    Ok(sock)
}

/// A bound, not yet listening Unix stream socket at `path`.
fn bind_only(path: &Path) -> Result<OwnedFd, SocketError> {
    let (addr, len) =
        sockaddr(path).ok_or_else(|| SocketError::TooLong(path.display().to_string()))?;
    let fd = unix_socket(0).map_err(io_err(path, "cannot create socket"))?;
    // SAFETY: `addr` is a valid sockaddr_un of which `len` bytes are initialised.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r != 0 {
        return Err(io_err(path, "cannot bind")(io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Wakes, for good, whoever waits in `accept` on a listener, without going through its path
/// (connecting to the path fails once the file was removed or renamed, and the accept then
/// waits forever): `shutdown(SHUT_RD)` of the listening socket, through a duplicate of its
/// fd, makes a blocked `accept` fail at once (`EINVAL`), and every later one, and refuses
/// new connections.
#[derive(Debug)]
pub struct AcceptWaker(OwnedFd);

impl AcceptWaker {
    /// A waker of `listener` (holds a duplicate of its fd).
    pub fn new(listener: &UnixListener) -> io::Result<AcceptWaker> {
        Ok(AcceptWaker(listener.as_fd().try_clone_to_owned()?))
    }

    /// Wakes the accepting thread; the listener accepts nothing more.
    pub fn wake(&self) {
        // SAFETY: shutdown(2) on the fd this waker owns, open for the whole call.
        if unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_RD) } != 0 {
            log::warn!(
                "cannot wake a listener's accept: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// A port's socket on disk: its lock, and the identity of the socket file it created.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    lock: Option<Lock>,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket (only while the path is still the one this port created) and the
    /// lock file (only when pvnet created it), then releases the lock. Idempotent.
    pub fn remove(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
        drop(self.lock.take());
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Creates the listening socket of one port at `path` with `mode` and, when given, group
/// `gid` (see the module documentation for the steps and why).
pub fn bind(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<(UnixListener, SocketFile), SocketError> {
    let lock = lock(path)?;
    check_free(path)?;
    let tmp = sibling(path, ".", ".tmp");
    match probe(&tmp)? {
        Found::Nothing => {}
        Found::Stale => {
            std::fs::remove_file(&tmp).map_err(io_err(&tmp, "cannot remove leftover"))?
        }
        Found::Live => return Err(SocketError::Live(tmp.display().to_string())),
        Found::NotSocket => return Err(SocketError::NotSocket(tmp.display().to_string())),
    }
    let fd = bind_only(&tmp)?;
    let cleanup = |e: SocketError| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    if let Some(g) = gid {
        std::os::unix::fs::chown(&tmp, None, Some(g))
            .map_err(io_err(path, "cannot set the socket's group"))
            .map_err(cleanup)?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(path, "cannot set the socket's mode"))
        .map_err(cleanup)?;
    let meta = std::fs::symlink_metadata(&tmp)
        .map_err(io_err(&tmp, "cannot stat"))
        .map_err(cleanup)?;
    // SAFETY: listen(2) on a bound socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
        return Err(cleanup(io_err(path, "cannot listen")(
            io::Error::last_os_error(),
        )));
    }
    check_free(path).map_err(cleanup)?;
    std::fs::rename(&tmp, path)
        .map_err(io_err(path, "cannot move the new socket into place"))
        .map_err(cleanup)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        lock: Some(lock),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok((UnixListener::from(fd), file))
}

#[cfg(test)]
mod tests;
