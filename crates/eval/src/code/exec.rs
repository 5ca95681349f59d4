//! Running a program in the sandbox and judging it: it passes when it exits with 0 within
//! the limits (Python: `python3 -I -B`, as HF `code_eval` runs a candidate with its tests,
//! 3 s CPU; Rust: compiled with the machine's `rustc` under the compile limits, then run).

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use ferrollama_sandbox::{Limits, Outcome, Sandbox, Status};

use super::problems::Language;

/// How a program fared.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    pub passed: bool,
    /// `passed`, `failed` (exit code), `signal N`, `timed out`, `output limit`,
    /// `compile error`.
    pub result: String,
    /// The end of its standard error (or the compiler's), for the log.
    pub stderr: String,
}

/// The interpreters and compilers, and the limits programs run under.
#[derive(Debug, Clone)]
pub struct Runner {
    pub python: Option<PathBuf>,
    pub rustc: Option<PathBuf>,
    pub limits: Limits,
    pub compile_limits: Limits,
}

impl Runner {
    /// Finds `python3` and `rustc` (the real binaries behind pyenv shims and rustup
    /// proxies, which cannot run inside the sandbox); either may be missing until a task
    /// needs it.
    pub fn new() -> Self {
        Self {
            python: ferrollama_sandbox::python().ok(),
            rustc: rustc(),
            limits: Limits {
                cpu_seconds: 3,
                wall: Duration::from_secs(15),
                ..Limits::default()
            },
            compile_limits: Limits {
                cpu_seconds: 60,
                wall: Duration::from_secs(120),
                memory_bytes: 8 << 30,
                file_bytes: 512 << 20,
                output_bytes: 256 << 10,
                processes: true,
            },
        }
    }

    /// Whether the tools for `language` are here (an error naming what is missing).
    pub fn check(&self, language: Language) -> Result<(), String> {
        match language {
            Language::Python if self.python.is_none() => {
                Err("python3 was not found: Python code tasks need it".into())
            }
            Language::Rust if self.rustc.is_none() => {
                Err("rustc was not found: Rust code tasks need it".into())
            }
            _ => Ok(()),
        }
    }

    /// Runs `program`; an error means the sandbox could not run it at all.
    pub fn run(&self, language: Language, program: &str) -> std::io::Result<Verdict> {
        let sb = Sandbox::new()?;
        match language {
            Language::Python => {
                let python = self
                    .python
                    .as_ref()
                    .ok_or_else(|| std::io::Error::other("no python3"))?;
                sb.write("main.py", program.as_bytes())?;
                let args: [&OsStr; 3] = ["-I".as_ref(), "-B".as_ref(), "main.py".as_ref()];
                Ok(judge(&sb, &sb.run(python, &args, b"", &self.limits)?))
            }
            Language::Rust => {
                let rustc = self
                    .rustc
                    .as_ref()
                    .ok_or_else(|| std::io::Error::other("no rustc"))?;
                sb.write("main.rs", program.as_bytes())?;
                let args: Vec<&OsStr> = [
                    "--edition",
                    "2021",
                    "-C",
                    "opt-level=1",
                    "-C",
                    "debuginfo=0",
                    "-A",
                    "warnings",
                    "-o",
                    "main",
                    "main.rs",
                ]
                .iter()
                .map(OsStr::new)
                .collect();
                let compiled = sb.run(rustc, &args, b"", &self.compile_limits)?;
                if !compiled.success() {
                    let mut v = judge(&sb, &compiled);
                    if matches!(compiled.status, Status::Exited(_)) {
                        v.result = "compile error".into();
                    }
                    return Ok(v);
                }
                let exe = sb.dir().join("main");
                Ok(judge(&sb, &sb.run(&exe, &[], b"", &self.limits)?))
            }
        }
    }
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

/// The verdict on a run in `sb`, its private directory written `<sandbox>` in the log (so
/// that a log does not change from run to run).
fn judge(sb: &Sandbox, o: &Outcome) -> Verdict {
    let result = match o.status {
        Status::Exited(0) => "passed".to_string(),
        Status::Exited(c) => format!("failed ({c})"),
        Status::Signaled(s) => format!("signal {s}"),
        Status::TimedOut => "timed out".into(),
        Status::OutputLimit => "output limit".into(),
    };
    let tail: String = {
        let stderr = o
            .stderr
            .replace(&sb.dir().display().to_string(), "<sandbox>");
        let chars: Vec<char> = stderr.chars().collect();
        chars[chars.len().saturating_sub(400)..].iter().collect()
    };
    Verdict {
        passed: o.success(),
        result,
        stderr: tail,
    }
}

/// The compiler itself (`<sysroot>/bin/rustc`), not a rustup proxy.
fn rustc() -> Option<PathBuf> {
    let out = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let p = PathBuf::from(sysroot).join("bin/rustc");
    (out.status.success() && p.exists()).then_some(p)
}
