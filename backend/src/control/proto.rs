//! The control protocol: one JSON object per line each way (`docs/ops.md`). A request names
//! its command in `cmd`; the answer is `{"ok":true,"result":...}` or
//! `{"ok":false,"error":"..."}`. A request that fails changes nothing.

use crate::report::{locks_json, port_json, render, StatsFormat};
use crate::server::{PortInfo, PortMode, Server};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// A control request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The ports: name, kind, path, state, negotiated features, queue pairs enabled.
    // (Struct variants, also where empty: serde ignores `deny_unknown_fields` on unit
    // variants of an internally tagged enum.)
    Ports {},
    /// The counters (`format`: `json`, the default, or `text`).
    Stats {
        #[serde(default)]
        format: Format,
    },
    /// The MAC table.
    FdbShow {},
    /// Forgets every learned MAC.
    FdbFlush {},
    /// Sets the log level (`error`, `warn`, `info`, `debug`, `trace`, `off`).
    LogLevel { level: String },
    /// Adds a port: exactly one of `socket` (pvnet listens), `client` (pvnet connects) or
    /// `tap`.
    AddPort {
        #[serde(default)]
        socket: Option<PathBuf>,
        #[serde(default)]
        client: Option<PathBuf>,
        #[serde(default)]
        tap: Option<String>,
    },
    /// Deletes a port (`portN`, `N` or its path).
    DelPort { name: String },
}

/// Format of a `stats` answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Text,
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(v: Value) -> Response {
        Response {
            ok: true,
            result: Some(v),
            error: None,
        }
    }

    pub fn err(e: impl std::fmt::Display) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(e.to_string()),
        }
    }
}

/// Parses one request line: a JSON object with a known `cmd` and its fields, nothing else.
pub fn parse(line: &[u8]) -> Result<Request, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    if !v.is_object() {
        return Err("malformed request: not a JSON object".into());
    }
    serde_json::from_value(v).map_err(|e| format!("malformed request: {e}"))
}

/// Parses one request line and carries it out.
pub fn answer(server: &Server, line: &[u8]) -> Response {
    match parse(line).and_then(|req| handle(server, req)) {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(e),
    }
}

/// Carries out `req`.
pub fn handle(server: &Server, req: Request) -> Result<Value, String> {
    match req {
        Request::Ports {} => Ok(Value::Array(
            server
                .ports()
                .iter()
                .map(|p| port_info(server, p))
                .collect(),
        )),
        Request::Stats { format } => Ok(stats(server, format)),
        Request::FdbShow {} => Ok(fdb_show(server)),
        Request::FdbFlush {} => Ok(json!({ "flushed": server.switch().fdb.flush() })),
        Request::LogLevel { level } => {
            let l: log::LevelFilter = level
                .parse()
                .map_err(|_| format!("unknown log level '{level}'"))?;
            log::set_max_level(l);
            Ok(json!({ "level": l.to_string().to_lowercase() }))
        }
        Request::AddPort {
            socket,
            client,
            tap,
        } => add_port(server, socket, client, tap),
        Request::DelPort { name } => {
            let p = server.del_port(&name).map_err(|e| e.to_string())?;
            Ok(json!({ "name": p.name(), "port": p.idx, "path": p.path }))
        }
    }
}

fn add_port(
    server: &Server,
    socket: Option<PathBuf>,
    client: Option<PathBuf>,
    tap: Option<String>,
) -> Result<Value, String> {
    let (kind, path) = match (socket, client, tap) {
        (Some(p), None, None) => (PortMode::Socket, p),
        (None, Some(p), None) => (PortMode::Client, p),
        (None, None, Some(_)) => {
            return Err("tap ports are given at start (--tap), not added at run time".into())
        }
        _ => return Err("add-port takes exactly one of socket, client or tap".into()),
    };
    let idx = server.add_port(kind, &path).map_err(|e| e.to_string())?;
    Ok(json!({ "name": format!("port{idx}"), "port": idx }))
}

/// `xx:xx:xx:xx:xx:xx`.
pub fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn port_info(server: &Server, p: &PortInfo) -> Value {
    let port = &server.switch().ports[p.idx];
    let connected = port.connected.load(Ordering::Acquire);
    let state = match (connected, p.kind) {
        (true, _) => "connected",
        (false, PortMode::Socket) => "listening",
        (false, PortMode::Client) => "connecting",
        (false, PortMode::Tap) => "down",
    };
    json!({
        "name": p.name(),
        "port": p.idx,
        "kind": p.kind,
        "path": p.path,
        "state": state,
        "mac": mac_string(&port.mac),
        "features": format!("{:#x}", port.features.load(Ordering::Acquire)),
        "enabled_pairs": port.enabled_pairs(),
        "connections": port.connections.load(Ordering::Acquire),
    })
}

fn stats(server: &Server, format: Format) -> Value {
    let sw = server.switch();
    match format {
        Format::Text => Value::String(render(sw, StatsFormat::Text)),
        Format::Json => {
            let ports: Vec<Value> = sw.ports_in_use().map(|(p, _)| port_json(sw, p)).collect();
            json!({ "ports": ports, "locks": locks_json(sw) })
        }
    }
}

fn fdb_show(server: &Server) -> Value {
    let mut e = server.switch().fdb.entries();
    e.sort_by_key(|(mac, port, _)| (*port, *mac));
    Value::Array(
        e.iter()
            .map(|(mac, port, age)| json!({ "mac": mac_string(mac), "port": port, "age_s": age }))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_are_refused() {
        let r: Request = serde_json::from_str(r#"{"cmd":"stats"}"#).expect("stats");
        assert_eq!(
            r,
            Request::Stats {
                format: Format::Json
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"cmd":"del-port","name":"port1"}"#).expect("del-port");
        assert_eq!(
            r,
            Request::DelPort {
                name: "port1".into()
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"cmd":"add-port","client":"/x"}"#).expect("add-port");
        assert!(matches!(
            r,
            Request::AddPort {
                client: Some(_),
                ..
            }
        ));
        for bad in [
            r#"{"cmd":"nope"}"#,
            r#"{"cmd":"del-port"}"#,
            r#"{"cmd":"ports","extra":1}"#,
            r#"{"cmd":"stats","format":"xml"}"#,
            r#"["ports"]"#,
            "not json",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad} accepted");
        }
    }
}
