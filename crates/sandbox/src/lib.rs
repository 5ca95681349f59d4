//! Runs untrusted programs — code a model wrote — so that a bad one fails its sample and
//! nothing else: each in a child process of its own process group, in a private temporary
//! directory, with
//!
//! - limits (`setrlimit`): CPU seconds, address space, size of any file written, no core
//!   dumps; plus a wall-clock limit and an output limit enforced by the parent, which kills
//!   the whole process group when either is passed;
//! - no capabilities (bounding, ambient, effective and permitted sets emptied, and
//!   `PR_SET_NO_NEW_PRIVS`, so no set-uid program can give them back), which matters when
//!   the tool itself runs as root;
//! - Landlock, where the kernel has it: no file created, written, removed, renamed or
//!   truncated outside the private directory ([`landlock`]);
//! - a seccomp filter: no sockets but Unix ones, no new processes (threads are fine), no
//!   signals to other processes, no ptrace, io_uring, mounts, namespaces, mode or owner
//!   changes ([`seccomp`]).
//!
//! What it does not do: hide the file system from reading (a program can read what the
//! user running the tool can read), limit threads, or stand in for a virtual machine
//! against kernel exploits. [`Protections`] reports which layers were in force for a run.

pub mod landlock;
mod run;
pub mod seccomp;

pub use run::{Outcome, Protections, Sandbox, Status};

use std::time::Duration;

/// Limits of one run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// CPU seconds (RLIMIT_CPU: SIGXCPU, then SIGKILL a second later).
    pub cpu_seconds: u64,
    /// Wall-clock time, after which the process group is killed.
    pub wall: Duration,
    /// Address space in bytes (RLIMIT_AS): an allocation past it fails.
    pub memory_bytes: u64,
    /// Largest file the program may write (RLIMIT_FSIZE).
    pub file_bytes: u64,
    /// Bytes of stdout and of stderr kept; a program writing more is killed.
    pub output_bytes: usize,
    /// Whether the program may start processes (a compiler running its linker); a program
    /// under test may not.
    pub processes: bool,
}

impl Default for Limits {
    /// A program under test: 10 CPU seconds, 20 s of wall time, 2 GiB of address space,
    /// 16 MiB files, 1 MiB of output, no new processes.
    fn default() -> Self {
        Self {
            cpu_seconds: 10,
            wall: Duration::from_secs(20),
            memory_bytes: 2 << 30,
            file_bytes: 16 << 20,
            output_bytes: 1 << 20,
            processes: false,
        }
    }
}

/// The Python interpreter `python3` on PATH stands for (following version-manager shims,
/// which start other processes and so cannot run inside the sandbox).
pub fn python() -> std::io::Result<std::path::PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() {
        return Err(std::io::Error::other(
            "python3 did not say where its interpreter is",
        ));
    }
    Ok(path.into())
}
