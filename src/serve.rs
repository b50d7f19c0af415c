//! `pvnet serve` (also the default command): the switch.

use anyhow::Context;
use clap::ValueEnum;
use pvnet_backend::config::parse_cpu_list;
use pvnet_backend::config::RxSteer;
use pvnet_backend::control::Control;
use pvnet_backend::metrics::Metrics;
use pvnet_backend::report::{render, StatsFormat};
use pvnet_backend::{parse_group, parse_mac, parse_mode, Config, ConfigError, Server};
use pvnet_locks::{RwLockKind, SpinLockKind};
use sd_notify::NotifyState;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How statistics are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table per port and queue pair.
    Text,
    /// One JSON object per port per report, then one with the lock counters.
    Json,
}

/// `--rx-steer` (see [`RxSteer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Steer {
    /// By the sender's queue: frames sent on queue pair i go to the receiver's queue pair i
    /// (modulo its enabled pairs), as OVS-DPDK's default `tx-steering=thread`.
    Queue,
    /// By flow hash: a sender queue's flows are spread over every queue of the receiver.
    Hash,
}

impl From<Steer> for RxSteer {
    fn from(s: Steer) -> RxSteer {
        match s {
            Steer::Queue => RxSteer::Queue,
            Steer::Hash => RxSteer::Hash,
        }
    }
}

/// Flags of `pvnet serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// vhost-user socket path of one port (repeat for more ports); pvnet listens on it.
    #[arg(long = "socket", value_name = "PATH")]
    pub sockets: Vec<PathBuf>,
    /// vhost-user socket path a frontend listens on (QEMU `server=on`), one port each
    /// (repeat for more; numbered after the --socket ports); pvnet connects, and reconnects
    /// with back-off whenever the frontend goes away or pvnet restarts.
    #[arg(long = "client", value_name = "PATH")]
    pub clients: Vec<PathBuf>,
    /// Control socket for `pvnet ctl` (mode 0600; default
    /// $XDG_RUNTIME_DIR/pvnet/control.sock or /run/pvnet/control.sock, skipped with a warning
    /// when another pvnet holds it).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Serve the counters in the Prometheus text format at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9464; keep it on a local address).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Run without a control socket.
    #[arg(long, conflicts_with = "control")]
    pub no_control: bool,
    /// Size of the port table: ports given here plus ports added at run time through the
    /// control socket (0 = the ports given plus 8, at most 64).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_ports: usize,
    /// Permission bits (octal) of the sockets pvnet creates; 0600 lets only pvnet's own user
    /// connect, 0660 also --socket-group (e.g. the group QEMU runs in).
    #[arg(long, value_name = "MODE", default_value = "0600")]
    pub socket_mode: String,
    /// Group (name or gid) of the sockets pvnet creates (default: pvnet's primary group).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Queue pairs per port (1..=32); QEMU's `-netdev vhost-user,queues=N` may use up to this.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub queues: u16,
    /// Maximum virtqueue size (a power of two).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub queue_size: u16,
    /// Reader-writer lock kind of the per-port grant tables.
    #[arg(long, value_enum, value_name = "KIND", default_value_t = RwLockKind::Percpu)]
    pub grant_lock: RwLockKind,
    /// Spinlock kind of the RX queues shared by sending workers.
    #[arg(long, value_enum, value_name = "KIND", default_value_t = SpinLockKind::Pvqspin)]
    pub queue_lock: SpinLockKind,
    /// MAC address per port, in --socket order (default: 52:54:00:12:34:1x by port index).
    #[arg(long = "mac", value_name = "MAC")]
    pub macs: Vec<String>,
    /// Make each port's MAC binding: frames whose source MAC is not the port's (--mac or
    /// the default) are dropped and counted (`spoofed_mac`).
    #[arg(long)]
    pub port_security: bool,
    /// After a burst that found work, keep polling the worker's rings for up to this many
    /// microseconds before sleeping (0 = purely event-driven; never more pollers than CPUs).
    #[arg(long, value_name = "US", default_value_t = pvnet_backend::config::DEFAULT_POLL_US)]
    pub poll_us: u32,
    /// Worker threads per port, each serving a share of the queue pairs (0 = automatic: the
    /// usable CPUs divided among the ports, at least 1, at most one per queue pair).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub workers: u16,
    /// Switch-wide polling threads serving the queue pairs of every port (OVS-DPDK's PMD
    /// threads; 0 = worker threads per port, --workers). Pair q of port p runs on thread
    /// (p + q) mod N.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub pmd_threads: u16,
    /// Pins the polling threads, one per CPU of the list (e.g. 2,4-5; OVS-DPDK's
    /// pmd-cpu-mask); implies --pmd-threads with their number.
    #[arg(long, value_name = "LIST")]
    pub pmd_cpus: Option<String>,
    /// How a frame from a guest picks the receiver's RX queue: `queue` (the queue pair it
    /// was sent on; one queue-lock hold per burst and destination) or `hash` (its flow hash:
    /// spreads one sender queue's flows over the receiver's queues, costs a hash per frame).
    /// Frames from taps are always steered by flow hash.
    #[arg(long, value_enum, value_name = "HOW", default_value_t = Steer::Queue)]
    pub rx_steer: Steer,
    /// Tap device of one more port (repeat for more), after the socket ports: created if
    /// missing (and gone when pvnet exits), or attached to if it exists (a persistent tap),
    /// and brought up. The uplink to the host's network stack.
    #[arg(long = "tap", value_name = "NAME")]
    pub taps: Vec<String>,
    /// Queues per tap device (IFF_MULTI_QUEUE above 1; one reader thread per queue; frames
    /// to the tap are spread over its queues as --rx-steer says).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub tap_queues: u16,
    /// Pass checksum and TCP segmentation offloads between guests and tap devices (off:
    /// the kernel hands over complete frames, and pvnet completes or segments what guests
    /// send before writing it to a tap).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub tap_offload: bool,
    /// MTU advertised in the device config space (offers VIRTIO_NET_F_MTU).
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u16>,
    /// Print statistics every SECS seconds (0 = only on SIGUSR1 and at exit).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_interval: u64,
    /// Statistics format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub stats_format: Format,
    /// More log output (-v info, -vv debug, -vvv trace); overrides --log-level.
    #[arg(short, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: log::LevelFilter,
}

