//! Arbitrary vhost-user message sequences (no file descriptors) written to a real pvnet
//! port's socket: the process never crashes or hangs, and after each hostile frontend the
//! port answers the next one.
//!
//! Input: byte 0 even: raw bytes; odd: a sequence of messages, each
//! `[code, flags, len, ...payload]` with a well-formed header (code % 64, version 1, the
//! NEED_REPLY flag from bit 3 of `flags`, the size field lying when bit 7 is set).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvnet_backend::{Config, Server};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

struct Port {
    path: PathBuf,
    _server: Server,
}

fn port() -> &'static Port {
    static PORT: OnceLock<Port> = OnceLock::new();
    PORT.get_or_init(|| {
        // As in the pvnet binary (Rust's runtime does it for a Rust main; libFuzzer's main is
        // C++): a frontend that closes early must not kill the switch with SIGPIPE.
        // SAFETY: setting a signal disposition; no handler code involved.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let d = std::env::temp_dir().join(format!("pvnet-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp");
        let path = d.join("p0.sock");
        let server = Server::start(Config {
            sockets: vec![path.clone(), d.join("p1.sock")],
            queue_pairs: 2,
            ..Config::default()
        })
        .expect("server");
        Port {
            path,
            _server: server,
        }
    })
}

const LIMIT: Duration = Duration::from_secs(10);

fn messages(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut d = data;
    while d.len() >= 3 {
        let (code, flags, len) = (d[0] % 64, d[1], usize::from(d[2]));
        d = &d[3..];
        let n = len.min(d.len());
        let size = if flags & 0x80 != 0 {
            u32::from(flags & 0x7f) * 4
        } else {
            n as u32
        };
        let hflags = 1u32 | if flags & 0x08 != 0 { 0x8 } else { 0 };
        out.extend_from_slice(&u32::from(code).to_le_bytes());
        out.extend_from_slice(&hflags.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&d[..n]);
        d = &d[n..];
    }
    out
}

fn connect(p: &Port) -> UnixStream {
    let s = UnixStream::connect(&p.path).expect("the port's socket accepts connections");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    s.set_write_timeout(Some(LIMIT)).expect("timeout");
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let p = port();
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        messages(rest)
    };
    let mut s = connect(p);
    // The port may close on us at any point: a write error is a fine answer.
    let _ = s.write_all(&bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    // pvnet must finish with this frontend: read until it closes (replies are discarded).
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("pvnet did not close the hostile connection: {e}"),
        }
    }
    drop(s);
    // The next frontend is served: GET_FEATURES (code 1, version 1, no payload) is answered.
    let mut s = connect(p);
    let mut req = [0u8; 12];
    req[0] = 1;
    req[4] = 1;
    s.write_all(&req).expect("write GET_FEATURES");
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply)
        .expect("the port answers the next frontend");
    assert_eq!(reply[0], 1, "reply to GET_FEATURES");
});
