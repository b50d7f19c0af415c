//! The uplink: tap devices as switch ports, so that guests reach the host's network stack
//! (and through it bridges, routes, tunnels and other hosts).
//!
//! * [`dev`]: opening (creating, or attaching to a persistent) tap device with one
//!   descriptor per queue, the virtio-net header and offloads negotiated with the kernel;
//! * [`queue`]: the tap's queues as senders share them ([`TapPort`]);
//! * [`run`]: one reader thread per tap queue (frames from the host into the switch, and the
//!   watch for room when a sender found the queue full).
//!
//! The data path's side is in `datapath`: [`TapDest`](crate::datapath::tapdest::TapDest)
//! writes frames into a queue (`writev` straight from the sender's buffers, one copy),
//! [`TapSource`](crate::datapath::tapsrc::TapSource) reads bursts of frames from a queue
//! and switches them like a guest's TX burst.

pub mod dev;
pub mod queue;
pub mod run;

pub use dev::{TapDevice, TapError};
pub use queue::{TapPort, TapQueue};
pub use run::Uplinks;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_NAME: usize = libc::IFNAMSIZ - 1;
/// Most queues per tap device.
pub const MAX_TAP_QUEUES: u16 = 32;

/// Errors in the tap part of the configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TapConfigError {
    #[error("invalid tap name '{0}' (1 to {MAX_NAME} bytes, no '/', ':' or white space)")]
    Name(String),
    #[error("tap {0} is given twice")]
    Duplicate(String),
    #[error("--tap-queues must be between 1 and {MAX_TAP_QUEUES}, got {0}")]
    Queues(u16),
}

/// The uplink part of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapConfig {
    /// Tap devices, one port each (after the socket ports).
    pub names: Vec<String>,
    /// Queues per tap (`IFF_MULTI_QUEUE` above 1).
    pub queues: u16,
    /// Pass checksum and segmentation offloads between guests and the kernel.
    pub offload: bool,
}

impl Default for TapConfig {
    fn default() -> Self {
        TapConfig {
            names: Vec::new(),
            queues: 1,
            offload: true,
        }
    }
}

impl TapConfig {
    /// Checks names and the queue count.
    pub fn validate(&self) -> Result<(), TapConfigError> {
        for (i, n) in self.names.iter().enumerate() {
            let bad = |c: char| c == '/' || c == ':' || c.is_whitespace();
            if n.is_empty() || n.len() > MAX_NAME || n.contains(bad) || n == "." || n == ".." {
                return Err(TapConfigError::Name(n.clone()));
            }
            if self.names[..i].contains(n) {
                return Err(TapConfigError::Duplicate(n.clone()));
            }
        }
        if self.queues == 0 || self.queues > MAX_TAP_QUEUES {
            return Err(TapConfigError::Queues(self.queues));
        }
        Ok(())
    }

    /// Opens every configured tap (see [`dev::open`]).
    pub fn open_all(&self) -> Result<Vec<TapDevice>, TapError> {
        self.names
            .iter()
            .map(|n| dev::open(n, self.queues, self.offload))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_and_queues_validated() {
        let ok = TapConfig {
            names: vec!["upl0".into(), "upl1".into()],
            ..TapConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        for bad in ["", "a/b", "a b", "x:1", "0123456789abcdef"] {
            let c = TapConfig {
                names: vec![bad.into()],
                ..TapConfig::default()
            };
            assert_eq!(c.validate(), Err(TapConfigError::Name(bad.into())), "{bad}");
        }
        let c = TapConfig {
            names: vec!["upl0".into(), "upl0".into()],
            ..TapConfig::default()
        };
        assert_eq!(c.validate(), Err(TapConfigError::Duplicate("upl0".into())));
        let c = TapConfig {
            queues: 0,
            ..TapConfig::default()
        };
        assert_eq!(c.validate(), Err(TapConfigError::Queues(0)));
    }
}
