//! The control socket with ports streaming: ports added and deleted at run time while two
//! other ports stream lose those two nothing; every bad request gets an error and changes
//! nothing; a deleted port's socket is gone and its grants and MACs with it.

use pvnet_backend::control::{Control, MAX_CLIENTS, MAX_LINE};
use pvnet_backend::server::PortMode;
use pvnet_backend::{Config, Server};
use pvnet_testkit::harness::{self, tmpdir, Run};
use pvnet_testkit::{GuestConfig, TestGuest};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A control client: one request line, one answer line.
struct Ctl(BufReader<UnixStream>);

impl Ctl {
    fn connect(path: &Path) -> Ctl {
        let s = UnixStream::connect(path).expect("control socket");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        Ctl(BufReader::new(s))
    }

    fn raw(&mut self, line: &[u8]) -> Value {
        let s = self.0.get_mut();
        s.write_all(line).expect("send");
        s.write_all(b"\n").expect("send");
        self.answer()
    }

    /// Sends an oversize line: pvnet answers and hangs up before reading it all (so the
    /// sending may fail), and the answer must still come.
    fn oversize(&mut self, len: usize) -> Value {
        let s = self.0.get_mut();
        let _ = s.write_all(&vec![b'x'; len]);
        self.answer()
    }

    fn answer(&mut self) -> Value {
        let mut a = String::new();
        self.0.read_line(&mut a).expect("answer");
        serde_json::from_str(&a).unwrap_or_else(|e| panic!("answer {a:?}: {e}"))
    }

    fn call(&mut self, req: Value) -> Value {
        self.raw(req.to_string().as_bytes())
    }

    /// [`Ctl::call`] on a connection pvnet may be refusing: it answers "too many clients"
    /// and hangs up at once, so the sending may fail (EPIPE); the answer is there either way.
    fn call_maybe_refused(&mut self, req: Value) -> Value {
        let s = self.0.get_mut();
        let _ = s.write_all(format!("{req}\n").as_bytes());
        self.answer()
    }

    /// The result of a request that must succeed.
    fn ok(&mut self, req: Value) -> Value {
        let a = self.call(req.clone());
        assert_eq!(a["ok"], true, "{req} failed: {a}");
        a["result"].clone()
    }

    /// The error of a request that must fail.
    fn err(&mut self, req: &[u8]) -> String {
        let a = self.raw(req);
        assert_eq!(
            a["ok"],
            false,
            "{} accepted: {a}",
            String::from_utf8_lossy(req)
        );
        a["error"].as_str().expect("error text").to_string()
    }
}

fn start(d: &Path, max_ports: usize) -> (Arc<Server>, Control) {
    let cfg = Config {
        sockets: (0..2).map(|i| d.join(format!("p{i}.sock"))).collect(),
        queue_pairs: 2,
        max_ports,
        backpressure_bound: Duration::from_secs(5),
        ..Config::default()
    };
    let server = Arc::new(Server::start(cfg).expect("server"));
    let ctl = Control::start(&d.join("ctl.sock"), server.clone()).expect("control");
    (server, ctl)
}

/// The port list without what the guests change (state, features, ...).
fn port_list(c: &mut Ctl) -> Vec<(Value, Value, Value)> {
    let ports = c.ok(json!({"cmd": "ports"}));
    ports
        .as_array()
        .expect("list")
        .iter()
        .map(|p| (p["name"].clone(), p["kind"].clone(), p["path"].clone()))
        .collect()
}

