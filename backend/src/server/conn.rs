//! One port's connection loop: a fresh device and `VhostUserDaemon` per frontend, reached by
//! accepting on the port's listening socket or by connecting to the socket a frontend
//! listens on (client mode, with bounded back-off); on disconnect the port's workers stop,
//! its RX rings leave the switch, its grants are revoked and its MACs forgotten.

use crate::device::{lock, NetDevice, TOKEN_TIMER, TOKEN_WAKE};
use crate::switch::{Fabric, Locks};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon};
use vmm_sys_util::epoll::EventSet;

/// First delay between connection attempts in client mode.
pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest delay between connection attempts in client mode.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A client-mode connection shorter than this does not reset the back-off: a frontend that
/// accepts and hangs up at once is retried ever more slowly, up to [`BACKOFF_MAX`].
const STABLE: Duration = Duration::from_secs(1);
/// Longest wait of one connection attempt in client mode for a frontend whose listen
/// backlog is full (it does not accept: hung, or flooded with connections).
const CONNECT_WAIT: Duration = Duration::from_secs(1);
/// Pause after a local failure (device or daemon creation).
const FAILURE_PAUSE: Duration = Duration::from_millis(100);

/// How a port reaches its frontend.
pub(crate) enum Endpoint {
    /// pvnet listens; one frontend at a time is accepted.
    Listen(Listener),
    /// The frontend listens at this path; pvnet connects.
    Connect(PathBuf),
}

/// A port's handle on its running connection loop.
pub(crate) struct PortCtl {
    /// Set to end the loop (with [`PortCtl::shutdown`] to end the current connection).
    pub stop: AtomicBool,
    handle: Mutex<Option<ShutdownHandle>>,
    /// Protocol errors of frontends: (when one was last logged, how many since).
    errors: Mutex<(Option<Instant>, u64)>,
}

