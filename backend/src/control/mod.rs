//! The control socket (`--control`): a Unix socket (mode 0600, created like the ports'
//! sockets, see `socket`) on which `pvnet ctl` and other tools send JSON-lines requests
//! ([`proto`]). Each client is served by its own thread, at most [`MAX_CLIENTS`] at once;
//! a request line longer than [`MAX_LINE`] bytes is refused and the client disconnected; a
//! client idle for [`IDLE_TIMEOUT`] or not reading its answers for [`WRITE_TIMEOUT`] is
//! disconnected. The control plane never holds a lock the data path takes: a slow or
//! hostile client delays only itself.

pub mod proto;

use crate::device::lock;
use crate::server::Server;
use crate::socket::{AcceptWaker, SocketError, SocketFile};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest request line accepted, in bytes (newline excluded).
pub const MAX_LINE: usize = 64 * 1024;
/// Most clients served at once; more are answered with an error and disconnected.
pub const MAX_CLIENTS: usize = 8;
/// A client that sends nothing for this long is disconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that does not read its answer for this long is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors starting the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket: {0}")]
    Socket(#[from] SocketError),
    #[error("control socket {0}: {1}")]
    Io(String, std::io::Error),
}

/// Connected clients, so that stopping the control socket can disconnect them.
#[derive(Default)]
struct Clients {
    streams: Mutex<Vec<(u64, UnixStream)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    active: AtomicUsize,
}

/// A running control socket.
pub struct Control {
    path: PathBuf,
    file: SocketFile,
    waker: AcceptWaker,
    stop: Arc<AtomicBool>,
    clients: Arc<Clients>,
    thread: Option<JoinHandle<()>>,
}

impl Control {
    /// Creates the control socket at `path` (mode 0600) and serves `server` on it.
    pub fn start(path: &Path, server: Arc<Server>) -> Result<Control, ControlError> {
        let (listener, file) = crate::socket::bind(path, 0o600, None)?;
        let waker = AcceptWaker::new(&listener)
            .map_err(|e| ControlError::Io(path.display().to_string(), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(Clients::default());
        let (st, cl) = (stop.clone(), clients.clone());
        let thread = std::thread::Builder::new()
            .name("pvnet-control".into())
            .spawn(move || accept_loop(listener, server, st, cl))
            .map_err(|e| ControlError::Io(path.display().to_string(), e))?;
        Ok(Control {
            path: path.to_path_buf(),
            file,
            waker,
            stop,
            clients,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, disconnects the clients (a request being carried out finishes
    /// first), and removes the socket.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Not by connecting to the path: the file may be gone.
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for (_, s) in lock(&self.clients.streams).iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let threads: Vec<_> = lock(&self.clients.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        self.file.remove();
    }
}

fn accept_loop(
    listener: UnixListener,
    server: Arc<Server>,
    stop: Arc<AtomicBool>,
    clients: Arc<Clients>,
) {
    let mut next_id = 0u64;
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        next_id += 1;
        admit(stream, next_id, &server, &clients);
    }
}

/// Serves `stream` in a thread of its own, or refuses it when [`MAX_CLIENTS`] are served.
fn admit(mut stream: UnixStream, id: u64, server: &Arc<Server>, clients: &Arc<Clients>) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    if clients.active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
        clients.active.fetch_sub(1, Ordering::AcqRel);
        let _ = reply(
            &mut stream,
            &proto::Response::err("too many control clients"),
        );
        return;
    }
    let Ok(clone) = stream.try_clone() else {
        clients.active.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    lock(&clients.streams).push((id, clone));
    let (server, cl) = (server.clone(), clients.clone());
    let spawned = std::thread::Builder::new()
        .name("pvnet-ctl-client".into())
        .spawn(move || {
            serve_client(stream, &server);
            lock(&cl.streams).retain(|(i, _)| *i != id);
            cl.active.fetch_sub(1, Ordering::AcqRel);
        });
    match spawned {
        Ok(t) => {
            let mut threads = lock(&clients.threads);
            threads.retain(|t| !t.is_finished());
            threads.push(t);
        }
        Err(_) => {
            lock(&clients.streams).retain(|(i, _)| *i != id);
            clients.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Answers the requests of one client, line by line, until it leaves or misbehaves.
fn serve_client(stream: UnixStream, server: &Server) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // One byte more than allowed tells an oversize line from a full-length one.
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if n > MAX_LINE {
            let msg = format!("request longer than {MAX_LINE} bytes; disconnecting");
            let _ = reply(&mut out, &proto::Response::err(msg));
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let resp = proto::answer(server, &line);
        if reply(&mut out, &resp).is_err() {
            return;
        }
    }
}

fn reply(out: &mut UnixStream, r: &proto::Response) -> std::io::Result<()> {
    let mut s = serde_json::to_string(r).map_err(std::io::Error::other)?;
    s.push('\n');
    out.write_all(s.as_bytes())
}
