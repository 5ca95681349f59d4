//! chat, generate and serve run one decode engine: the same prompt, seed and sampling
//! settings give the same text through all three (sampled, not greedy, so the seeded
//! sampler and the vocabulary masking are on the path too).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

const QUESTION: &str = "Name three things people keep in a kitchen.";
const SEED: &str = "11";
const MAX_TOKENS: &str = "24";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrollama"))
}

fn stdout_of(mut cmd: Command, stdin: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // Both commands end the reply with one newline of their own.
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

fn served_reply() -> String {
    let (mut child, addr, _stderr) = common::start_server(&["--parallel", "2", "--ctx", "2048"]);
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": QUESTION}],
        "seed": SEED.parse::<u64>().unwrap(),
        "max_tokens": MAX_TOKENS.parse::<u64>().unwrap(),
    })
    .to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let json = &reply[reply.find("\r\n\r\n").expect("no body") + 4..];
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {reply}"));
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn chat_generate_and_serve_give_the_same_text() {
    let mut chat = bin();
    chat.args(["chat", "--seed", SEED, "-n", MAX_TOKENS]);
    let chatted = stdout_of(chat, &format!("{QUESTION}\n"));

    let mut generate = bin();
    generate.args([
        "generate", "--chat", "--seed", SEED, "-n", MAX_TOKENS, "-p", QUESTION,
    ]);
    let generated = stdout_of(generate, "");

    let served = served_reply();
    assert!(!chatted.trim().is_empty(), "empty reply");
    assert_eq!(chatted, generated, "chat and generate differ");
    assert_eq!(chatted, served, "chat and serve differ");
    // The seed matters: another one gives another text (so equal texts are not a fluke of
    // greedy decoding).
    let mut other = bin();
    other.args([
        "generate", "--chat", "--seed", "12", "-n", MAX_TOKENS, "-p", QUESTION,
    ]);
    assert_ne!(stdout_of(other, ""), generated);
}
