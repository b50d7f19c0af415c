//! Validated switch configuration (built from the CLI flags in the `pvnet` binary).

use pvnet_locks::{RwLockKind, SpinLockKind};
use std::path::PathBuf;
use std::time::Duration;

/// Default [`Config::backpressure_bound`].
pub const DEFAULT_BACKPRESSURE_BOUND: Duration = Duration::from_secs(1);
/// Default [`Config::poll_us`].
pub const DEFAULT_POLL_US: u32 = 0;
/// Most switch-wide polling threads (`--pmd-threads`).
pub const MAX_PMD_THREADS: u16 = 64;
/// Longest `--poll-us` accepted.
pub const MAX_POLL_US: u32 = 1_000_000;

/// Most queue pairs per port: `queues_per_thread` masks are 64-bit and every pair uses two
/// bits (RX, TX).
pub const MAX_QUEUE_PAIRS: u16 = 32;
/// Largest split-ring size virtio allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Largest number of ports (port table slots); the data path keeps sets of destination
/// ports in 64-bit masks.
pub const MAX_PORTS: usize = 64;
/// Free slots the `pvnet` binary's automatic port table size ([`Config::auto_max_ports`])
/// leaves for ports added at run time.
pub const AUTO_SPARE_PORTS: usize = 8;

/// How a frame from a guest picks its RX queue at the destination port (`--rx-steer`).
///
/// ```
/// use pvnet_backend::config::RxSteer;
/// assert_eq!(RxSteer::default().to_string(), "queue");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RxSteer {
    /// The sender's queue pair: frames sent on TX queue `i` go to the receiver's `i`-th
    /// enabled RX queue (modulo their number), as OVS-DPDK's default `tx-steering=thread`
    /// and testpmd's io forwarding do. A sender's burst goes to one queue of each
    /// destination: one queue-lock hold, no flow hash. The guest's own queue choice (XPS,
    /// its TX hash) spreads the flows.
    #[default]
    Queue,
    /// The frame's flow hash (OVS `tx-steering=hash`): the flows of one sender queue are
    /// spread over every RX queue of the receiver, at the cost of a hash per frame and one
    /// queue-lock hold per queue a burst reaches.
    Hash,
}

impl std::fmt::Display for RxSteer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RxSteer::Queue => "queue",
            RxSteer::Hash => "hash",
        })
    }
}

/// Errors from [`Config::validate`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("at least one --socket or --client is required")]
    NoSocket,
    #[error("too many sockets ({0}), at most {MAX_PORTS}")]
    TooManyPorts(usize),
    #[error("--queues must be between 1 and {MAX_QUEUE_PAIRS}, got {0}")]
    QueuePairs(u16),
    #[error("--queue-size must be a power of two between 2 and {MAX_QUEUE_SIZE}, got {0}")]
    QueueSize(u16),
    #[error("--mtu must be between 68 and 65535, got {0}")]
    Mtu(u16),
    #[error("--max-ports {0} is below the {1} ports given or above {MAX_PORTS}")]
    MaxPorts(usize, usize),
    #[error("more --mac values ({0}) than --socket and --client values ({1})")]
    TooManyMacs(usize, usize),
    #[error("invalid MAC address '{0}' (expected xx:xx:xx:xx:xx:xx, unicast)")]
    Mac(String),
    #[error("socket path {0} is given twice (the same socket as {1})")]
    DuplicateSocket(String, String),
    #[error("socket path {0}: {1}")]
    SocketPath(String, String),
    #[error("--socket-mode must be an octal mode within 0777, got {0:o}")]
    SocketMode(u32),
    #[error("invalid --socket-mode '{0}' (expected octal, e.g. 0660)")]
    SocketModeSyntax(String),
    #[error("--socket-group: no group '{0}'")]
    SocketGroup(String),
    #[error("--poll-us must be at most {MAX_POLL_US}, got {0}")]
    PollUs(u32),
    #[error("--workers must be between 0 (automatic) and --queues ({1}), got {0}")]
    Workers(u16, u16),
    #[error("--pmd-threads must be at most {MAX_PMD_THREADS}, got {0}")]
    PmdThreads(u16),
    #[error("--pmd-threads and --workers are two thread layouts: give one of them")]
    PmdAndWorkers,
    #[error(
        "invalid CPU list '{0}' (expected e.g. 2,4-5; at most {MAX_PMD_THREADS} CPUs, each once)"
    )]
    CpuList(String),
    #[error("--pmd-cpus names {0} CPUs but --pmd-threads asks for {1} threads")]
    PmdCpus(usize, u16),
    #[error("--pmd-cpus: CPU {0} is not one this process may run on (allowed: {1})")]
    CpuNotAllowed(usize, String),
    #[error(transparent)]
    Tap(#[from] crate::tap::TapConfigError),
}

