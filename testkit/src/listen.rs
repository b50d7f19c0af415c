//! Server mode: the guest's frontend listens on the socket (QEMU's
//! `-chardev socket,server=on`) and the device connects to it (pvnet `--client`). When the
//! device goes away, the frontend takes its next connection and brings it up again on the
//! same memory and rings, each ring resuming at its used index (what the device finished),
//! then kicks every ring: what QEMU does when a vhost-user backend reconnects. Frames the
//! old device took but never returned are taken again by the new one.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::Frontend;
use vhost::VhostBackend;

use crate::guest::{negotiate_protocol, region_info, set_up_vring, vh};
use crate::{Error, GuestConfig, TestGuest};

/// Waits up to `timeout` for a connection on `l`.
fn accept(l: &UnixListener, timeout: Duration) -> Result<Option<UnixStream>, Error> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(Some(s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Takes ownership and reads the feature offer.
fn greet(stream: UnixStream, nq: u64) -> Result<(Frontend, u64), Error> {
    let f = Frontend::from_stream(stream, nq);
    vh("SET_OWNER", f.set_owner())?;
    let offered = vh("GET_FEATURES", f.get_features())?;
    Ok((f, offered))
}

impl TestGuest {
    /// Listens on `socket` (replacing a stale socket file there), waits up to `timeout` for
    /// the device to connect, and brings it up as [`TestGuest::connect`] does. The guest
    /// keeps listening: [`TestGuest::reconnect`] takes the device's next connection.
    pub fn listen(socket: &Path, cfg: GuestConfig, timeout: Duration) -> Result<TestGuest, Error> {
        if std::fs::symlink_metadata(socket)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            std::fs::remove_file(socket)?;
        }
        let listener = UnixListener::bind(socket)?;
        let stream =
            accept(&listener, timeout)?.ok_or_else(|| Error::NoDevice(socket.to_path_buf()))?;
        let (frontend, offered) = greet(stream, 2 * u64::from(cfg.queue_pairs))?;
        let mut g = Self::bring_up(frontend, offered, cfg, socket)?;
        g.listener = Some(listener);
        Ok(g)
    }

    /// True when the device closed its connection (or it broke).
    pub fn device_gone(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.frontend.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// In server mode ([`TestGuest::listen`]): when the device has gone away, waits up to
    /// `timeout` for its next connection and brings it up again where the rings stand.
    /// Returns true when a new connection was set up.
    pub fn reconnect(&mut self, timeout: Duration) -> Result<bool, Error> {
        if !self.device_gone() {
            return Ok(false);
        }
        let Some(l) = self.listener.as_ref() else {
            return Err(Error::Unsupported("reconnection without TestGuest::listen"));
        };
        let Some(stream) = accept(l, timeout)? else {
            return Ok(false);
        };
        self.resume(stream)?;
        Ok(true)
    }

    /// Brings the device on `stream` up with this guest's features, memory and rings.
    fn resume(&mut self, stream: UnixStream) -> Result<(), Error> {
        let nq = 2 * u64::from(self.cfg.queue_pairs);
        let (mut frontend, offered) = greet(stream, nq)?;
        if offered & self.acked != self.acked {
            return Err(Error::Unsupported("the same features after a reconnection"));
        }
        let protocol = negotiate_protocol(&mut frontend, self.acked, nq)?;
        vh("SET_FEATURES", frontend.set_features(self.acked))?;
        let regions: Vec<_> = self.mem.regions()?.iter().map(region_info).collect();
        vh("SET_MEM_TABLE", frontend.set_mem_table(&regions))?;
        for (p, pair) in self.pairs.iter().enumerate() {
            let (rx, tx) = (pair.rx.device_used_idx(), pair.tx.device_used_idx());
            set_up_vring(&mut frontend, &self.mem, 2 * p, &pair.rx, rx)?;
            set_up_vring(&mut frontend, &self.mem, 2 * p + 1, &pair.tx, tx)?;
        }
        self.frontend = frontend;
        self.protocol = protocol;
        let n = self.cfg.queue_pairs;
        self.set_enabled_pairs(n)?;
        for pair in &mut self.pairs {
            for ring in [&mut pair.rx, &mut pair.tx] {
                ring.kick.write(1)?;
                ring.kicks += 1;
            }
        }
        log::debug!("testkit: device reconnected, features {:#x}", self.acked);
        Ok(())
    }
}
