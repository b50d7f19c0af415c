//! Per-packet helpers for the switch's data path: the virtio-net header, Ethernet/IP/TCP/UDP
//! header parsing, the flow hash that picks a receive queue, the internet checksum and software
//! segmentation (TSO/USO) for receivers that did not negotiate the matching offload.
//!
//! Everything here is a pure function over byte slices: no I/O, no vhost types, no allocation
//! and no panics on any input. Every byte handed to these functions is guest-controlled, so
//! malformed input is reported with a typed error (`thiserror`) and the caller drops the frame.
//!
//! Typical use on the TX → RX path:
//! 1. [`hdr::VirtioNetHdr::from_bytes`] on the first [`hdr::net_hdr_len`] bytes of the chain;
//! 2. [`eth::EthInfo::parse`] for the switch (destination MAC, [`eth::is_multicast`]);
//! 3. [`flow::flow_hash`] to choose the destination RX queue (`--rx-steer hash`, and frames
//!    from taps);
//! 4. [`gso::plan`] against the receiver's negotiated features, then either copy the header
//!    through, finish the checksum ([`csum::complete_csum`] / [`csum::csum_patch`]) or
//!    [`gso::segment`] the frame into MSS-sized frames.

pub mod csum;
pub mod eth;
pub mod flow;
pub mod gso;
pub mod hdr;

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod testutil;

pub use csum::{complete_csum, csum_patch, internet_checksum, Checksum, CsumError};
pub use eth::{is_multicast, parse_packet, EthInfo, L3Hdr, L4Hdr, PacketInfo, ParseError};
pub use flow::{flow_hash, HASH_PREFIX};
pub use gso::{
    plan, segment, segment_all, segments_needed, Delivery, GsoError, InvalidGso, SCRATCH_LEN,
};
pub use hdr::{net_hdr_len, HdrError, HdrWords, VirtioNetHdr};
