//! Guest configuration and the device configuration space as the driver reads it.

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::*;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// virtio-net feature masks (`1 << bit`), for building [`GuestConfig::features`]. The list of
/// what pvnet offers is pvnet's own ([`features::pvnet_offered`]); these are
/// names for single bits.
pub mod features {
    use super::*;

    /// `VIRTIO_F_VERSION_1`: modern device, 12-byte net header.
    pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    /// `VIRTIO_NET_F_MRG_RXBUF`: a frame may span several RX buffers.
    pub const MRG_RXBUF: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
    /// `VIRTIO_NET_F_MQ`: several queue pairs.
    pub const MQ: u64 = 1 << VIRTIO_NET_F_MQ;
    /// `VIRTIO_NET_F_CSUM`: the driver may send partially checksummed frames.
    pub const CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
    /// `VIRTIO_NET_F_GUEST_CSUM`: the driver accepts partially checksummed frames.
    pub const GUEST_CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;
    /// `VIRTIO_NET_F_HOST_TSO4`: the driver may send TSOv4 super-frames.
    pub const HOST_TSO4: u64 = 1 << VIRTIO_NET_F_HOST_TSO4;
    /// `VIRTIO_NET_F_HOST_TSO6`: the driver may send TSOv6 super-frames.
    pub const HOST_TSO6: u64 = 1 << VIRTIO_NET_F_HOST_TSO6;
    /// `VIRTIO_NET_F_HOST_ECN`: TSO with ECN.
    pub const HOST_ECN: u64 = 1 << VIRTIO_NET_F_HOST_ECN;
    /// `VIRTIO_NET_F_GUEST_TSO4`: the driver accepts TSOv4 super-frames.
    pub const GUEST_TSO4: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;
    /// `VIRTIO_NET_F_GUEST_TSO6`: the driver accepts TSOv6 super-frames.
    pub const GUEST_TSO6: u64 = 1 << VIRTIO_NET_F_GUEST_TSO6;
    /// `VIRTIO_NET_F_GUEST_ECN`: the driver accepts TSO with ECN.
    pub const GUEST_ECN: u64 = 1 << VIRTIO_NET_F_GUEST_ECN;
    /// `VIRTIO_NET_F_STATUS`: config space has a link status.
    pub const STATUS: u64 = 1 << VIRTIO_NET_F_STATUS;
    /// `VIRTIO_NET_F_MTU`: config space has an MTU.
    pub const MTU: u64 = 1 << VIRTIO_NET_F_MTU;
    /// `VIRTIO_NET_F_MAC`: config space has a MAC address.
    pub const MAC: u64 = 1 << VIRTIO_NET_F_MAC;
    /// `VIRTIO_RING_F_EVENT_IDX`: used_event / avail_event notification suppression.
    pub const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
    /// `VIRTIO_RING_F_INDIRECT_DESC`: indirect descriptor tables.
    pub const INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
    /// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30); the kit always requests it when offered.
    pub const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

    /// Everything pvnet's device offers ([`pvnet_backend::device::offered_features`], MTU
    /// included) but `PROTOCOL_FEATURES`, which the kit adds by itself: what a Linux guest
    /// negotiates with pvnet, and the default of [`GuestConfig::features`]. A test that wants
    /// a guest without something removes that bit.
    pub fn pvnet_offered() -> u64 {
        pvnet_backend::device::offered_features(true) & !PROTOCOL_FEATURES
    }
}

/// How the test guest is built and what it asks the device for.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// Queue pairs to set up (RX vring `2*i`, TX vring `2*i+1`). Default 1.
    pub queue_pairs: u16,
    /// Ring size of every vring (power of two, at most 32768). Default 256.
    pub queue_size: u16,
    /// Guest memory size in bytes, split into memfd regions: `[0, size/4)` and
    /// `[size/4, size/2)` (adjacent, separate files), then a gap, then `size/2` bytes at 4 GiB.
    /// Must be a multiple of 16 KiB and at least 1 MiB. Default 64 MiB.
    pub mem_size: usize,
    /// The guest's own MAC address (used by tests as the source MAC; the kit does not filter).
    pub mac: [u8; 6],
    /// virtio-net feature bits the driver wants; the kit ANDs them with the device's offer.
    /// Default [`features::pvnet_offered`].
    pub features: u64,
    /// Put the net header and the frame in separate TX descriptors (the frame itself is then
    /// cut into descriptors of at most 16 KiB), as Linux does for an skb without headroom.
    /// Default false: one descriptor per frame. Pre-filled TX slots
    /// ([`crate::TestGuest::fill_tx`]) always take one descriptor.
    pub tx_split: bool,
    /// Fill every RX ring with buffers of this many bytes (one writable descriptor each, a
    /// ring's worth) before the rings are enabled, as a Linux guest does when it brings the
    /// device up. Default `None`: the test posts buffers itself ([`crate::TestGuest::post_rx`]).
    pub rx_fill: Option<u32>,
    /// At most this many TX frames in flight per queue pair ([`crate::TestGuest::send`] reports
    /// [`crate::Error::RingFull`] beyond it, as a driver with byte queue limits stops its
    /// queue). Default `None`: as many as the ring has descriptors.
    pub tx_limit: Option<u16>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            queue_pairs: 1,
            queue_size: 256,
            mem_size: 64 << 20,
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            features: features::pvnet_offered(),
            tx_split: false,
            rx_fill: None,
            tx_limit: None,
        }
    }
}

/// The fields of `struct virtio_net_config` the driver reads with `GET_CONFIG`
/// (the first 12 bytes: what QEMU asks for when MTU is offered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// Device MAC address.
    pub mac: [u8; 6],
    /// Link status (`VIRTIO_NET_S_LINK_UP` = 1).
    pub status: u16,
    /// Maximum number of queue pairs.
    pub max_virtqueue_pairs: u16,
    /// Device MTU.
    pub mtu: u16,
}

impl NetConfig {
    /// Bytes of config space the driver requests (mac, status, max_virtqueue_pairs, mtu).
    pub const LEN: usize = 12;

    /// Decodes the little-endian config-space bytes; `None` if fewer than [`Self::LEN`].
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < Self::LEN {
            return None;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[..6]);
        Some(NetConfig {
            mac,
            status: u16::from_le_bytes([b[6], b[7]]),
            max_virtqueue_pairs: u16::from_le_bytes([b[8], b[9]]),
            mtu: u16::from_le_bytes([b[10], b[11]]),
        })
    }

    /// Encodes the fields as the device lays them out in config space.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..6].copy_from_slice(&self.mac);
        b[6..8].copy_from_slice(&self.status.to_le_bytes());
        b[8..10].copy_from_slice(&self.max_virtqueue_pairs.to_le_bytes());
        b[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_config_round_trip() {
        let c = NetConfig {
            mac: [1, 2, 3, 4, 5, 6],
            status: 1,
            max_virtqueue_pairs: 16,
            mtu: 1500,
        };
        let b = c.to_bytes();
        assert_eq!(&b[..6], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(b[8], 16);
        assert_eq!(NetConfig::from_bytes(&b), Some(c));
        assert_eq!(NetConfig::from_bytes(&b[..11]), None);
    }
}
