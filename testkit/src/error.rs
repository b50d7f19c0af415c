//! The kit's error type.

use std::path::PathBuf;

/// Errors reported by [`crate::TestGuest`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not connect to the vhost-user socket before the retry deadline.
    #[error("cannot connect to vhost-user socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The last connection error.
        source: vhost::Error,
    },
    /// A vhost-user request failed (the device refused it or the socket broke).
    #[error("vhost-user request {request} failed: {source}")]
    Vhost {
        /// Which request.
        request: &'static str,
        /// The error from the vhost crate.
        source: vhost::Error,
    },
    /// Creating or mapping guest memory failed.
    #[error("guest memory setup failed: {0}")]
    MemorySetup(String),
    /// A guest memory access failed (address outside guest memory).
    #[error("guest memory access failed: {0}")]
    MemoryAccess(#[from] vm_memory::GuestMemoryError),
    /// An OS call failed (memfd, eventfd, poll).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The guest's bump allocator has no room left for this many bytes.
    #[error("guest memory exhausted: cannot allocate {0} bytes")]
    OutOfMemory(u64),
    /// Not enough free descriptors / avail slots for this chain.
    #[error("ring full")]
    RingFull,
    /// The queue pair does not exist in this guest.
    #[error("no such queue pair: {0}")]
    NoSuchPair(u16),
    /// The device did not negotiate something the call needs.
    #[error("device does not support {0}")]
    Unsupported(&'static str),
    /// No device connected to the listening socket before the deadline.
    #[error("no device connected to {0} in time")]
    NoDevice(PathBuf),
    /// A caller-supplied argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