impl TryFrom<&Args> for Config {
    type Error = ConfigError;

    fn try_from(a: &Args) -> Result<Config, ConfigError> {
        let macs = a
            .macs
            .iter()
            .map(|m| parse_mac(m))
            .collect::<Result<Vec<_>, _>>()?;
        let socket_mode = parse_mode(&a.socket_mode)?;
        let pmd_cpus = a
            .pmd_cpus
            .as_deref()
            .map(parse_cpu_list)
            .transpose()?
            .unwrap_or_default();
        let socket_group = a.socket_group.as_deref().map(parse_group).transpose()?;
        let cfg = Config {
            sockets: a.sockets.clone(),
            clients: a.clients.clone(),
            socket_mode,
            socket_group,
            queue_pairs: a.queues,
            queue_size: a.queue_size,
            grant_lock: a.grant_lock,
            queue_lock: a.queue_lock,
            macs,
            mtu: a.mtu,
            port_security: a.port_security,
            poll_us: a.poll_us,
            workers: a.workers,
            pmd_threads: a.pmd_threads,
            pmd_cpus,
            rx_steer: a.rx_steer.into(),
            uplink: pvnet_backend::tap::TapConfig {
                names: a.taps.clone(),
                queues: a.tap_queues,
                offload: a.tap_offload,
            },
            ..Config::default()
        };
        let cfg = Config {
            max_ports: match a.max_ports {
                0 => cfg.auto_max_ports(),
                n => n,
            },
            ..cfg
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn usage_error(msg: impl std::fmt::Display) -> ! {
    eprintln!("pvnet: {msg}");
    std::process::exit(2);
}

/// What the main loop waits for.
enum Event {
    /// SIGUSR1: print the statistics.
    Report,
    /// SIGINT or SIGTERM: shut down.
    Stop(i32),
}

/// Delivers SIGINT, SIGTERM and SIGUSR1 as [`Event`]s (signal-hook's handler thread).
fn watch_signals() -> anyhow::Result<mpsc::Receiver<Event>> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1])?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("pvnet-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let ev = if sig == SIGUSR1 {
                    Event::Report
                } else {
                    Event::Stop(sig)
                };
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// Tells the service manager about the switch's state, if it asked (`NOTIFY_SOCKET`).
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        log::warn!("cannot notify the service manager: {e}");
    }
}