/// Every kind of bad request: an error answer, the port list unchanged.
fn bad_requests(c: &mut Ctl, d: &Path) {
    let before = port_list(c);
    let p0 = d.join("p0.sock");
    let p0_alias = format!("{}/./p0.sock", d.display());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (br#"{"cmd":"del-port","name":"port7"}"#.to_vec(), "no port"),
        (
            br#"{"cmd":"del-port","name":"/no/such.sock"}"#.to_vec(),
            "no port",
        ),
        (
            json!({"cmd": "add-port", "socket": p0_alias})
                .to_string()
                .into_bytes(),
            "already port 0",
        ),
        (
            json!({"cmd": "add-port", "client": p0})
                .to_string()
                .into_bytes(),
            "already port 0",
        ),
        (
            br#"{"cmd":"add-port","socket":"/nonexistent-pvnet/x.sock"}"#.to_vec(),
            "socket path",
        ),
        (br#"{"cmd":"add-port"}"#.to_vec(), "exactly one"),
        (
            br#"{"cmd":"add-port","socket":"/a","client":"/b"}"#.to_vec(),
            "exactly one",
        ),
        (
            br#"{"cmd":"log-level","level":"loud"}"#.to_vec(),
            "unknown log level",
        ),
        (br#"{"cmd":"ports","extra":1}"#.to_vec(), "malformed"),
        (br#"{"cmd":"reboot"}"#.to_vec(), "malformed"),
        (br#"{"cmd":"stats""#.to_vec(), "malformed"),
        (br#"["ports"]"#.to_vec(), "malformed"),
        (b"\xff\xfe".to_vec(), "malformed"),
    ];
    for (req, want) in cases {
        let e = c.err(&req);
        assert!(e.contains(want), "{}: {e:?}", String::from_utf8_lossy(&req));
    }
    assert_eq!(port_list(c), before, "a bad request changed the ports");
    // An oversize line: an error, then the connection is closed; the switch is unchanged.
    let mut big = Ctl::connect(&d.join("ctl.sock"));
    let a = big.oversize(MAX_LINE + 4096);
    assert_eq!(a["ok"], false, "{a}");
    assert!(a["error"].to_string().contains("longer than"), "{a}");
    let mut rest = String::new();
    assert_eq!(
        big.0.read_line(&mut rest).unwrap_or(0),
        0,
        "still connected"
    );
    assert_eq!(port_list(c), before);
}

/// Adds a listening port, brings a guest up on it, deletes the port: the guest is
/// disconnected, the socket gone, nothing of the port left in the switch.
fn add_use_delete(c: &mut Ctl, server: &Server, d: &Path, round: usize) {
    let path = d.join(format!("extra{round}.sock"));
    let r = c.ok(json!({"cmd": "add-port", "socket": path}));
    let idx = r["port"].as_u64().expect("port") as usize;
    assert!(idx >= 2, "a free slot, not a streaming port's");
    let cfg = GuestConfig {
        queue_pairs: 2,
        rx_fill: Some(2048),
        mac: [2, 0, 0, 0, 9, round as u8],
        ..GuestConfig::default()
    };
    let g = TestGuest::connect(&path, cfg).expect("guest on the added port");
    harness::wait_enabled(server.switch(), idx, 2);
    assert!(!server.grants(idx).is_empty());
    let ports = c.ok(json!({"cmd": "ports"}));
    let mine = ports
        .as_array()
        .expect("list")
        .iter()
        .find(|p| p["port"] == idx)
        .expect("listed")
        .clone();
    assert_eq!(mine["state"], "connected", "{mine}");
    assert_eq!(mine["enabled_pairs"], 2, "{mine}");
    c.ok(json!({"cmd": "del-port", "name": format!("port{idx}")}));
    assert!(!path.exists(), "deleted port's socket still there");
    assert!(server.grants(idx).is_empty(), "grants of a deleted port");
    let t0 = Instant::now();
    while !g.device_gone() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "guest not disconnected"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let fdb = c.ok(json!({"cmd": "fdb-show"}));
    assert!(
        fdb.as_array()
            .expect("fdb")
            .iter()
            .all(|e| e["port"] != idx),
        "{fdb}"
    );
    // A client port whose frontend is not there (yet): listed as connecting, deletable.
    let q = d.join(format!("qemu{round}.sock"));
    let r = c.ok(json!({"cmd": "add-port", "client": q}));
    let ports = c.ok(json!({"cmd": "ports"}));
    assert!(ports.to_string().contains("connecting"), "{ports}");
    c.ok(json!({"cmd": "del-port", "name": q}));
    assert_eq!(
        c.ok(json!({"cmd": "ports"})).as_array().map(Vec::len),
        Some(2),
        "{r}"
    );
}

#[test]
fn ports_added_and_deleted_while_two_ports_stream() {
    let d = tmpdir("ctl-stream");
    let (server, control) = start(&d, 4);
    let s2 = server.clone();
    let traffic = std::thread::spawn(move || harness::run(&s2, &Run::new(2, 2, 6000)));
    let mut c = Ctl::connect(control.path());
    let mut rounds = 0;
    let mut during = 0;
    while rounds < 3 || !traffic.is_finished() {
        let streaming = !traffic.is_finished();
        add_use_delete(&mut c, &server, &d, rounds);
        if streaming && !traffic.is_finished() {
            during += 1;
        }
        rounds += 1;
        assert!(rounds < 1000, "traffic never ended");
    }
    bad_requests(&mut c, &d);
    let seen = traffic
        .join()
        .expect("traffic: the streaming ports lost frames");
    assert!(
        during > 0,
        "no port was added and deleted while the others streamed"
    );
    assert!(seen.iter().all(|s| s.received > 0));
    // The switch still takes ports after all that: the table did not leak slots.
    for i in 0..2 {
        c.ok(json!({"cmd": "add-port", "socket": d.join(format!("again{i}.sock"))}));
    }
    let e = c.err(
        json!({"cmd": "add-port", "socket": d.join("full.sock")})
            .to_string()
            .as_bytes(),
    );
    assert!(e.contains("no free port slot"), "{e}");
    control.stop();
    assert!(!d.join("ctl.sock").exists());
    server.shutdown();
}

#[test]
fn fdb_log_level_and_stats() {
    let d = tmpdir("ctl-misc");
    let (server, control) = start(&d, 2);
    let mut c = Ctl::connect(control.path());
    server.switch().fdb.learn(&[2, 0, 0, 0, 0, 0x10], 0);
    server.switch().fdb.learn(&[2, 0, 0, 0, 0, 0x11], 1);
    let fdb = c.ok(json!({"cmd": "fdb-show"}));
    let macs: Vec<_> = fdb
        .as_array()
        .expect("fdb")
        .iter()
        .map(|e| e["mac"].clone())
        .collect();
    assert!(macs.contains(&json!("02:00:00:00:00:10")), "{fdb}");
    assert!(macs.contains(&json!("02:00:00:00:00:11")), "{fdb}");
    let n = c.ok(json!({"cmd": "fdb-flush"}))["flushed"]
        .as_u64()
        .expect("count");
    assert!(n >= 2);
    assert_eq!(c.ok(json!({"cmd": "fdb-show"})), json!([]));
    let before = log::max_level();
    assert_eq!(
        c.ok(json!({"cmd": "log-level", "level": "trace"}))["level"],
        "trace"
    );
    assert_eq!(log::max_level(), log::LevelFilter::Trace);
    log::set_max_level(before);
    let seen = harness::run(&server, &Run::new(2, 2, 200));
    assert!(seen.iter().all(|s| s.received > 0));
    let st = c.ok(json!({"cmd": "stats"}));
    let ports = st["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 2);
    let tx: u64 = ports
        .iter()
        .map(|p| p["total"]["tx_frames"].as_u64().unwrap_or(0))
        .sum();
    assert!(tx >= 400, "{st}");
    let text = c.ok(json!({"cmd": "stats", "format": "text"}));
    assert!(text.as_str().expect("text").contains("tx_frames"));
    control.stop();
    server.shutdown();
}

/// Clients that connect and say nothing use up the client slots, not the switch: one more
/// is refused with an error, and a slot freed is usable again.
#[test]
fn idle_clients_are_bounded() {
    let d = tmpdir("ctl-idle");
    let (server, control) = start(&d, 2);
    let idle: Vec<_> = (0..MAX_CLIENTS)
        .map(|_| UnixStream::connect(control.path()).expect("connect"))
        .collect();
    let t0 = Instant::now();
    let mut refused = Ctl::connect(control.path());
    let a = refused.answer();
    assert_eq!(a["ok"], false, "{a}");
    assert!(a["error"].to_string().contains("too many"), "{a}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(idle);
    let t0 = Instant::now();
    loop {
        let mut c = Ctl::connect(control.path());
        let a = c.call_maybe_refused(json!({"cmd": "ports"}));
        if a["ok"] == true {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "slots never freed: {a}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    control.stop();
    server.shutdown();
}

/// A listening port whose socket file was removed behind pvnet's back (an administrator,
/// tmpfiles) is deleted all the same, and so are the ports at shutdown: stopping a port
/// does not need its path.
#[test]
fn del_port_and_shutdown_do_not_need_the_socket_file() {
    let d = tmpdir("ctl-gone");
    let (server, control) = start(&d, 4);
    let p = d.join("gone.sock");
    let idx = server.add_port(PortMode::Socket, &p).expect("add");
    // The port's loop is waiting in accept() by now (or will find the request on its way).
    std::thread::sleep(Duration::from_millis(100));
    std::fs::remove_file(&p).expect("remove the socket file");
    let s = server.clone();
    let info = harness::within(Duration::from_secs(5), "del-port", move || {
        s.del_port(&format!("port{idx}"))
    })
    .expect("deleted");
    assert_eq!(info.idx, idx);
    control.stop();
    std::fs::remove_file(d.join("p0.sock")).expect("remove the socket file");
    harness::within(Duration::from_secs(5), "shutdown", move || {
        server.shutdown()
    });
}

/// The control socket stops even when its socket file was removed behind pvnet's back.
#[test]
fn control_stop_does_not_need_the_socket_file() {
    let d = tmpdir("ctl-gone2");
    let (server, control) = start(&d, 2);
    std::thread::sleep(Duration::from_millis(100));
    std::fs::remove_file(d.join("ctl.sock")).expect("remove the socket file");
    harness::within(Duration::from_secs(5), "Control::stop", move || {
        control.stop()
    });
    server.shutdown();
}