/// Configuration of the whole switch.
#[derive(Clone, Debug)]
pub struct Config {
    /// One port per vhost-user socket path (pvnet listens): ports `0..sockets.len()`.
    pub sockets: Vec<PathBuf>,
    /// One port per vhost-user socket path a frontend listens on (pvnet connects, and
    /// reconnects whenever the connection ends): the ports after the `sockets`.
    pub clients: Vec<PathBuf>,
    /// Size of the port table (ports given at start plus those added at run time);
    /// 0 = just the ports given ([`Config::table_size`]).
    pub max_ports: usize,
    /// Queue pairs per port.
    pub queue_pairs: u16,
    /// Maximum ring size per queue.
    pub queue_size: u16,
    /// Lock kind of the per-port grant tables (readers are every buffer of every frame).
    pub grant_lock: RwLockKind,
    /// Lock kind of the per-RX-queue locks (shared by every sending worker).
    pub queue_lock: SpinLockKind,
    /// MAC address per port (config space); `None` = derived from the port index.
    pub macs: Vec<[u8; 6]>,
    /// MTU advertised in config space (feature MTU) when set.
    pub mtu: Option<u16>,
    /// Longest time a full destination RX ring holds a sender back before the frame is
    /// dropped (and the ring is treated as stalled until its guest posts buffers).
    pub backpressure_bound: Duration,
    /// Permission bits of the sockets pvnet creates (default 0600: only pvnet's user).
    pub socket_mode: u32,
    /// Group of the sockets (`None`: pvnet's primary group, as created).
    pub socket_group: Option<u32>,
    /// After a burst that found work, a worker keeps polling its rings (guest notifications
    /// off) for up to this many microseconds before it sleeps again; 0 = purely
    /// event-driven.
    pub poll_us: u32,
    /// Worker threads per port, each serving a share of the queue pairs; 0 = automatic
    /// ([`Config::worker_threads`]).
    pub workers: u16,
    /// Switch-wide polling threads, each serving queue pairs of every port (OVS-DPDK's PMD
    /// threads; [`crate::datapath::pmd`]); 0 = worker threads per port (`workers`).
    pub pmd_threads: u16,
    /// CPUs the polling threads are pinned to, one thread per CPU (OVS-DPDK's
    /// `pmd-cpu-mask`); empty: not pinned. Implies `pmd_threads` = their number.
    pub pmd_cpus: Vec<usize>,
    /// How frames from guests pick their RX queue at the destination ([`RxSteer`]; frames
    /// from tap ports are always steered by flow hash: the kernel's queue choice says
    /// nothing of the sender, and a one-queue tap would put every frame on one RX queue).
    pub rx_steer: RxSteer,
    /// Frames whose source MAC is not the port's own ([`Config::mac_of`]) are dropped and
    /// counted (OVS port security, libvirt's `no-mac-spoofing`).
    pub port_security: bool,
    /// Tap devices as extra ports (after the socket ports).
    pub uplink: crate::tap::TapConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sockets: Vec::new(),
            clients: Vec::new(),
            max_ports: 0,
            queue_pairs: 16,
            queue_size: 256,
            grant_lock: RwLockKind::Percpu,
            queue_lock: SpinLockKind::Pvqspin,
            macs: Vec::new(),
            mtu: None,
            backpressure_bound: DEFAULT_BACKPRESSURE_BOUND,
            socket_mode: crate::socket::DEFAULT_SOCKET_MODE,
            socket_group: None,
            poll_us: DEFAULT_POLL_US,
            workers: 0,
            pmd_threads: 0,
            pmd_cpus: Vec::new(),
            rx_steer: RxSteer::Queue,
            port_security: false,
            uplink: crate::tap::TapConfig::default(),
        }
    }
}

