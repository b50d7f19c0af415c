//! # pvnet-backend
//!
//! The vhost-user virtio-net device of every port, the learning L2 switch between ports, and
//! the per-queue-pair workers that move frames between guests:
//!
//! * [`config`]: the validated [`Config`] (`pvnet` flags turn into it);
//! * [`server`]: [`Server::start`] binds one socket per port and runs its connection loop;
//! * [`socket`]: creating a port's socket safely (mode, group, stale and live sockets);
//! * [`device`]: the `VhostUserBackend` implementation (features, config space, memory,
//!   dispatch of worker events);
//! * [`datapath`]: TX bursts → switch → RX rings, with grant copies, back-pressure,
//!   notification suppression, adaptive polling and offloads (its module documentation
//!   names every step and the function that does it);
//! * [`switch`], [`fdb`]: ports, RX queues under the `--queue-lock` kind, MAC table;
//! * [`stats`], [`report`]: per-port, per-queue counters and their text/JSON rendering;
//! * [`memguard`]: vetting guest memory files; containing a truncation's `SIGBUS` to its port;
//! * [`tap`]: tap devices as switch ports (the uplink to the host's network);
//! * [`net`]: header parsing, flow hash, checksums, software segmentation.

pub mod config;
pub mod datapath;
pub mod device;
pub mod fdb;
#[doc(hidden)]
pub mod fuzzing;
pub mod memguard;
pub mod net;
pub mod report;
pub mod server;
pub mod socket;
pub mod stats;
pub mod switch;
pub mod tap;

pub use config::{parse_group, parse_mac, parse_mode, Config, ConfigError};
pub use server::{ServeError, Server};
pub use switch::Switch;
