//! The relay's layers, checked on every test run: a module may use only the modules below it.
//!
//! 1. Wire formats and codecs (`wire`, `srtp`, `codec`, `sdp`, `net`): pure, no state machines.
//! 2. Sans-IO state machines (`ice`, `dtls`, `call`, `listen`, `record`, `bot`): input plus
//!    `now` in, datagrams and events out; never the engine, the control plane or the process.
//! 3. `engine`, `control`, `ops`, `config`, `main`: threads, sockets, gRPC, the process.
//!
//! The check reads the source: every `crate::<module>` path outside comments. A new edge
//! upward fails here with the file and line, before it becomes a habit.

use std::fs;
use std::path::{Path, PathBuf};

/// Each lower module and the modules it may use.
const RULES: &[(&str, &[&str])] = &[
    ("wire", &[]),
    // The RTP vocabulary (`wire::rtp::{RtpTs, Clock, MediaTime, ...}`): codecs count time in it.
    ("codec", &["wire"]),
    ("srtp", &["wire"]),
    ("net", &["wire"]),
    ("sdp", &["wire", "srtp", "codec"]),
    ("ice", &["wire", "net"]),
    ("dtls", &["wire", "srtp", "sdp", "net"]),
];

/// Modules of layer 2 may use layers 1 and 2 (and `api`, the vocabulary they share with the
/// control plane), never layer 3.
const STATE_MACHINES: &[&str] = &["call", "listen", "record", "bot", "ice", "dtls"];
const PROCESS: &[&str] = &["engine", "control", "ops", "config"];

fn sources(module: &str) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let dir = src.join(module);
    let mut out = Vec::new();
    if dir.is_dir() {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
    }
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        out.push(file);
    }
    assert!(!out.is_empty(), "no source for module {module}");
    out
}

/// `(file, line number, module)` for every `crate::<module>` outside comments.
fn uses(module: &str) -> Vec<(PathBuf, usize, String)> {
    let mut found = Vec::new();
    for path in sources(module) {
        let text = fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    found.push((path.clone(), i + 1, name));
                }
            }
        }
    }
    found
}

#[test]
fn lower_layers_use_only_what_is_below_them() {
    let mut bad = Vec::new();
    for (module, allowed) in RULES {
        for (file, line, used) in uses(module) {
            if !allowed.contains(&used.as_str()) {
                bad.push(format!("{}:{line}: {module} uses {used}", file.display()));
            }
        }
    }
    assert!(bad.is_empty(), "layer violations:\n{}", bad.join("\n"));
}

#[test]
fn state_machines_never_reach_the_engine_the_control_plane_or_the_process() {
    let mut bad = Vec::new();
    for module in STATE_MACHINES {
        for (file, line, used) in uses(module) {
            if PROCESS.contains(&used.as_str()) {
                bad.push(format!("{}:{line}: {module} uses {used}", file.display()));
            }
        }
    }
    assert!(bad.is_empty(), "layer violations:\n{}", bad.join("\n"));
}