impl Config {
    /// Checks every field; returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.port_count();
        if n == 0 {
            return Err(ConfigError::NoSocket);
        }
        if n > MAX_PORTS {
            return Err(ConfigError::TooManyPorts(n));
        }
        self.uplink.validate()?;
        if self.max_ports != 0 && !(n..=MAX_PORTS).contains(&self.max_ports) {
            return Err(ConfigError::MaxPorts(self.max_ports, n));
        }
        let mut seen: Vec<(PathBuf, &PathBuf)> = Vec::with_capacity(n);
        for s in self.sockets.iter().chain(&self.clients) {
            let c = crate::socket::canonical(s)
                .map_err(|e| ConfigError::SocketPath(s.display().to_string(), e.to_string()))?;
            if let Some((_, first)) = seen.iter().find(|(p, _)| *p == c) {
                return Err(ConfigError::DuplicateSocket(
                    s.display().to_string(),
                    first.display().to_string(),
                ));
            }
            seen.push((c, s));
        }
        if self.socket_mode & !0o777 != 0 {
            return Err(ConfigError::SocketMode(self.socket_mode));
        }
        if self.queue_pairs == 0 || self.queue_pairs > MAX_QUEUE_PAIRS {
            return Err(ConfigError::QueuePairs(self.queue_pairs));
        }
        if self.queue_size < 2
            || self.queue_size > MAX_QUEUE_SIZE
            || !self.queue_size.is_power_of_two()
        {
            return Err(ConfigError::QueueSize(self.queue_size));
        }
        if let Some(m) = self.mtu {
            if m < 68 {
                return Err(ConfigError::Mtu(m));
            }
        }
        if self.poll_us > MAX_POLL_US {
            return Err(ConfigError::PollUs(self.poll_us));
        }
        if self.workers > self.queue_pairs {
            return Err(ConfigError::Workers(self.workers, self.queue_pairs));
        }
        if self.pmd_threads > MAX_PMD_THREADS {
            return Err(ConfigError::PmdThreads(self.pmd_threads));
        }
        let given = self.pmd_cpus.len();
        if given > 0 && self.pmd_threads != 0 && usize::from(self.pmd_threads) != given {
            return Err(ConfigError::PmdCpus(given, self.pmd_threads));
        }
        if given > usize::from(MAX_PMD_THREADS) {
            return Err(ConfigError::PmdThreads(
                u16::try_from(given).unwrap_or(u16::MAX),
            ));
        }
        if self.pmd_thread_count() > 0 && self.workers > 0 {
            return Err(ConfigError::PmdAndWorkers);
        }
        // (Where the affinity cannot be read, pinning itself reports the CPU at start.)
        if let (true, Ok(allowed)) = (given > 0, crate::cpus::allowed()) {
            if let Some(&c) = self.pmd_cpus.iter().find(|c| !allowed.contains(c)) {
                let list: Vec<String> = allowed.iter().map(|c| c.to_string()).collect();
                return Err(ConfigError::CpuNotAllowed(c, list.join(",")));
            }
        }
        if self.macs.len() > n {
            return Err(ConfigError::TooManyMacs(self.macs.len(), n));
        }
        Ok(())
    }

    /// Ports given at start: the `sockets`, then the `clients`, then the taps.
    pub fn port_count(&self) -> usize {
        self.vhost_port_count() + self.uplink.names.len()
    }

    /// Number of vhost-user ports given at start: the sockets, then the clients (the ports
    /// from index 0; tap ports follow them).
    pub fn vhost_port_count(&self) -> usize {
        self.sockets.len() + self.clients.len()
    }

    /// Slots of the port table: `max_ports`, or by default just the ports given at start
    /// (the `pvnet` binary's default leaves [`AUTO_SPARE_PORTS`] more, see
    /// [`Config::auto_max_ports`]).
    pub fn table_size(&self) -> usize {
        match self.max_ports {
            0 => self.port_count(),
            n => n,
        }
    }

    /// The given ports plus [`AUTO_SPARE_PORTS`] for ports added at run time, at most
    /// [`MAX_PORTS`] (at least the given ports, so that validation reports too many).
    pub fn auto_max_ports(&self) -> usize {
        (self.port_count() + AUTO_SPARE_PORTS)
            .min(MAX_PORTS)
            .max(self.port_count())
    }

    /// Switch-wide polling threads: one per `--pmd-cpus` CPU, else `--pmd-threads` (0: the
    /// workers-per-port layout).
    pub fn pmd_thread_count(&self) -> usize {
        match self.pmd_cpus.len() {
            0 => usize::from(self.pmd_threads),
            n => n,
        }
    }

    /// Worker threads per port. `--workers 0` (the default) gives each port as many threads
    /// as the CPUs this process may use can run beside the other ports' (CPUs / ports), at
    /// least one and at most one per queue pair: more threads than CPUs only add context
    /// switches (measured with DPDK virtio-user frontends on 2 CPUs, 8 queue pairs: one thread
    /// per port moved 14–20% more frames than one per pair; docs/benchmarks.md).
    pub fn worker_threads(&self) -> usize {
        self.worker_threads_for(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// [`Config::worker_threads`] on a machine with `cpus` usable CPUs.
    pub fn worker_threads_for(&self, cpus: usize) -> usize {
        let pairs = usize::from(self.queue_pairs).max(1);
        match self.workers {
            0 => (cpus / self.port_count().max(1)).clamp(1, pairs),
            n => usize::from(n).min(pairs),
        }
    }

    /// The MAC of port `idx`: the configured one, or a locally administered unicast address
    /// derived from the index (52:54:00:00:00:xx + 1).
    pub fn mac_of(&self, idx: usize) -> [u8; 6] {
        self.macs.get(idx).copied().unwrap_or([
            0x52,
            0x54,
            0x00,
            0x12,
            0x34,
            (idx as u8).wrapping_add(0x10),
        ])
    }
}

/// Parses `xx:xx:xx:xx:xx:xx` (also `-` separated) into a unicast MAC address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let err = || ConfigError::Mac(s.to_string());
    let mut out = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in out.iter_mut() {
        let p = parts.next().ok_or_else(err)?;
        if p.len() != 2 {
            return Err(err());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    if parts.next().is_some() || out[0] & 1 != 0 {
        return Err(err());
    }
    Ok(out)
}

/// Parses a CPU list as taskset and the kernel write it (`2`, `0,2-3`): each CPU once, at
/// most [`MAX_PMD_THREADS`] of them, in the order given.
///
/// ```
/// use pvnet_backend::config::parse_cpu_list;
/// assert_eq!(parse_cpu_list("3,0-1").unwrap(), [3, 0, 1]);
/// assert!(parse_cpu_list("1,1").is_err());
/// ```
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, ConfigError> {
    let err = || ConfigError::CpuList(s.to_string());
    let num = |p: &str| p.trim().parse::<usize>().map_err(|_| err());
    let mut out = Vec::new();
    for part in s.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if a > b
            || b >= crate::cpus::MAX_CPUS
            || out.len() + (b - a) >= usize::from(MAX_PMD_THREADS)
        {
            return Err(err());
        }
        for c in a..=b {
            if out.contains(&c) {
                return Err(err());
            }
            out.push(c);
        }
    }
    Ok(out)
}

/// Parses an octal permission mode (`0660`, `660` or `0o660`), at most `0777`.
pub fn parse_mode(s: &str) -> Result<u32, ConfigError> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let m =
        u32::from_str_radix(digits, 8).map_err(|_| ConfigError::SocketModeSyntax(s.to_string()))?;
    if m & !0o777 != 0 {
        return Err(ConfigError::SocketMode(m));
    }
    Ok(m)
}