/// Starts the control socket: `--control PATH` must work; the default path is skipped with
/// a warning when it cannot be used (another pvnet holds it, no run directory).
fn start_control(args: &Args, server: &Arc<Server>) -> anyhow::Result<Option<Control>> {
    if args.no_control {
        return Ok(None);
    }
    let (path, explicit) = match &args.control {
        Some(p) => (p.clone(), true),
        None => (crate::ctl::default_control_path(), false),
    };
    let started = make_run_dir(&path)
        .and_then(|()| Control::start(&path, server.clone()).map_err(anyhow::Error::from));
    match started {
        Ok(c) => {
            log::info!("control socket {}", path.display());
            Ok(Some(c))
        }
        Err(e) if explicit => usage_error(e),
        Err(e) => {
            log::warn!("running without a control socket: {e:#}");
            Ok(None)
        }
    }
}

/// Creates the control socket's directory (mode 0700) when it is missing.
fn make_run_dir(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() && !d.exists() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .with_context(|| format!("cannot create {}", d.display())),
        _ => Ok(()),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let level = match args.verbose {
        0 => args.log_level,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    // The logger lets everything through; the global maximum filters, so that `pvnet ctl
    // log-level` can change it (RUST_LOG, when set, keeps its own per-module filter).
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let _ = env_logger::Builder::new()
        .filter_level(if from_env {
            level
        } else {
            log::LevelFilter::Trace
        })
        .parse_default_env()
        .try_init();
    if !from_env {
        log::set_max_level(level);
    }
    let cfg = Config::try_from(&args).unwrap_or_else(|e| usage_error(e));
    let threads = match cfg.pmd_thread_count() {
        0 => format!("{} workers per port", cfg.worker_threads()),
        n => format!("{n} PMD threads for all ports"),
    };
    log::info!(
        "grant lock {:?}, queue lock {:?}, {} queue pairs, {threads}, RX steering by {}",
        cfg.grant_lock,
        cfg.queue_lock,
        cfg.queue_pairs,
        cfg.rx_steer
    );
    let fmt = match args.stats_format {
        Format::Text => StatsFormat::Text,
        Format::Json => StatsFormat::Json,
    };
    // Handlers before any port runs: a signal from then on shuts down cleanly.
    let events = watch_signals()?;
    let server = Arc::new(Server::start(cfg).unwrap_or_else(|e| usage_error(e)));
    for p in server.ports() {
        log::info!("{}: {:?} {}", p.name(), p.kind, p.path.display());
    }
    let control = start_control(&args, &server)?;
    let metrics = args.metrics.as_deref().map(|a| {
        let m = Metrics::start(a, server.switch().clone()).unwrap_or_else(|e| usage_error(e));
        log::info!("metrics at http://{}/metrics", m.addr());
        m
    });
    // Every socket listens and every client port is connecting: tell systemd (Type=notify;
    // nothing happens without NOTIFY_SOCKET).
    let status = format!("{} ports", server.ports().len());
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    let interval = (args.stats_interval > 0).then(|| Duration::from_secs(args.stats_interval));
    let mut next = interval.map(|i| Instant::now() + i);
    loop {
        let wait = next.map_or(Duration::from_secs(3600), |n| {
            n.saturating_duration_since(Instant::now())
        });
        match events.recv_timeout(wait) {
            Ok(Event::Report) => print!("{}", render(server.switch(), fmt)),
            Ok(Event::Stop(sig)) => {
                log::info!("signal {sig}: shutting down");
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let (Some(i), Some(n)) = (interval, next) {
                    if Instant::now() >= n {
                        print!("{}", render(server.switch(), fmt));
                        next = Some(n + i);
                    }
                }
            }
        }
    }
    notify(&[NotifyState::Stopping]);
    // Disconnect every frontend, stop the workers, revoke the grants, remove the sockets;
    // then the final statistics.
    if let Some(c) = control {
        c.stop();
    }
    if let Some(m) = metrics {
        m.stop();
    }
    let sw = server.switch().clone();
    server.shutdown();
    log::info!("shutdown complete");
    print!("{}", render(&sw, fmt));
    Ok(())
}
