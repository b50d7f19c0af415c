//! The running switch: a fixed-size table of port slots (`--max-ports`), each holding a
//! port — its endpoint (a socket pvnet listens on, or one a frontend listens on) and its
//! connection loop (`server::conn`) — or free. Ports are added to free slots and deleted
//! at run time without touching the others: the slot index is a port's identity on the data
//! path, so the data path's indexing never changes.

mod conn;

use crate::config::{Config, ConfigError};
use crate::datapath::pmd::Pmd;
use crate::device::lock;
use crate::socket::{AcceptWaker, SocketError, SocketFile};
use crate::switch::{Fabric, FabricView, LockSet, Locks, Switch};
use crate::tap::{TapDevice, TapPort, Uplinks};
use conn::{Endpoint, PortCtl};
use pvnet_grant::GrantInfo;
use pvnet_locks::{with_rw_family, with_spin_family};
use pvnet_locks::{RwLockKind, SpinLockKind};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vhost::vhost_user::Listener;

pub use conn::{BACKOFF_MAX, BACKOFF_MIN};

/// Errors starting the switch.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Tap(#[from] crate::tap::TapError),
    #[error("cannot start the tap ports: {0}")]
    TapStart(io::Error),
    #[error("cannot start the polling threads: {0}")]
    Pmd(io::Error),
}

/// Errors adding or deleting a port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("cannot use socket path {0}")]
    Socket(#[from] SocketError),
    #[error("socket path {0}: {1}")]
    Path(String, io::Error),
    #[error("socket path {0} is already port {1}")]
    Duplicate(String, usize),
    #[error("no free port slot (all {0} in use; see --max-ports)")]
    TableFull(usize),
    #[error("no port {0}")]
    Unknown(String),
    #[error("cannot start port {port}: {err}")]
    Start { port: usize, err: io::Error },
    #[error("the switch is shutting down")]
    Closed,
}

/// How a port reaches its frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortMode {
    /// pvnet listens on the path (`--socket`).
    Socket,
    /// The frontend listens on the path; pvnet connects and reconnects (`--client`).
    Client,
    /// A tap device (`--tap`; the path is the interface name). Given at start only.
    Tap,
}

/// A port as the control plane sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub idx: usize,
    pub kind: PortMode,
    pub path: PathBuf,
}

impl PortInfo {
    /// The port's name (`portN`, N its slot).
    pub fn name(&self) -> String {
        format!("port{}", self.idx)
    }
}

/// A slot's running port.
struct Running {
    info: PortInfo,
    /// Canonical path, for duplicate checks.
    canonical: PathBuf,
    ctl: Arc<PortCtl>,
    thread: Option<JoinHandle<()>>,
    file: Option<SocketFile>,
    /// Wakes the loop's `accept` at a stop (listening ports).
    waker: Option<AcceptWaker>,
}

/// Starts connection loops for the lock set the fabric was compiled for.
trait Spawner: Send + Sync {
    fn spawn(&self, idx: usize, ep: Endpoint, ctl: Arc<PortCtl>) -> io::Result<JoinHandle<()>>;
}

struct SpawnerOf<L: Locks>(Arc<Fabric<L>>);

impl<L: Locks> Spawner for SpawnerOf<L> {
    fn spawn(&self, idx: usize, ep: Endpoint, ctl: Arc<PortCtl>) -> io::Result<JoinHandle<()>> {
        let f = self.0.clone();
        std::thread::Builder::new()
            .name(format!("pvnet-port{idx}"))
            .spawn(move || conn::port_loop(f, idx, ep, ctl))
    }
}

/// A running switch.
pub struct Server {
    sw: Arc<Switch>,
    fabric: Arc<dyn FabricView>,
    spawner: Box<dyn Spawner>,
    slots: Mutex<Vec<Option<Running>>>,
    paths: Vec<PathBuf>,
    /// Shut down: no more ports.
    closed: AtomicBool,
    /// Held through a port's addition or deletion: one at a time, so a slot is chosen,
    /// filled or emptied (its loop joined) by one caller only.
    admin: Mutex<()>,
    /// The tap ports' reader threads (`--tap`).
    uplinks: Mutex<Uplinks>,
    /// The switch-wide polling threads (`--pmd-threads`).
    pmds: Mutex<Pmds>,
}

