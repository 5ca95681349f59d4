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