impl PortCtl {
    pub fn new() -> PortCtl {
        PortCtl {
            stop: AtomicBool::new(false),
            handle: Mutex::new(None),
            errors: Mutex::new((None, 0)),
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
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
    pub fn shutdown(&self) {
        if let Some(h) = lock(&self.handle).as_ref() {
            h.shutdown();
        }
    }

    /// Sleeps for `d`, in short steps, unless the loop is told to stop; returns whether it
    /// still runs.
    fn pause(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while !self.stopping() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
        false
    }
}

/// Delays between connection attempts: doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Serves frontends on `ep` until `ctl.stop` is set.
pub(crate) fn port_loop<L: Locks>(
    fabric: Arc<Fabric<L>>,
    idx: usize,
    mut ep: Endpoint,
    ctl: Arc<PortCtl>,
) {
    let mut backoff = Backoff::new();
    while !ctl.stopping() {
        if let Err(e) = serve_one(&fabric, idx, &mut ep, &ctl, &mut backoff) {
            // At a stop, a listening port's accept fails (its listener was shut down).
            if ctl.stopping() {
                break;
            }
            log::error!("port {idx}: {e}");
            ctl.pause(FAILURE_PAUSE);
        }
    }
}

/// Connects to the frontend listening at `path`, retrying with back-off; false when told to
/// stop first. One attempt waits at most [`CONNECT_WAIT`] for a frontend whose listen
/// backlog is full, so that a stop is seen within about that long.
fn connect<T>(
    daemon: &mut VhostUserDaemon<T>,
    idx: usize,
    path: &std::path::Path,
    ctl: &PortCtl,
    backoff: &mut Backoff,
) -> bool
where
    T: VhostUserBackend + Clone + 'static,
    T::Bitmap: vhost_user_backend::bitmap::BitmapReplace
        + vm_memory::bitmap::NewBitmap
        + Clone
        + Send
        + Sync,
    T::Vring: Clone + Send + Sync,
{
    let mut failures = 0u64;
    loop {
        if ctl.stopping() {
            return false;
        }
        let started = crate::socket::connect(path, CONNECT_WAIT)
            .map_err(|e| e.to_string())
            .and_then(|s| daemon.start_stream(s).map_err(|e| e.to_string()));
        match started {
            Ok(()) => return true,
            Err(e) => {
                failures += 1;
                // The first failure of a series, then one in a hundred.
                if failures % 100 == 1 {
                    log::info!(
                        "port {idx}: cannot connect to {} ({e}); retrying",
                        path.display()
                    );
                }
                if !ctl.pause(backoff.step()) {
                    return false;
                }
            }
        }
    }
}

/// Waits for (or reaches) the next frontend, serves it until it leaves, and tears the
/// connection down.
fn serve_one<L: Locks>(
    fabric: &Arc<Fabric<L>>,
    idx: usize,
    ep: &mut Endpoint,
    ctl: &PortCtl,
    backoff: &mut Backoff,
) -> io::Result<()> {
    let sw = &fabric.sw;
    let port = &sw.ports[idx];
    // The previous connection's memory is gone: a fault from now on is this connection's.
    port.guard.clear();
    let dev = Arc::new(NetDevice::new(fabric.clone(), idx)?);
    let mut daemon = VhostUserDaemon::new(format!("pvnet-port{idx}"), dev.clone(), dev.memory())
        .map_err(|e| io::Error::other(e.to_string()))?;
    let nq = dev.num_queues() as u64;
    if fabric.pmds.is_empty() {
        for (t, h) in daemon.get_epoll_handlers().iter().enumerate() {
            let Some(w) = dev.workers.get(t) else { break };
            let (wake, timer) = lock(w).fds();
            h.register_listener(wake, EventSet::IN, nq + TOKEN_WAKE)?;
            if let Some(timer) = timer {
                h.register_listener(timer, EventSet::IN, nq + TOKEN_TIMER)?;
            }
        }
    }
    let connected = match ep {
        Endpoint::Listen(listener) => {
            daemon
                .start(listener)
                .map_err(|e| io::Error::other(e.to_string()))?;
            true
        }
        Endpoint::Connect(path) => connect(&mut daemon, idx, path, ctl, backoff),
    };
    // With --pmd-threads the polling threads run the workers from here on; `teardown`
    // (NetDevice::detach) takes them back. Nothing returns early in between.
    dev.attach_pmds();
    let since = Instant::now();
    *lock(&ctl.handle) = daemon.shutdown_handle();
    if connected && !ctl.stopping() {
        let n = port.connections.fetch_add(1, Ordering::AcqRel) + 1;
        log::info!("port {idx}: frontend connected (connection {n})");
        port.connected.store(true, Ordering::Release);
    }
    // Stop requested before the handle was in place, or a fault before it: the request
    // found nothing to shut down. (`stop` is set before the handle is read.)
    if ctl.stopping() || port.guard.poisoned() {
        daemon.request_shutdown();
    }
    let res = daemon.wait();
    *lock(&ctl.handle) = None;
    if since.elapsed() >= STABLE {
        backoff.reset();
    }
    // Counted before the port shows disconnected: whoever sees it disconnected (statistics,
    // `ctl ports`) also sees why.
    let faulted = connected && port.guard.poisoned();
    if faulted {
        port.guard.note_disconnect();
    }
    let revoked = teardown(fabric, idx, &dev, daemon);
    // The connection's mappings go with the device; they are no longer guarded.
    drop(dev);
    port.guard.release_all();
    // (At a stop, a frontend accepted from the backlog was disconnected at once.)
    if connected && (revoked > 0 || !ctl.stopping()) {
        log_end(idx, ctl, res, faulted.then(|| port.guard.faults()), revoked);
    }
    Ok(())
}

/// Takes the port out of the switch: leaves the flooding set, stops the workers, revokes
/// the grants, forgets the MACs. Returns the number of grants revoked.
fn teardown<L: Locks>(
    fabric: &Fabric<L>,
    idx: usize,
    dev: &NetDevice<L>,
    daemon: VhostUserDaemon<Arc<NetDevice<L>>>,
) -> usize {
    let port = &fabric.sw.ports[idx];
    port.connected.store(false, Ordering::Release);
    dev.detach();
    for h in daemon.get_epoll_handlers() {
        h.send_exit_event();
    }
    drop(daemon);
    let revoked = fabric.ports[idx].grants.revoke_all();
    fabric.sw.fdb.purge_port(idx);
    port.features.store(0, Ordering::Release);
    revoked
}

/// Logs how the connection ended: `res` is what the daemon returned; `faults`, when a
/// memory fault ended it, the faults contained so far.
fn log_end(
    idx: usize,
    ctl: &PortCtl,
    res: vhost_user_backend::Result<()>,
    faults: Option<u64>,
    revoked: usize,
) {
    if let Some(faults) = faults {
        log::warn!(
            "port {idx}: frontend disconnected: its memory file shrank under the mapping \
             ({revoked} grants revoked, {faults} faults contained so far)"
        );
        return;
    }
    match res {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => log::info!("port {idx}: frontend disconnected ({revoked} grants revoked)"),
        // The frontend broke the protocol: its fault, not the port's. The port takes the next
        // frontend at once (the pause of port_loop is for local failures), and the log is
        // throttled so a frontend reconnecting in a loop cannot flood it.
        Err(e) => ctl.frontend_error(idx, &e.to_string(), revoked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let mut b = Backoff::new();
        let steps: Vec<_> = (0..10).map(|_| b.step()).collect();
        assert_eq!(steps[0], BACKOFF_MIN);
        assert_eq!(steps[1], BACKOFF_MIN * 2);
        assert!(steps.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*steps.last().expect("steps"), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.step(), BACKOFF_MIN);
    }
}
