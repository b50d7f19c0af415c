//! Ports and their connection loops: one listening socket per port, a fresh device and
//! `VhostUserDaemon` per accepted frontend; on disconnect the port's workers stop, its RX
//! rings leave the switch, its grants are revoked and the socket accepts the next frontend.

use crate::config::{Config, ConfigError};
use crate::device::{lock, NetDevice, TOKEN_TIMER, TOKEN_WAKE};
use crate::socket::{SocketError, SocketFile};
use crate::switch::{Fabric, FabricView, LockSet, Locks, Switch};
use crate::tap::{TapDevice, TapPort, Uplinks};
use pvnet_grant::GrantInfo;
use pvnet_locks::{with_rw_family, with_spin_family};
use pvnet_locks::{RwLockKind, SpinLockKind};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon};
use vmm_sys_util::epoll::EventSet;

/// Errors starting the switch.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use socket path {0}")]
    Socket(#[from] SocketError),
    #[error("cannot start port {port}: {err}")]
    Start { port: usize, err: io::Error },
    #[error(transparent)]
    Tap(#[from] crate::tap::TapError),
    #[error("cannot start the tap ports: {0}")]
    TapStart(io::Error),
}

struct PortCtl {
    handle: Mutex<Option<ShutdownHandle>>,
    /// Protocol errors of frontends: (when one was last logged, how many since).
    errors: Mutex<(Option<Instant>, u64)>,
}

impl PortCtl {
    fn new() -> PortCtl {
        PortCtl {
            handle: Mutex::new(None),
            errors: Mutex::new((None, 0)),
        }
    }

    /// Logs a frontend's protocol error, at most once per second per port.
    fn frontend_error(&self, idx: usize, err: &str, revoked: usize) {
        let mut e = lock(&self.errors);
        e.1 += 1;
        let now = Instant::now();
        if e.0
            .map_or(true, |t| now.duration_since(t) >= Duration::from_secs(1))
        {
            log::warn!(
                "port {idx}: frontend disconnected after a protocol error: {err} ({revoked} \
                 grants revoked; {} protocol errors on this port so far)",
                e.1
            );
            e.0 = Some(now);
        }
    }

    /// Disconnects the current frontend, if any.
    fn shutdown(&self) {
        if let Some(h) = lock(&self.handle).as_ref() {
            h.shutdown();
        }
    }
}

/// A running switch.
pub struct Server {
    sw: Arc<Switch>,
    fabric: Arc<dyn FabricView>,
    stop: Arc<AtomicBool>,
    ctl: Vec<Arc<PortCtl>>,
    threads: Vec<JoinHandle<()>>,
    paths: Vec<PathBuf>,
    files: Vec<SocketFile>,
    uplinks: Uplinks,
}

impl Server {
    /// Validates `cfg`, opens its tap devices, binds every socket, and starts one
    /// connection loop per socket port and one reader thread per tap queue.
    pub fn start(cfg: Config) -> Result<Server, ServeError> {
        cfg.validate()?;
        let taps = cfg.uplink.open_all()?;
        Self::start_with_taps(cfg, taps)
    }

    /// [`Server::start`] with the tap ports' devices already open (one port each, after the
    /// socket ports) instead of those `cfg.uplink` names. Any non-blocking descriptor that
    /// keeps frame boundaries and carries a 12-byte virtio-net header before each frame will
    /// do (tests stand in for the host side with a `SOCK_SEQPACKET` socket pair).
    pub fn start_with_taps(cfg: Config, taps: Vec<TapDevice>) -> Result<Server, ServeError> {
        cfg.validate()?;
        let mut listeners = Vec::new();
        let mut files = Vec::new();
        for p in &cfg.sockets {
            // On error, the SocketFiles' Drop removes the sockets bound so far.
            let (l, f) = crate::socket::bind(p, cfg.socket_mode, cfg.socket_group)?;
            listeners.push(Listener::from(l));
            files.push(f);
        }
        let paths = cfg.sockets.clone();
        let (grant_lock, queue_lock) = (cfg.grant_lock, cfg.queue_lock);
        // Tap ports come after the socket ports (their devices close with the process).
        let taps = taps
            .into_iter()
            .map(|d| TapPort::new(d).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()
            .map_err(ServeError::TapStart)?;
        let sw = Switch::with_taps(cfg, taps);
        let stop = Arc::new(AtomicBool::new(false));
        let ctl: Vec<_> = (0..listeners.len())
            .map(|idx| {
                let c = Arc::new(PortCtl::new());
                // A fault in this port's guest memory (reported by the memguard reaper
                // thread): disconnect the frontend.
                let c2 = c.clone();
                sw.ports[idx].guard.on_fault(move || c2.shutdown());
                c
            })
            .collect();
        // The one place the lock kinds are looked at: everything below is compiled per pair.
        let (fabric, threads, uplinks) = with_rw_family!(grant_lock, G => with_spin_family!(queue_lock, Q => {
            let f = Fabric::<LockSet<G, Q>>::new(sw.clone());
            let view: Arc<dyn FabricView> = f.clone();
            let up = Uplinks::start(&f);
            (view, spawn_ports(f, listeners, &stop, &ctl), up)
        }));
        let uplinks = uplinks.map_err(ServeError::TapStart)?;
        let threads = threads?;
        Ok(Server {
            fabric,
            sw,
            stop,
            ctl,
            threads,
            paths,
            files,
            uplinks,
        })
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

    /// The socket paths, by port.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Removes the sockets (each only while its path is still the socket this server
    /// created) and their lock files: new frontends can no longer connect.
    pub fn remove_sockets(&mut self) {
        for f in &mut self.files {
            f.remove();
        }
    }

    /// Stops every port (disconnecting frontends), joins the loops and removes the sockets.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (c, p) in self.ctl.iter().zip(self.paths.iter()) {
            c.shutdown();
            // Unblock a pending accept().
            let _ = std::os::unix::net::UnixStream::connect(p);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.uplinks.shutdown();
        self.remove_sockets();
    }
}

/// Starts one connection loop per listener.
fn spawn_ports<L: Locks>(
    fabric: Arc<Fabric<L>>,
    listeners: Vec<Listener>,
    stop: &Arc<AtomicBool>,
    ctl: &[Arc<PortCtl>],
) -> Result<Vec<JoinHandle<()>>, ServeError> {
    let mut threads = Vec::new();
    for ((idx, listener), c) in listeners.into_iter().enumerate().zip(ctl) {
        let (f, stop, c) = (fabric.clone(), stop.clone(), c.clone());
        let t = std::thread::Builder::new()
            .name(format!("pvnet-port{idx}"))
            .spawn(move || port_loop(f, idx, listener, stop, c))
            .map_err(|err| ServeError::Start { port: idx, err })?;
        threads.push(t);
    }
    Ok(threads)
}

fn port_loop<L: Locks>(
    fabric: Arc<Fabric<L>>,
    idx: usize,
    mut listener: Listener,
    stop: Arc<AtomicBool>,
    ctl: Arc<PortCtl>,
) {
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = serve_one(&fabric, idx, &mut listener, &stop, &ctl) {
            log::error!("port {idx}: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn serve_one<L: Locks>(
    fabric: &Arc<Fabric<L>>,
    idx: usize,
    listener: &mut Listener,
    stop: &AtomicBool,
    ctl: &PortCtl,
) -> io::Result<()> {
    let sw = &fabric.sw;
    let port = &sw.ports[idx];
    // The previous connection's memory is gone: a fault from now on is this connection's.
    port.guard.clear();
    let dev = Arc::new(NetDevice::new(fabric.clone(), idx)?);
    let mut daemon = VhostUserDaemon::new(format!("pvnet-port{idx}"), dev.clone(), dev.memory())
        .map_err(|e| io::Error::other(e.to_string()))?;
    let nq = dev.num_queues() as u64;
    for (t, h) in daemon.get_epoll_handlers().iter().enumerate() {
        let Some(w) = dev.workers.get(t) else { break };
        let (wake, timer) = lock(w).fds();
        h.register_listener(wake, EventSet::IN, nq + TOKEN_WAKE)?;
        h.register_listener(timer, EventSet::IN, nq + TOKEN_TIMER)?;
    }
    daemon
        .start(listener)
        .map_err(|e| io::Error::other(e.to_string()))?;
    if stop.load(Ordering::SeqCst) {
        daemon.request_shutdown();
    } else {
        let n = port.connections.fetch_add(1, Ordering::AcqRel) + 1;
        log::info!("port {idx}: frontend connected (connection {n})");
        port.connected.store(true, Ordering::Release);
    }
    *lock(&ctl.handle) = daemon.shutdown_handle();
    // A fault before the handle was in place found nothing to shut down.
    if port.guard.poisoned() {
        ctl.shutdown();
    }
    let res = daemon.wait();
    *lock(&ctl.handle) = None;
    // Teardown: leave the switch, stop the workers, revoke the grants, forget the MACs.
    port.connected.store(false, Ordering::Release);
    dev.detach();
    for h in daemon.get_epoll_handlers() {
        h.send_exit_event();
    }
    drop(daemon);
    let revoked = fabric.ports[idx].grants.revoke_all();
    sw.fdb.purge_port(idx);
    port.features.store(0, Ordering::Release);
    // The connection's mappings go with the device; they are no longer guarded.
    drop(dev);
    port.guard.release_all();
    if port.guard.poisoned() {
        port.guard.note_disconnect();
        log::warn!(
            "port {idx}: frontend disconnected: its memory file shrank under the mapping \
             ({revoked} grants revoked, {} faults contained so far)",
            port.guard.faults()
        );
        return Ok(());
    }
    match res {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => log::info!("port {idx}: frontend disconnected ({revoked} grants revoked)"),
        // The frontend broke the protocol: its fault, not the port's. The port takes the next
        // frontend at once (the 100 ms pause of port_loop is for local failures), and the
        // log is throttled so a frontend reconnecting in a loop cannot flood it.
        Err(e) => ctl.frontend_error(idx, &e.to_string(), revoked),
    }
    Ok(())
}
