//! Validated switch configuration (built from the CLI flags in the `pvnet` binary).

use pvnet_locks::{RwLockKind, SpinLockKind};
use std::path::PathBuf;
use std::time::Duration;

/// Default [`Config::backpressure_bound`].
pub const DEFAULT_BACKPRESSURE_BOUND: Duration = Duration::from_secs(1);

/// Most queue pairs per port: `queues_per_thread` masks are 64-bit and every pair uses two
/// bits (RX, TX).
pub const MAX_QUEUE_PAIRS: u16 = 32;
/// Largest split-ring size virtio allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Largest number of ports (sockets); the FDB packs the port index into 8 bits.
pub const MAX_PORTS: usize = 64;

/// Errors from [`Config::validate`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("at least one --socket is required")]
    NoSocket,
    #[error("too many sockets ({0}), at most {MAX_PORTS}")]
    TooManyPorts(usize),
    #[error("--queues must be between 1 and {MAX_QUEUE_PAIRS}, got {0}")]
    QueuePairs(u16),
    #[error("--queue-size must be a power of two between 2 and {MAX_QUEUE_SIZE}, got {0}")]
    QueueSize(u16),
    #[error("--mtu must be between 68 and 65535, got {0}")]
    Mtu(u16),
    #[error("more --mac values ({0}) than --socket values ({1})")]
    TooManyMacs(usize, usize),
    #[error("invalid MAC address '{0}' (expected xx:xx:xx:xx:xx:xx, unicast)")]
    Mac(String),
    #[error("socket path {0} is given twice")]
    DuplicateSocket(String),
}

/// Configuration of the whole switch.
#[derive(Clone, Debug)]
pub struct Config {
    /// One port per vhost-user socket path (pvnet listens).
    pub sockets: Vec<PathBuf>,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sockets: Vec::new(),
            queue_pairs: 16,
            queue_size: 256,
            grant_lock: RwLockKind::Percpu,
            queue_lock: SpinLockKind::Pvqspin,
            macs: Vec::new(),
            mtu: None,
            backpressure_bound: DEFAULT_BACKPRESSURE_BOUND,
        }
    }
}

impl Config {
    /// Checks every field; returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sockets.is_empty() {
            return Err(ConfigError::NoSocket);
        }
        if self.sockets.len() > MAX_PORTS {
            return Err(ConfigError::TooManyPorts(self.sockets.len()));
        }
        for (i, s) in self.sockets.iter().enumerate() {
            if self.sockets[..i].contains(s) {
                return Err(ConfigError::DuplicateSocket(s.display().to_string()));
            }
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
        if self.macs.len() > self.sockets.len() {
            return Err(ConfigError::TooManyMacs(
                self.macs.len(),
                self.sockets.len(),
            ));
        }
        Ok(())
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
        assert!(matches!(c.validate(), Err(ConfigError::DuplicateSocket(_))));
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
