//! Setting up a Linux tap device: `/dev/net/tun` opened once per queue, `TUNSETIFF` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (and `IFF_MULTI_QUEUE` for more than one queue),
//! `TUNSETVNETHDRSZ` (the 12-byte header of VIRTIO_F_VERSION_1), `TUNSETOFFLOAD` (which
//! offloads the kernel may leave undone in the frames it hands over), and the interface
//! brought up with `SIOCSIFFLAGS`. Request numbers and flags come from the `libc` crate.
//!
//! A device that did not exist is created non-persistent: the kernel removes it when the
//! last of its descriptors closes, so it goes away with pvnet whatever way pvnet exits. A
//! persistent device that already exists (`ip tuntap add ... mode tap [multi_queue]`) is
//! attached to and left in place.

use crate::net::hdr::HDR_LEN;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Errors setting up a tap device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap {name}: cannot open /dev/net/tun: {err}")]
    Open { name: String, err: io::Error },
    #[error("tap {name}: TUNSETIFF (queue {queue}) failed: {err}")]
    SetIff {
        name: String,
        queue: usize,
        err: io::Error,
    },
    #[error("tap {name}: {what} failed: {err}")]
    Ioctl {
        name: String,
        what: &'static str,
        err: io::Error,
    },
}

/// Offloads asked of the kernel with `TUNSETOFFLOAD` when offloads are on: frames it hands
/// over may carry a partial checksum (`NEEDS_CSUM`) and be TCP segmentation jobs.
pub const OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// An open tap device: one non-blocking descriptor per queue.
#[derive(Debug)]
pub struct TapDevice {
    pub name: String,
    pub fds: Vec<OwnedFd>,
    /// Whether pvnet created it (it goes away with the descriptors).
    pub created: bool,
    /// `TUNSETOFFLOAD` accepted [`OFFLOADS`].
    pub offload: bool,
}

/// Whether a network interface `name` exists in this network namespace.
pub fn exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (arrays, integers, a union of them); all-zero is valid.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    r
}

fn open_queue(name: &str, flags: libc::c_int, queue: usize) -> Result<OwnedFd, TapError> {
    const DEV: &CStr = c"/dev/net/tun";
    // SAFETY: a NUL-terminated path and plain flags; the result is checked below.
    let fd = unsafe {
        libc::open(
            DEV.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(TapError::Open {
            name: name.into(),
            err: io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut r = ifreq(name);
    // The flags fit the kernel's 16-bit ifr_flags.
    r.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads (and writes back the name into) the ifreq we own.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut r) };
    if rc < 0 {
        return Err(TapError::SetIff {
            name: name.into(),
            queue,
            err: io::Error::last_os_error(),
        });
    }
    Ok(fd)
}

fn ioctl_int(
    fd: RawFd,
    name: &str,
    what: &'static str,
    req: libc::Ioctl,
    v: libc::c_int,
) -> Result<(), TapError> {
    // SAFETY: the request takes a pointer to an int that lives for the call.
    let rc = unsafe { libc::ioctl(fd, req, &v) };
    if rc < 0 {
        return Err(TapError::Ioctl {
            name: name.into(),
            what,
            err: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Brings interface `name` up (`IFF_UP`).
pub fn set_up(name: &str) -> Result<(), TapError> {
    let err = |what| TapError::Ioctl {
        name: name.into(),
        what,
        err: io::Error::last_os_error(),
    };
    // SAFETY: plain socket creation; the result is checked.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(err("socket"));
    }
    // SAFETY: `s` was just created and is owned by nobody else.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let mut r = ifreq(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq we own.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r) } < 0 {
        return Err(err("SIOCGIFFLAGS"));
    }
    // SAFETY: the kernel just wrote ifru_flags, the union member read here.
    let flags = unsafe { r.ifr_ifru.ifru_flags };
    r.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &r) } < 0 {
        return Err(err("SIOCSIFFLAGS"));
    }
    Ok(())
}

/// Opens (creating it if missing) tap `name` with `queues` queues, asks for [`OFFLOADS`]
/// when `offload` (none otherwise), and brings it up.
pub fn open(name: &str, queues: u16, offload: bool) -> Result<TapDevice, TapError> {
    let created = !exists(name);
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if queues > 1 {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    let fds = (0..usize::from(queues.max(1)))
        .map(|q| open_queue(name, flags, q))
        .collect::<Result<Vec<_>, _>>()?;
    for fd in &fds {
        let fd = fd.as_raw_fd();
        // HDR_LEN (12) fits an int.
        let hl = HDR_LEN as libc::c_int;
        ioctl_int(fd, name, "TUNSETVNETHDRSZ", libc::TUNSETVNETHDRSZ, hl)?;
        let want = if offload { OFFLOADS } else { 0 };
        // TUNSETOFFLOAD takes its argument by value.
        // SAFETY: an integer argument, no memory is passed.
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, want as libc::c_ulong) };
        if rc < 0 {
            return Err(TapError::Ioctl {
                name: name.into(),
                what: "TUNSETOFFLOAD",
                err: io::Error::last_os_error(),
            });
        }
    }
    set_up(name)?;
    Ok(TapDevice {
        name: name.into(),
        fds,
        created,
        offload,
    })
}
