//! # pvnet-backend
//!
//! The vhost-user virtio-net device of every port, the learning L2 switch between ports, and
//! the per-queue-pair workers that move frames between guests.
//!
//! The short version: a worker thread takes a burst of chains from a guest's TX ring
//! (`fetch`), prefetches and classifies them (learn, route by MAC, RX queue steering key),
//! and for each destination port and RX queue, under that queue's `--queue-lock` and both
//! guests' grant read guards, reserves RX buffers, copies, and publishes the used index once; full
//! destinations hold frames back (bounded), everything a guest controls is checked and every
//! refusal is a counted drop. `docs/architecture.md` draws the threads and the whole walk.
//!
//! Modules:
//!
//! * [`config`]: the validated [`Config`] (`pvnet` flags turn into it);
//! * [`server`]: [`Server::start`] binds one socket per port and runs its connection loop;
//! * [`control`]: the control socket (`pvnet ctl`): JSON-lines requests to list, add and
//!   delete ports, read counters and the MAC table, set the log level;
//! * [`metrics`]: the counters in the Prometheus text format over HTTP (`--metrics`);
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
pub mod control;
pub mod cpus;
pub mod datapath;
pub mod device;
pub mod fdb;
#[doc(hidden)]
pub mod fuzzing;
pub mod memguard;
pub mod metrics;
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
