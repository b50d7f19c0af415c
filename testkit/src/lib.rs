//! pvnet-testkit: pvnet's in-process vhost-user *frontend* (the part QEMU plays) plus a
//! split-ring virtio-net driver (the part the guest kernel plays), for driving a vhost-user
//! net device over its real Unix socket from tests and benchmarks. It is the only such driver
//! in the project; the model is vhost-user-backend's own `tests/vhost-user-server.rs`.
//!
//! * Guest memory lives in several `memfd` regions (two adjacent ones, then a gap, then a high
//!   one above 4 GiB) that are passed to the device with `SET_MEM_TABLE`, exactly as QEMU does
//!   with `memory-backend-memfd,share=on`.
//! * [`TestGuest`] negotiates features (by default everything pvnet offers:
//!   [`features::pvnet_offered`]), sets up `2 * queue_pairs` rings (RX ring of pair `i` is
//!   vring `2*i`, TX ring is `2*i + 1`), posts RX buffers and TX chains like a guest, honours
//!   `VIRTIO_RING_F_EVENT_IDX` in both directions, and reassembles mergeable RX buffers.
//!   Ring fields are read and written directly (atomics on the mapped memory), as a guest
//!   driver does.
//! * Polling mode (`poll`): bursts of pre-filled single-descriptor TX frames, no
//!   notifications while busy, sleeping on the call eventfds when idle, received frames
//!   counted (and optionally read) in place: the driver of the benchmarks.
//! * Server mode (`listen`): the frontend listens and the device connects (pvnet
//!   `--client`); when the device goes away, [`TestGuest::reconnect`] brings its next
//!   connection up on the same memory and rings, as QEMU does.
//! * Misbehaviour (`hostile`): arbitrary descriptor chains ([`RawDesc`]), indirect tables,
//!   chains re-published without waiting, bare kicks, bogus avail indexes, a closed socket, a
//!   replaced memory table.
//! * [`frames`] builds Ethernet / IPv4 / IPv6 / TCP / UDP frames with correct checksums, and
//!   [`frames::tagged`] frames that say what they are and catch any corruption.
//! * [`harness`] runs pvnet's switch with several guests exchanging tagged frames;
//!   [`procstat`] reads what the process holds (fds, threads, mappings, RSS).
//!
//! The virtio-net header type is pvnet's own ([`VirtioNetHdr`], from `pvnet_backend::net`),
//! and so is the list of offered features.
//!
//! A `TestGuest` is used from one thread; run several in parallel threads for multi-port tests.
//!
//! ```no_run
//! use std::time::Duration;
//! use pvnet_testkit::{frames, GuestConfig, TestGuest, VirtioNetHdr};
//!
//! # fn main() -> Result<(), pvnet_testkit::Error> {
//! let cfg = GuestConfig { queue_pairs: 4, ..GuestConfig::default() };
//! let mut g = TestGuest::connect(std::path::Path::new("/tmp/pvnet0.sock"), cfg)?;
//! for pair in 0..4 {
//!     g.post_rx(pair, 256, 2048)?; // mergeable RX buffers, re-posted automatically
//! }
//! let f = frames::ipv4_udp(
//!     [2, 0, 0, 0, 0, 1], frames::BROADCAST, [10, 0, 0, 1], [10, 0, 0, 255], 7, 7, b"hi",
//! );
//! g.send(0, &VirtioNetHdr::plain(), &f)?;
//! let got = g.recv_until(None, 1, Duration::from_secs(5))?; // Vec<(pair, RxFrame)>
//! println!("{} frames, rx/tx notifications on pair 0: {:?}", got.len(), g.notifications(0));
//! g.disconnect();
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod config;
mod error;
pub mod frames;
mod guest;
pub mod harness;
mod hostile;
mod listen;
mod mem;
mod poll;
pub mod procstat;
mod ring;
mod txrx;

pub use config::{features, GuestConfig, NetConfig};
pub use error::Error;
pub use guest::{Repost, TestGuest};
pub use hostile::{desc, RawDesc, RawNext};
pub use poll::PollStats;
pub use pvnet_backend::net::VirtioNetHdr;
pub use txrx::RxFrame;

/// Index of the RX vring of queue pair `pair`.
pub const fn rx_queue_index(pair: u16) -> usize {
    2 * pair as usize
}

/// Index of the TX vring of queue pair `pair`.
pub const fn tx_queue_index(pair: u16) -> usize {
    2 * pair as usize + 1
}
