//! `ferrollama serve` as a process: it reports its port, answers, and on SIGTERM lets a
//! stream in flight finish before it exits cleanly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

mod common;

#[test]
fn sigterm_finishes_the_stream_in_flight_then_exits() {
    let (mut child, addr, mut err) = common::start_server(&["--parallel", "2", "--ctx", "512"]);
    let body = r#"{"prompt":"Once upon a time","max_tokens":40,"stream":true,"ignore_eos":true,"temperature":0}"#;
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 512];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("200 OK"));

    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("data: [DONE]"), "stream cut short: {rest}");
    let chunks = rest.matches("\"finish_reason\":\"length\"").count();
    assert_eq!(chunks, 1, "{rest}");

    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut tail = String::new();
    err.read_to_string(&mut tail).unwrap();
    assert!(tail.contains("shutting down"), "{tail}");
    assert!(!tail.contains("panicked"), "{tail}");
    assert!(
        TcpStream::connect(&addr).is_err(),
        "still accepting connections"
    );
}

/// `--lora-module NAME=DIR` serves an adapter under a name; specs that cannot be served
/// (no name, a taken name, no adapter there) stop the server before it listens.
#[test]
fn lora_modules_are_listed_and_bad_ones_refused() {
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/tiny");
    let model = format!("{tiny}/tiny-260k-q8_0.gguf");
    let module = format!("fortune={tiny}/lora-r4:0.5");
    let (mut child, addr, _err) =
        common::start_server(&["--model", &model, "--lora-module", &module]);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut listed = String::new();
    s.read_to_string(&mut listed).unwrap();
    assert!(listed.contains(r#""id":"fortune""#), "{listed}");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    for (spec, needle) in [
        (format!("={tiny}/lora-r4"), "NAME=DIR"),
        (format!("tiny-260k-q8_0={tiny}/lora-r4"), "taken"),
        (format!("x={tiny}"), "adapter_config.json"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrollama"))
            .args([
                "serve",
                "--port",
                "0",
                "--model",
                &model,
                "--lora-module",
                &spec,
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{spec}: {err}"
        );
    }
}
