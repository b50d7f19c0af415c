//! The control socket (`--control`): a Unix socket (mode 0600, created like the ports'
//! sockets, see `socket`) on which `pvnet ctl` and other tools send JSON-lines requests
//! ([`proto`]). Each client is served by its own thread, at most [`MAX_CLIENTS`] at once;
//! a request line longer than [`MAX_LINE`] bytes is refused and the client disconnected; a
//! client idle for [`IDLE_TIMEOUT`], taking longer than that to send one request line, or not
//! reading its answers for [`WRITE_TIMEOUT`] is disconnected. The control plane never holds a lock the data path takes: a slow or
//! hostile client delays only itself.

pub mod proto;

use crate::device::lock;
use crate::server::Server;
use crate::socket::{AcceptWaker, SocketError, SocketFile};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest request line accepted, in bytes (newline excluded).
pub const MAX_LINE: usize = 64 * 1024;
/// Most clients served at once; more are answered with an error and disconnected.
pub const MAX_CLIENTS: usize = 8;
/// A client that sends nothing for this long, or takes longer than this to send one request
/// line (from its first byte), is disconnected.
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
    /// [`IDLE_TIMEOUT`] (shorter in tests).
    idle: Duration,
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
        Self::start_with(path, server, IDLE_TIMEOUT)
    }

    /// [`Control::start`] with `idle` for [`IDLE_TIMEOUT`].
    fn start_with(
        path: &Path,
        server: Arc<Server>,
        idle: Duration,
    ) -> Result<Control, ControlError> {
        let (listener, file) = crate::socket::bind(path, 0o600, None)?;
        let waker = AcceptWaker::new(&listener)
            .map_err(|e| ControlError::Io(path.display().to_string(), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(Clients {
            idle,
            ..Clients::default()
        });
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
            serve_client(stream, &server, cl.idle);
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

/// What [`read_line`] got.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A request line (without its newline; or the last bytes before the client hung up).
    Complete,
    /// The client hung up (or its connection failed) between requests.
    End,
    /// Nothing came within the idle timeout.
    Idle,
    /// The line did not come whole within the idle timeout of its first byte.
    TooSlow,
    /// More than [`MAX_LINE`] bytes without a newline.
    TooLong,
}

/// Reads the next request line into `line`. Its first byte must come within `idle`, and the
/// whole line within `idle` of its first byte: a deadline for the line, not a timeout for
/// each read, which a client sending a byte now and then would never reach.
fn read_line(reader: &mut BufReader<UnixStream>, line: &mut Vec<u8>, idle: Duration) -> Line {
    line.clear();
    let mut deadline = Instant::now() + idle;
    let mut started = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return if started { Line::TooSlow } else { Line::Idle };
        }
        if reader.get_ref().set_read_timeout(Some(left)).is_err() {
            return Line::End;
        }
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return if started { Line::TooSlow } else { Line::Idle };
            }
            Err(_) => return Line::End,
        };
        if buf.is_empty() {
            return if line.is_empty() {
                Line::End
            } else {
                Line::Complete
            };
        }
        if !started {
            started = true;
            deadline = Instant::now() + idle;
        }
        // One byte more than allowed tells an oversize line from a full-length one.
        let room = MAX_LINE + 1 - line.len();
        if let Some(n) = buf.iter().take(room).position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..n]);
            reader.consume(n + 1);
            return Line::Complete;
        }
        let n = buf.len().min(room);
        line.extend_from_slice(&buf[..n]);
        reader.consume(n);
        if line.len() > MAX_LINE {
            return Line::TooLong;
        }
    }
}

/// Answers the requests of one client, line by line, until it leaves or misbehaves.
fn serve_client(stream: UnixStream, server: &Server, idle: Duration) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        match read_line(&mut reader, &mut line, idle) {
            Line::Complete => {}
            Line::End | Line::Idle => return,
            Line::TooSlow => {
                let msg = format!(
                    "request not sent whole within {} s; disconnecting",
                    idle.as_secs_f32()
                );
                let _ = reply(&mut out, &proto::Response::err(msg));
                return;
            }
            Line::TooLong => {
                let msg = format!("request longer than {MAX_LINE} bytes; disconnecting");
                let _ = reply(&mut out, &proto::Response::err(msg));
                return;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use pvnet_testkit::harness::tmpdir;

    /// A client must send each request line whole within the idle timeout of its first
    /// byte: one trickling a byte at a time is disconnected, as is one sending nothing.
    #[test]
    fn a_client_trickling_a_request_is_disconnected() {
        let d = tmpdir("ctl-trickle");
        let server = Arc::new(
            Server::start(Config {
                sockets: vec![d.join("p0.sock")],
                ..Config::default()
            })
            .expect("server"),
        );
        let idle = Duration::from_secs(1);
        let control =
            Control::start_with(&d.join("ctl.sock"), server.clone(), idle).expect("control");
        // A request answered first: the connection works.
        let mut c = UnixStream::connect(control.path()).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c.write_all(b"{\"cmd\":\"ports\"}\n").expect("send");
        let mut r = BufReader::new(c.try_clone().expect("clone"));
        let mut answer = String::new();
        r.read_line(&mut answer).expect("answer");
        assert!(answer.contains("\"ok\":true"), "{answer}");
        // Then a request one byte every 200 ms, never finished.
        let t0 = Instant::now();
        let trickle = std::thread::spawn(move || {
            for b in b"{\"cmd\":\"ports\"".iter().cycle() {
                if c.write_all(&[*b]).is_err() || t0.elapsed() > Duration::from_secs(15) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        answer.clear();
        let read = r.read_line(&mut answer);
        let took = t0.elapsed();
        assert!(
            read.is_ok() && took < idle * 3,
            "a trickling client still connected after {took:?} ({read:?})"
        );
        assert!(
            answer.is_empty() || answer.contains("\"ok\":false"),
            "{answer}"
        );
        let mut rest = String::new();
        assert_eq!(r.read_line(&mut rest).unwrap_or(0), 0, "still connected");
        let _ = trickle.join();
        // A silent client is disconnected too.
        let s = UnixStream::connect(control.path()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let t0 = Instant::now();
        let mut rest = String::new();
        let read = BufReader::new(s).read_line(&mut rest);
        assert!(
            matches!(read, Ok(0)) && t0.elapsed() < idle * 3,
            "a silent client still connected after {:?} ({read:?})",
            t0.elapsed()
        );
        control.stop();
        server.shutdown();
    }
}