/// The switch-wide polling threads and their shared state.
struct Pmds {
    shared: Vec<Arc<Pmd>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pmds {
    fn new(n: usize) -> io::Result<Pmds> {
        Ok(Pmds {
            shared: (0..n)
                .map(|i| Pmd::new(i).map(Arc::new))
                .collect::<io::Result<_>>()?,
            threads: Vec::new(),
        })
    }

    fn shared(&self) -> Vec<Arc<Pmd>> {
        self.shared.clone()
    }

    /// Starts one thread per polling thread's state, thread `i` pinned to `cpus[i]` when
    /// given (`--pmd-cpus`).
    fn start(mut self, poll_us: u32, cpus: &[usize]) -> io::Result<Pmds> {
        for p in self.shared.clone() {
            let cpu = cpus.get(p.id()).copied();
            // The thread waits until it is pinned: its first allocations (burst buffers)
            // are then made on its own CPU.
            let (go, gate) = std::sync::mpsc::channel::<()>();
            let started = std::thread::Builder::new()
                .name(format!("pvnet-pmd{}", p.id()))
                .spawn(move || {
                    let _ = gate.recv();
                    p.run(poll_us)
                })
                .and_then(|t| {
                    let pinned = cpu.map_or(Ok(()), |c| crate::cpus::pin(&t, c));
                    self.threads.push(t);
                    let _ = go.send(());
                    pinned
                });
            if let Err(e) = started {
                self.shutdown();
                return Err(e);
            }
            if let Some(c) = cpu {
                log::info!("PMD thread {} on CPU {c}", self.threads.len() - 1);
            }
        }
        Ok(self)
    }

    /// Stops and joins the threads (after the ports: a port's teardown detaches its
    /// workers first; again on drop, where it finds nothing left to do).
    fn shutdown(&mut self) {
        for p in &self.shared {
            p.stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Pmds {
    /// A server dropped without [`Server::shutdown`] (or whose start failed after the
    /// threads started) leaves no polling thread behind.
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Server {
    /// Validates `cfg`, opens its tap devices, binds every socket, and starts one connection
    /// loop per port (the `sockets`, then the `clients`) and one reader thread per tap queue
    /// (the tap ports come after the others).
    pub fn start(cfg: Config) -> Result<Server, ServeError> {
        cfg.validate()?;
        let taps = cfg.uplink.open_all()?;
        Self::start_with_taps(cfg, taps)
    }

    /// [`Server::start`] with the tap ports' devices already open (one port each, after the
    /// vhost-user ports) instead of those `cfg.uplink` names. Any non-blocking descriptor
    /// that keeps frame boundaries and carries a 12-byte virtio-net header before each frame
    /// will do (tests stand in for the host side with a `SOCK_SEQPACKET` socket pair).
    pub fn start_with_taps(cfg: Config, taps: Vec<TapDevice>) -> Result<Server, ServeError> {
        cfg.validate()?;
        let given: Vec<(PortMode, PathBuf)> = cfg
            .sockets
            .iter()
            .map(|p| (PortMode::Socket, p.clone()))
            .chain(cfg.clients.iter().map(|p| (PortMode::Client, p.clone())))
            .collect();
        // Every socket is bound before anything runs: a bad path fails the start whole.
        let mut bound = Vec::with_capacity(given.len());
        for (kind, path) in &given {
            bound.push(prepare(*kind, path, &cfg)?);
        }
        let paths = given.iter().map(|(_, p)| p.clone()).collect();
        let (grant_lock, queue_lock) = (cfg.grant_lock, cfg.queue_lock);
        // Tap ports come after the vhost-user ports (their devices close with the process).
        let taps = taps
            .into_iter()
            .map(|d| TapPort::new(d).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()
            .map_err(ServeError::TapStart)?;
        let pmds = Pmds::new(cfg.pmd_thread_count()).map_err(ServeError::Pmd)?;
        let (poll_us, pmd_cpus) = (cfg.poll_us, cfg.pmd_cpus.clone());
        let sw = Switch::with_taps(cfg, taps);
        let table = sw.ports.len();
        // The one place the lock kinds are looked at: everything below is compiled per pair.
        let (fabric, spawner, uplinks) = with_rw_family!(grant_lock, G => with_spin_family!(queue_lock, Q => {
            let f = Fabric::<LockSet<G, Q>>::with_pmds(sw.clone(), pmds.shared());
            let view: Arc<dyn FabricView> = f.clone();
            let up = Uplinks::start(&f);
            let sp: Box<dyn Spawner> = Box::new(SpawnerOf(f));
            (view, sp, up)
        }));
        let uplinks = Mutex::new(uplinks.map_err(ServeError::TapStart)?);
        let pmds = Mutex::new(pmds.start(poll_us, &pmd_cpus).map_err(ServeError::Pmd)?);
        let server = Server {
            sw,
            fabric,
            spawner,
            slots: Mutex::new((0..table).map(|_| None).collect()),
            paths,
            closed: AtomicBool::new(false),
            admin: Mutex::new(()),
            uplinks,
            pmds,
        };
        for (idx, ((kind, path), b)) in given.into_iter().zip(bound).enumerate() {
            server.launch(idx, kind, path, b)?;
        }
        Ok(server)
    }

    /// The switch state (ports, counters, FDB).
    pub fn switch(&self) -> &Arc<Switch> {
        &self.sw
    }

    /// The lock kinds the data path runs with (grant table, RX queues): `percpu` is
    /// `percpu-fenced` where membarrier is unavailable.
    pub fn lock_kinds(&self) -> (RwLockKind, SpinLockKind) {
        self.fabric.lock_kinds()
    }

    /// The grants of port `p` now (allocates).
    pub fn grants(&self, p: usize) -> Vec<GrantInfo> {
        self.fabric.grants(p)
    }

    /// The socket paths of the ports given at start, by port.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The ports now, by slot (vhost-user ports and tap ports).
    pub fn ports(&self) -> Vec<PortInfo> {
        let slots = lock(&self.slots);
        let mut v: Vec<PortInfo> = slots.iter().flatten().map(|r| r.info.clone()).collect();
        drop(slots);
        v.extend(self.sw.ports_in_use().filter_map(|(idx, p)| {
            p.tap().map(|t| PortInfo {
                idx,
                kind: PortMode::Tap,
                path: PathBuf::from(&t.name),
            })
        }));
        v.sort_by_key(|p| p.idx);
        v
    }

    /// Adds a port in the lowest free slot: binds its socket (`Socket`) or starts
    /// connecting to the frontend's (`Client`). Returns its slot. Nothing changes on error.
    pub fn add_port(&self, kind: PortMode, path: &Path) -> Result<usize, PortError> {
        let _admin = lock(&self.admin);
        let canonical = crate::socket::canonical(path)
            .map_err(|e| PortError::Path(path.display().to_string(), e))?;
        let idx = {
            let slots = lock(&self.slots);
            if let Some(r) = slots.iter().flatten().find(|r| r.canonical == canonical) {
                return Err(PortError::Duplicate(path.display().to_string(), r.info.idx));
            }
            // A free slot: no vhost-user port in it, and not a tap port's.
            slots
                .iter()
                .enumerate()
                .position(|(i, s)| s.is_none() && !self.sw.ports[i].in_use.load(Ordering::Acquire))
                .ok_or(PortError::TableFull(slots.len()))?
        };
        let b = prepare(kind, path, &self.sw.cfg)?;
        self.launch(idx, kind, path.to_path_buf(), b)?;
        log::info!("port {idx}: added ({kind:?} {})", path.display());
        Ok(idx)
    }

    /// Deletes port `name` (`portN`, `N` or its path): its frontend is disconnected, its
    /// workers stopped, its grants revoked, its MACs forgotten, its socket removed, and its
    /// slot freed. Other ports are untouched.
    pub fn del_port(&self, name: &str) -> Result<PortInfo, PortError> {
        let _admin = lock(&self.admin);
        let mut run = {
            let mut slots = lock(&self.slots);
            let idx = find(&slots, name).ok_or_else(|| PortError::Unknown(name.to_string()))?;
            slots[idx]
                .take()
                .ok_or_else(|| PortError::Unknown(name.to_string()))?
        };
        stop(&mut run);
        self.sw.set_in_use(run.info.idx, false);
        log::info!("port {}: deleted", run.info.idx);
        Ok(run.info)
    }

    /// Removes the sockets (each only while its path is still the socket this server
    /// created) and their lock files: new frontends can no longer connect.
    pub fn remove_sockets(&mut self) {
        for r in lock(&self.slots).iter_mut().flatten() {
            if let Some(f) = r.file.as_mut() {
                f.remove();
            }
        }
    }

    /// Stops every port (disconnecting frontends, revoking their grants), joins the loops
    /// and removes the sockets. Ports can no longer be added.
    pub fn shutdown(&self) {
        let runs: Vec<Running> = {
            let mut slots = lock(&self.slots);
            self.closed.store(true, Ordering::SeqCst);
            slots.iter_mut().filter_map(Option::take).collect()
        };
        // Tell every loop first, so that the ports wind down together.
        for r in &runs {
            r.ctl.stop.store(true, Ordering::SeqCst);
            r.ctl.shutdown();
        }
        for mut r in runs {
            stop(&mut r);
        }
        lock(&self.uplinks).shutdown();
        lock(&self.pmds).shutdown();
    }

    /// Starts port `idx`'s loop on a prepared endpoint and records it.
    fn launch(
        &self,
        idx: usize,
        kind: PortMode,
        path: PathBuf,
        (ep, file, waker, canonical): Prepared,
    ) -> Result<(), PortError> {
        let ctl = Arc::new(PortCtl::new());
        // A fault in this port's guest memory (reported by the memguard reaper thread):
        // disconnect the frontend.
        let c2 = ctl.clone();
        self.sw.ports[idx].guard.on_fault(move || c2.shutdown());
        self.sw.set_in_use(idx, true);
        let thread = match self.spawner.spawn(idx, ep, ctl.clone()) {
            Ok(t) => t,
            Err(err) => {
                self.sw.set_in_use(idx, false);
                return Err(PortError::Start { port: idx, err });
            }
        };
        let mut run = Running {
            info: PortInfo { idx, kind, path },
            canonical,
            ctl,
            thread: Some(thread),
            file,
            waker,
        };
        let mut slots = lock(&self.slots);
        if self.closed.load(Ordering::SeqCst) {
            drop(slots);
            stop(&mut run);
            self.sw.set_in_use(idx, false);
            return Err(PortError::Closed);
        }
        slots[idx] = Some(run);
        Ok(())
    }
}

/// A port's endpoint, its socket file and the waker of its accept (pvnet listens), and its
/// canonical path.
type Prepared = (Endpoint, Option<SocketFile>, Option<AcceptWaker>, PathBuf);

fn prepare(kind: PortMode, path: &Path, cfg: &Config) -> Result<Prepared, PortError> {
    let canonical = crate::socket::canonical(path)
        .map_err(|e| PortError::Path(path.display().to_string(), e))?;
    Ok(match kind {
        PortMode::Socket => {
            // On error, the SocketFile's Drop removes what was bound.
            let (l, f) = crate::socket::bind(path, cfg.socket_mode, cfg.socket_group)?;
            let waker =
                AcceptWaker::new(&l).map_err(|e| PortError::Path(path.display().to_string(), e))?;
            (
                Endpoint::Listen(Listener::from(l)),
                Some(f),
                Some(waker),
                canonical,
            )
        }
        PortMode::Client => (Endpoint::Connect(path.to_path_buf()), None, None, canonical),
        PortMode::Tap => {
            return Err(PortError::Path(
                path.display().to_string(),
                io::Error::other("tap ports are given at start (--tap), not added at run time"),
            ))
        }
    })
}

/// The slot of port `name`: `portN`, `N`, or its path (as given or canonical).
fn find(slots: &[Option<Running>], name: &str) -> Option<usize> {
    let num = name.strip_prefix("port").unwrap_or(name);
    if let Ok(i) = num.parse::<usize>() {
        return slots.get(i)?.as_ref().map(|r| r.info.idx);
    }
    let canonical = crate::socket::canonical(Path::new(name)).ok();
    slots.iter().flatten().find_map(|r| {
        (r.info.path == Path::new(name) || Some(&r.canonical) == canonical.as_ref())
            .then_some(r.info.idx)
    })
}

/// Ends a port's loop (disconnecting its frontend; the loop's teardown revokes the grants
/// and purges the FDB), joins it and removes its socket.
fn stop(r: &mut Running) {
    r.ctl.stop.store(true, Ordering::SeqCst);
    r.ctl.shutdown();
    // Unblock a pending accept() (not by connecting to the path: the file may be gone).
    if let Some(w) = &r.waker {
        w.wake();
    }
    if let Some(t) = r.thread.take() {
        let _ = t.join();
    }
    if let Some(f) = r.file.as_mut() {
        f.remove();
    }
}