/// Resolves a group name (or a numeric gid) to a gid.
pub fn parse_group(s: &str) -> Result<u32, ConfigError> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    let err = || ConfigError::SocketGroup(s.to_string());
    let name = std::ffi::CString::new(s).map_err(|_| err())?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: group is plain old data; all zeroes is a valid value for getgrnam_r to
        // overwrite.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: `name` is NUL-terminated, `grp` and
        // `out` are ours, and `buf` has `buf.len()` writable bytes.
        let r = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        if r == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if r != 0 || out.is_null() {
            return Err(err());
        }
        return Ok(grp.gr_gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config {
            sockets: vec!["/tmp/a".into()],
            ..Config::default()
        }
    }

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!(parse_cpu_list("2"), Ok(vec![2]));
        assert_eq!(parse_cpu_list("0,2-3"), Ok(vec![0, 2, 3]));
        assert_eq!(parse_cpu_list(" 5 , 1"), Ok(vec![5, 1]));
        assert_eq!(parse_cpu_list("0-63").map(|v| v.len()), Ok(64));
        for bad in [
            "", "a", "1,", "3-1", "1,1", "0-1,1", "0-64", "1024", "-1", "1-",
        ] {
            assert_eq!(
                parse_cpu_list(bad),
                Err(ConfigError::CpuList(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn defaults_validate() {
        assert_eq!(base().validate(), Ok(()));
        assert_eq!(Config::default().validate(), Err(ConfigError::NoSocket));
    }

    #[test]
    fn bad_values_rejected() {
        let mut c = base();
        c.queue_pairs = 33;
        assert_eq!(c.validate(), Err(ConfigError::QueuePairs(33)));
        c.queue_pairs = 0;
        assert!(c.validate().is_err());
        let mut c = base();
        c.queue_size = 300;
        assert_eq!(c.validate(), Err(ConfigError::QueueSize(300)));
        let mut c = base();
        c.sockets.push("/tmp/a".into());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DuplicateSocket(..))
        ));
        let mut c = base();
        c.workers = 17;
        assert_eq!(c.validate(), Err(ConfigError::Workers(17, 16)));
        c.workers = 4;
        assert_eq!(c.worker_threads(), 4);
        c.workers = 0;
        // Automatic: CPUs shared by the ports, at least one, at most one per pair.
        assert_eq!(c.worker_threads_for(2), 2);
        c.sockets.push("/tmp/b".into());
        assert_eq!(c.worker_threads_for(2), 1);
        assert_eq!(c.worker_threads_for(1), 1);
        assert_eq!(c.worker_threads_for(64), 16);
        c.pmd_threads = MAX_PMD_THREADS + 1;
        assert_eq!(
            c.validate(),
            Err(ConfigError::PmdThreads(MAX_PMD_THREADS + 1))
        );
        c.pmd_threads = 2;
        assert_eq!(c.validate(), Ok(()));
        c.workers = 1;
        assert_eq!(c.validate(), Err(ConfigError::PmdAndWorkers));
        c.workers = 0;
        c.pmd_threads = 0;
        // --pmd-cpus: one thread per CPU; a different --pmd-threads, a CPU this process may
        // not use, or --workers beside it are refused.
        let cpus = crate::cpus::allowed().expect("affinity");
        c.pmd_cpus = vec![cpus[0]];
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.pmd_thread_count(), 1);
        c.pmd_threads = 2;
        assert_eq!(c.validate(), Err(ConfigError::PmdCpus(1, 2)));
        c.pmd_threads = 1;
        assert_eq!(c.validate(), Ok(()));
        c.workers = 1;
        assert_eq!(c.validate(), Err(ConfigError::PmdAndWorkers));
        c.workers = 0;
        let outside = (0..crate::cpus::MAX_CPUS)
            .find(|x| !cpus.contains(x))
            .expect("a CPU not allowed");
        c.pmd_cpus = vec![outside];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::CpuNotAllowed(x, _)) if x == outside
        ));
        c.pmd_cpus.clear();
        c.pmd_threads = 0;
        c.poll_us = MAX_POLL_US + 1;
        assert!(c.validate().is_err());
        let mut c = base();
        c.socket_mode = 0o1777;
        assert_eq!(c.validate(), Err(ConfigError::SocketMode(0o1777)));
        let mut c = base();
        c.sockets = vec!["/nonexistent-pvnet-dir/a.sock".into()];
        assert!(matches!(c.validate(), Err(ConfigError::SocketPath(..))));
    }

    #[test]
    fn clients_and_port_table() {
        let mut c = base();
        c.clients = vec!["/tmp/c".into()];
        assert_eq!(c.validate(), Ok(()));
        assert_eq!((c.port_count(), c.table_size()), (2, 2));
        assert_eq!(c.auto_max_ports(), 2 + AUTO_SPARE_PORTS);
        c.max_ports = 1;
        assert_eq!(c.validate(), Err(ConfigError::MaxPorts(1, 2)));
        c.max_ports = MAX_PORTS + 1;
        assert!(c.validate().is_err());
        c.max_ports = 5;
        assert_eq!((c.validate(), c.table_size()), (Ok(()), 5));
        // A client path is a port path like any other: given twice, refused.
        c.clients.push("/tmp/a".into());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DuplicateSocket(..))
        ));
        let only_clients = Config {
            clients: vec!["/tmp/c".into()],
            ..Config::default()
        };
        assert_eq!(only_clients.validate(), Ok(()));
    }

    /// Different spellings of one path (repeated slashes, `.`, `..`, a symlinked directory)
    /// are the same port.
    #[test]
    fn duplicate_sockets_compared_canonically() {
        let d = std::env::temp_dir().join(format!("pvnet-cfg-dup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::os::unix::fs::symlink(d.join("sub"), d.join("link")).unwrap();
        let a = d.join("sub").join("a.sock");
        let spellings = [
            format!("{}//sub//a.sock", d.display()),
            format!("{}/sub/./a.sock", d.display()),
            format!("{}/sub/../sub/a.sock", d.display()),
            format!("{}/link/a.sock", d.display()),
        ];
        for other in spellings {
            let c = Config {
                sockets: vec![a.clone(), other.clone().into()],
                ..Config::default()
            };
            assert!(
                matches!(c.validate(), Err(ConfigError::DuplicateSocket(..))),
                "{other} not recognised as {}",
                a.display()
            );
        }
        let c = Config {
            sockets: vec![a.clone(), d.join("sub").join("b.sock")],
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn mode_and_group_parsing() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o640"), Ok(0o640));
        assert_eq!(parse_mode("1777"), Err(ConfigError::SocketMode(0o1777)));
        assert!(matches!(
            parse_mode("rw-rw----"),
            Err(ConfigError::SocketModeSyntax(_))
        ));
        assert!(parse_mode("0689").is_err());
        assert_eq!(parse_group("0"), Ok(0));
        assert_eq!(parse_group("root"), Ok(0));
        assert!(matches!(
            parse_group("no-such-group-pvnet"),
            Err(ConfigError::SocketGroup(_))
        ));
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("52:54:00:aa:bb:cc"),
            Ok([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc])
        );
        assert!(
            parse_mac("01:00:5e:00:00:01").is_err(),
            "multicast rejected"
        );
        assert!(parse_mac("52:54:00:aa:bb").is_err());
        assert!(parse_mac("52:54:00:aa:bb:cc:dd").is_err());
        assert!(parse_mac("zz:54:00:aa:bb:cc").is_err());
        let c = base();
        assert_ne!(c.mac_of(0), c.mac_of(1));
        assert_eq!(c.mac_of(0)[0] & 3, 2, "locally administered unicast");
    }
}
