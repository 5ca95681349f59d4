//! What the command-line tests share: starting `ferrollama serve` on a free port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};

/// `ferrollama serve --port 0 ARGS...`, its address (once it printed it) and the rest of
/// its stderr.
pub fn start_server(args: &[&str]) -> (Child, String, BufReader<ChildStderr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrollama"))
        .args(["serve", "--port", "0"])
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "server exited early");
        if let Some(a) = line.trim().strip_prefix("listening on http://") {
            break a.to_string();
        }
    };
    (child, addr, err)
}
