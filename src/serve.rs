//! `pvnet serve` (also the default command): the switch.

use clap::ValueEnum;
use pvnet_backend::report::{render, StatsFormat};
use pvnet_backend::{parse_group, parse_mac, parse_mode, Config, ConfigError, Server};
use pvnet_locks::{RwLockKind, SpinLockKind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How statistics are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table per port and queue pair.
    Text,
    /// One JSON object per port per report, then one with the lock counters.
    Json,
}

/// Flags of `pvnet serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// vhost-user socket path of one port (repeat for more ports); pvnet listens on it.
    #[arg(long = "socket", value_name = "PATH")]
    pub sockets: Vec<PathBuf>,
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
    /// Tap device of one more port (repeat for more), after the socket ports: created if
    /// missing (and gone when pvnet exits), or attached to if it exists (a persistent tap),
    /// and brought up. The uplink to the host's network stack.
    #[arg(long = "tap", value_name = "NAME")]
    pub taps: Vec<String>,
    /// Queues per tap device (IFF_MULTI_QUEUE above 1; one reader thread per queue; frames
    /// to the tap are spread over its queues by flow hash).
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
        let socket_group = a.socket_group.as_deref().map(parse_group).transpose()?;
        let cfg = Config {
            sockets: a.sockets.clone(),
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
            uplink: pvnet_backend::tap::TapConfig {
                names: a.taps.clone(),
                queues: a.tap_queues,
                offload: a.tap_offload,
            },
            ..Config::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn usage_error(msg: impl std::fmt::Display) -> ! {
    eprintln!("pvnet: {msg}");
    std::process::exit(2);
}

/// The signals the main thread waits for (blocked in every thread).
fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let level = match args.verbose {
        0 => args.log_level,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .try_init();
    let cfg = Config::try_from(&args).unwrap_or_else(|e| usage_error(e));
    let fmt = match args.stats_format {
        Format::Text => StatsFormat::Text,
        Format::Json => StatsFormat::Json,
    };
    // Block the signals before any thread starts, so that only sigtimedwait() below sees them.
    let set = signal_set();
    // SAFETY: pthread_sigmask with a valid, initialised set; the old mask is not needed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let mut server = Server::start(cfg).unwrap_or_else(|e| usage_error(e));
    for p in server.paths() {
        log::info!("listening on {}", p.display());
    }
    let interval = (args.stats_interval > 0).then(|| Duration::from_secs(args.stats_interval));
    let mut next = interval.map(|i| Instant::now() + i);
    loop {
        let wait = next.map_or(Duration::from_secs(3600), |n| {
            n.saturating_duration_since(Instant::now())
        });
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: valid set and timespec; the siginfo pointer may be null.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
        match sig {
            libc::SIGUSR1 => print!("{}", render(server.switch(), fmt)),
            libc::SIGINT | libc::SIGTERM => break,
            _ => {
                if let (Some(i), Some(n)) = (interval, next) {
                    if Instant::now() >= n {
                        print!("{}", render(server.switch(), fmt));
                        next = Some(n + i);
                    }
                }
            }
        }
    }
    print!("{}", render(server.switch(), fmt));
    // Remove the sockets and exit: a full shutdown would wait for frontends to let go.
    server.remove_sockets();
    std::process::exit(0);
}
