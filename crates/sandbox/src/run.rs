//! Spawning a program under the limits and collecting what it did.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::{landlock, seccomp, Limits};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The program exited with this code.
    Exited(i32),
    /// A signal ended it (SIGXCPU or SIGKILL from the CPU limit, SIGSEGV, ...).
    Signaled(i32),
    /// It ran past the wall-clock limit and was killed.
    TimedOut,
    /// It wrote more than the output limit and was killed.
    OutputLimit,
}

/// Which protections were in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protections {
    /// The Landlock ABI enforced (None: the kernel has none, so writes outside the private
    /// directory are not prevented beyond the user's own permissions).
    pub landlock_abi: Option<u32>,
    /// The seccomp filter (no network, processes, signals to others, ...).
    pub seccomp: bool,
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    /// The first `output_bytes` of each stream (lossy UTF-8).
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
    pub protections: Protections,
}

impl Outcome {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.status == Status::Exited(0)
    }
}

/// A private directory that programs run in; removed when dropped.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            dir: tempfile::Builder::new()
                .prefix("ferrollama-sandbox-")
                .tempdir()?,
        })
    }

    /// The private directory (the program's working directory, HOME and TMPDIR).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file into the private directory.
    pub fn write(&self, name: &str, contents: &[u8]) -> std::io::Result<PathBuf> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents)?;
        Ok(p)
    }

    /// Runs `program args` in the private directory with `stdin`, under `limits`, with an
    /// empty environment but PATH, HOME, TMPDIR and LANG. An error means the program could
    /// not be started (or a protection could not be put in place: it is never run without
    /// them), not that it failed.
    pub fn run(
        &self,
        program: &Path,
        args: &[&OsStr],
        stdin: &[u8],
        limits: &Limits,
    ) -> std::io::Result<Outcome> {
        let ruleset = landlock::ruleset(self.dir())?;
        let protections = Protections {
            landlock_abi: ruleset.as_ref().and_then(|_| landlock::abi()),
            seccomp: seccomp::SUPPORTED,
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(self.dir())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", self.dir())
            .env("TMPDIR", self.dir())
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child_setup = ChildSetup {
            filter: seccomp::SUPPORTED.then(|| seccomp::filter(limits.processes)),
            ruleset: ruleset.as_ref().map(|f: &OwnedFd| f.as_raw_fd()),
            cpu: limits.cpu_seconds,
            memory: limits.memory_bytes,
            file: limits.file_bytes,
        };
        // SAFETY: the closure makes only async-signal-safe system calls and allocates nothing.
        unsafe {
            cmd.pre_exec(move || child_setup.apply());
        }
        let start = Instant::now();
        let mut child = cmd.spawn()?;
        drop(ruleset);
        let overflow = Arc::new(AtomicBool::new(false));
        let out = reader(child.stdout.take(), limits.output_bytes, overflow.clone());
        let err = reader(child.stderr.take(), limits.output_bytes, overflow.clone());
        if let Some(mut w) = child.stdin.take() {
            // Written from a thread: a program that does not read its input must not block
            // the wait below on a full pipe (it ends with the program; an unread input is
            // not an error).
            let input = stdin.to_vec();
            std::thread::spawn(move || {
                let _ = w.write_all(&input);
            });
        }
        let status = wait(&mut child, start + limits.wall, &overflow)?;
        let wall = start.elapsed();
        let collect = |rx: mpsc::Receiver<Vec<u8>>| {
            rx.recv_timeout(Duration::from_secs(2))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Ok(Outcome {
            status,
            stdout: collect(out),
            stderr: collect(err),
            wall,
            protections,
        })
    }
}

/// Waits for the child until `deadline` or an output overflow, then kills its process group
/// (always: nothing it started may outlive it).
fn wait(child: &mut Child, deadline: Instant, overflow: &AtomicBool) -> std::io::Result<Status> {
    let pgid = child.id() as libc::pid_t;
    let kill_group = || {
        // SAFETY: signalling a process group we created; ESRCH (all gone) is fine.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    };
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break match (s.code(), s.signal()) {
                (Some(c), _) => Status::Exited(c),
                (None, Some(sig)) => Status::Signaled(sig),
                (None, None) => Status::Signaled(0),
            };
        }
        let timed_out = Instant::now() >= deadline;
        if timed_out || overflow.load(Ordering::Relaxed) {
            kill_group();
            child.wait()?;
            break if timed_out {
                Status::TimedOut
            } else {
                Status::OutputLimit
            };
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    kill_group();
    Ok(status)
}

/// Reads a stream to its end, keeping `cap` bytes; past them it sets `overflow` and
/// discards the rest (so the program never blocks on a full pipe).
fn reader(
    stream: Option<impl Read + Send + 'static>,
    cap: usize,
    overflow: Arc<AtomicBool>,
) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut s) = stream {
            let mut buf = [0u8; 8192];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                if n > room {
                    overflow.store(true, Ordering::Relaxed);
                }
            }
        }
        let _ = tx.send(kept);
    });
    rx
}

/// What the child does between `fork` and `exec`.
struct ChildSetup {
    filter: Option<seccomp::Filter>,
    ruleset: Option<i32>,
    cpu: u64,
    memory: u64,
    file: u64,
}

impl ChildSetup {
    /// Async-signal-safe: system calls only, no allocation.
    fn apply(&mut self) -> std::io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: plain system calls on this (single-threaded, forked) process.
        unsafe {
            check(libc::setpgid(0, 0))?;
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            let limit = |resource, soft: u64, hard: u64| {
                let l = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                check(libc::setrlimit(resource, &l))
            };
            limit(libc::RLIMIT_CPU, self.cpu, self.cpu + 1)?;
            limit(libc::RLIMIT_AS, self.memory, self.memory)?;
            limit(libc::RLIMIT_FSIZE, self.file, self.file)?;
            limit(libc::RLIMIT_CORE, 0, 0)?;
            drop_capabilities()?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            if let Some(fd) = self.ruleset {
                landlock::restrict_self(fd)?;
            }
            if let Some(f) = self.filter.as_mut() {
                seccomp::install(f)?;
            }
        }
        Ok(())
    }
}

/// Empties the bounding and ambient sets (needs CAP_SETPCAP, which only a privileged
/// process has, and only it has capabilities to lose), then the effective, permitted and
/// inheritable sets.
unsafe fn drop_capabilities() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments; failures (no CAP_SETPCAP) leave nothing to drop.
    unsafe {
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3: two Data words
        pid: 0,
    };
    let data = [
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: header and data live across the call, data holds the two words version 3 reads.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
