//! `pvnet ctl`: talks to a running pvnet through its control socket (one JSON request line,
//! one JSON answer line; the protocol is in `docs/ops.md`).

use anyhow::{anyhow, bail, Context};
use pvnet_backend::control::proto::{Format, Request, Response};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// The control socket's default path: `$XDG_RUNTIME_DIR/pvnet/control.sock`, or
/// `/run/pvnet/control.sock` without `XDG_RUNTIME_DIR`.
pub fn default_control_path() -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/run"), PathBuf::from);
    dir.join("pvnet").join("control.sock")
}

/// Flags of `pvnet ctl`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Control socket of the pvnet to talk to (default: $XDG_RUNTIME_DIR/pvnet/control.sock,
    /// or /run/pvnet/control.sock).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// `pvnet ctl` commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List the ports: name, kind, path, state, MAC, negotiated features, pairs enabled.
    Ports {
        /// Print the JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// Print the counters (per port, per queue pair, and the lock counters).
    Stats {
        /// JSON instead of the text table.
        #[arg(long)]
        json: bool,
    },
    /// The MAC table.
    Fdb {
        #[command(subcommand)]
        op: FdbOp,
    },
    /// Add a port: exactly one of --socket, --client or --tap.
    AddPort {
        /// A socket pvnet creates and listens on.
        #[arg(long, value_name = "PATH", group = "what", required = true)]
        socket: Option<PathBuf>,
        /// A socket a frontend listens on; pvnet connects and reconnects.
        #[arg(long, value_name = "PATH", group = "what")]
        client: Option<PathBuf>,
        /// A tap device (the uplink).
        #[arg(long, value_name = "NAME", group = "what")]
        tap: Option<String>,
    },
    /// Delete a port (its guest is disconnected, its socket removed).
    DelPort {
        /// `portN`, `N`, or the port's socket path.
        name: String,
    },
    /// Set the log level: off, error, warn, info, debug or trace.
    LogLevel { level: String },
}

/// `pvnet ctl fdb` operations.
#[derive(Debug, clap::Subcommand)]
pub enum FdbOp {
    /// List the learned MACs with their ports and ages.
    Show {
        /// Print the JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// Forget every learned MAC.
    Flush,
}

/// A path made absolute against this process's directory (pvnet's may differ).
fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    std::path::absolute(&p).with_context(|| format!("{}", p.display()))
}

fn request_of(cmd: &Cmd) -> anyhow::Result<Request> {
    Ok(match cmd {
        Cmd::Ports { .. } => Request::Ports {},
        Cmd::Stats { json } => Request::Stats {
            format: if *json { Format::Json } else { Format::Text },
        },
        Cmd::Fdb {
            op: FdbOp::Show { .. },
        } => Request::FdbShow {},
        Cmd::Fdb { op: FdbOp::Flush } => Request::FdbFlush {},
        Cmd::AddPort {
            socket,
            client,
            tap,
        } => Request::AddPort {
            socket: socket.clone().map(absolute).transpose()?,
            client: client.clone().map(absolute).transpose()?,
            tap: tap.clone(),
        },
        Cmd::DelPort { name } => Request::DelPort { name: name.clone() },
        Cmd::LogLevel { level } => Request::LogLevel {
            level: level.clone(),
        },
    })
}

/// Sends `req` to the control socket at `path` and returns the answer.
pub fn call(path: &std::path::Path, req: &Request) -> anyhow::Result<Response> {
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("cannot connect to control socket {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    if answer.is_empty() {
        bail!("control socket closed without an answer");
    }
    Ok(serde_json::from_str(&answer)?)
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

fn print_ports(v: &Value) {
    println!(
        "{:<8} {:<7} {:<11} {:<17} {:>12} {:>6}  path",
        "name", "kind", "state", "mac", "features", "pairs"
    );
    for p in v.as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<7} {:<11} {:<17} {:>12} {:>6}  {}",
            str_of(p, "name"),
            str_of(p, "kind"),
            str_of(p, "state"),
            str_of(p, "mac"),
            str_of(p, "features"),
            p["enabled_pairs"].to_string(),
            str_of(p, "path"),
        );
    }
}

fn print_fdb(v: &Value) {
    println!("{:<17} {:>5} {:>6}", "mac", "port", "age_s");
    for e in v.as_array().into_iter().flatten() {
        println!(
            "{:<17} {:>5} {:>6}",
            str_of(e, "mac"),
            e["port"].to_string(),
            e["age_s"].to_string()
        );
    }
}

fn print(cmd: &Cmd, v: &Value) {
    // A closed stdout (`pvnet ctl stats | head`) ends the output quietly, not with a panic.
    // SAFETY: restoring the default SIGPIPE action before anything is written; this
    // process writes nothing else.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match cmd {
        Cmd::Ports { json: false } => print_ports(v),
        Cmd::Fdb {
            op: FdbOp::Show { json: false },
        } => print_fdb(v),
        Cmd::Stats { json: false } => print!("{}", v.as_str().unwrap_or_default()),
        _ => println!("{v}"),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = args.control.clone().unwrap_or_else(default_control_path);
    let req = request_of(&args.cmd)?;
    let resp = call(&path, &req)?;
    if !resp.ok {
        return Err(anyhow!(resp.error.unwrap_or_else(|| "failed".into())));
    }
    print(&args.cmd, resp.result.as_ref().unwrap_or(&Value::Null));
    Ok(())
}
