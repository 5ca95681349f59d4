//! The system-call filter a sandboxed program runs under (seccomp BPF). Written out here
//! rather than through a library because it is installed between `fork` and `exec`, where
//! nothing may allocate: the program is built in the parent, and the child only writes its
//! own process id into it and loads it.
//!
//! What it refuses: sockets other than Unix ones (no network), new processes (threads stay
//! allowed: `clone` with `CLONE_THREAD`; `clone3`, whose flags a filter cannot read, answers
//! ENOSYS so the C library falls back to `clone`), signals to any process but itself, and
//! the calls that reach outside the process or change files' owners and modes (Landlock
//! does not cover those): ptrace, io_uring (which can open sockets), mounts, namespaces,
//! kernel modules, BPF, keyrings, clocks.

use libc::{sock_filter, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO};

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;

/// Offsets in `struct seccomp_data`: nr, arch, then the arguments (the low half of the
/// first on these little-endian targets).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Whether this target has a filter (x86-64 and AArch64).
pub const SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// A filter program, with the places the child writes its process id into.
pub struct Filter {
    pub program: Vec<sock_filter>,
    pub pid_slots: Vec<usize>,
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn errno(e: i32) -> sock_filter {
    stmt(BPF_RET_K, SECCOMP_RET_ERRNO | (e as u32 & 0xffff))
}

/// Calls refused outright, with the error they return.
fn refused(allow_processes: bool) -> Vec<(libc::c_long, i32)> {
    let mut v: Vec<(libc::c_long, i32)> = vec![
        (libc::SYS_clone3, libc::ENOSYS),
        (libc::SYS_ptrace, libc::EPERM),
        (libc::SYS_process_vm_readv, libc::EPERM),
        (libc::SYS_process_vm_writev, libc::EPERM),
        (libc::SYS_pidfd_send_signal, libc::EPERM),
        (libc::SYS_pidfd_getfd, libc::EPERM),
        (libc::SYS_rt_sigqueueinfo, libc::EPERM),
        (libc::SYS_rt_tgsigqueueinfo, libc::EPERM),
        (libc::SYS_io_uring_setup, libc::ENOSYS),
        (libc::SYS_io_uring_enter, libc::ENOSYS),
        (libc::SYS_io_uring_register, libc::ENOSYS),
        (libc::SYS_bpf, libc::EPERM),
        (libc::SYS_perf_event_open, libc::EPERM),
        (libc::SYS_userfaultfd, libc::EPERM),
        (libc::SYS_mount, libc::EPERM),
        (libc::SYS_umount2, libc::EPERM),
        (libc::SYS_pivot_root, libc::EPERM),
        (libc::SYS_chroot, libc::EPERM),
        (libc::SYS_setns, libc::EPERM),
        (libc::SYS_unshare, libc::EPERM),
        (libc::SYS_keyctl, libc::EPERM),
        (libc::SYS_add_key, libc::EPERM),
        (libc::SYS_request_key, libc::EPERM),
        (libc::SYS_reboot, libc::EPERM),
        (libc::SYS_kexec_load, libc::EPERM),
        (libc::SYS_init_module, libc::EPERM),
        (libc::SYS_finit_module, libc::EPERM),
        (libc::SYS_delete_module, libc::EPERM),
        (libc::SYS_swapon, libc::EPERM),
        (libc::SYS_swapoff, libc::EPERM),
        (libc::SYS_sethostname, libc::EPERM),
        (libc::SYS_setdomainname, libc::EPERM),
        (libc::SYS_acct, libc::EPERM),
        (libc::SYS_settimeofday, libc::EPERM),
        (libc::SYS_clock_settime, libc::EPERM),
        (libc::SYS_clock_adjtime, libc::EPERM),
        (libc::SYS_adjtimex, libc::EPERM),
        (libc::SYS_fchmod, libc::EPERM),
        (libc::SYS_fchmodat, libc::EPERM),
        (452, libc::EPERM), // fchmodat2 (Linux 6.6), the same number on every target
        (libc::SYS_fchown, libc::EPERM),
        (libc::SYS_fchownat, libc::EPERM),
        (libc::SYS_utimensat, libc::EPERM),
        (libc::SYS_setxattr, libc::EPERM),
        (libc::SYS_lsetxattr, libc::EPERM),
        (libc::SYS_fsetxattr, libc::EPERM),
        (libc::SYS_removexattr, libc::EPERM),
        (libc::SYS_lremovexattr, libc::EPERM),
        (libc::SYS_fremovexattr, libc::EPERM),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        v.extend([
            (libc::SYS_chmod, libc::EPERM),
            (libc::SYS_chown, libc::EPERM),
            (libc::SYS_lchown, libc::EPERM),
            (libc::SYS_utime, libc::EPERM),
            (libc::SYS_utimes, libc::EPERM),
            (libc::SYS_futimesat, libc::EPERM),
        ]);
        if !allow_processes {
            v.extend([
                (libc::SYS_fork, libc::EAGAIN),
                (libc::SYS_vfork, libc::EAGAIN),
            ]);
        }
    }
    let _ = allow_processes;
    v
}

/// The filter; `allow_processes` lets the program start others (a compiler running its
/// linker), which a program under test never needs.
pub fn filter(allow_processes: bool) -> Filter {
    let mut p = vec![
        stmt(BPF_LD_W_ABS, ARCH),
        jump(BPF_JEQ_K, arch(), 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        // The x32 calls (numbers with bit 30 set) would bypass every check below.
        p.push(jump(BPF_JGE_K, 0x4000_0000, 0, 1));
        p.push(stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS));
    }
    for (nr, e) in refused(allow_processes) {
        p.push(jump(BPF_JEQ_K, nr as u32, 0, 1));
        p.push(errno(e));
    }
    // A call allowed only when its first argument passes `test`: jump over the block
    // when the number differs; inside, load the argument, allow or refuse, and the
    // accumulator holds the number again for the next check only when jumped over.
    let guarded = |p: &mut Vec<sock_filter>, nr: libc::c_long, test: sock_filter, e: i32| {
        p.push(jump(BPF_JEQ_K, nr as u32, 0, 4));
        p.push(stmt(BPF_LD_W_ABS, ARG0));
        p.push(test);
        p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
        p.push(errno(e));
    };
    guarded(
        &mut p,
        libc::SYS_socket,
        jump(BPF_JEQ_K, libc::AF_UNIX as u32, 0, 1),
        libc::EACCES,
    );
    if !allow_processes {
        guarded(
            &mut p,
            libc::SYS_clone,
            jump(BPF_JSET_K, libc::CLONE_THREAD as u32, 0, 1),
            libc::EAGAIN,
        );
    }
    let mut pid_slots = Vec::new();
    for nr in [libc::SYS_kill, libc::SYS_tkill, libc::SYS_tgkill] {
        // The process id is written in by the child (`pid_slots`).
        pid_slots.push(p.len() + 2);
        guarded(&mut p, nr, jump(BPF_JEQ_K, 0, 0, 1), libc::EPERM);
    }
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    Filter {
        program: p,
        pid_slots,
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn arch() -> u32 {
    AUDIT_ARCH
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn arch() -> u32 {
    0
}

/// Loads the filter into the calling process (the child, after `PR_SET_NO_NEW_PRIVS`),
/// once its process id is written in. Async-signal-safe: no allocation.
///
/// # Safety
/// Must run in the child between `fork` and `exec`, with `f` not shared with other threads.
pub unsafe fn install(f: &mut Filter) -> std::io::Result<()> {
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() } as u32;
    for &i in &f.pid_slots {
        f.program[i].k = pid;
    }
    let prog = libc::sock_fprog {
        len: f.program.len() as u16,
        filter: f.program.as_mut_ptr(),
    };
    // SAFETY: prog and the program it points to live across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1, /* SECCOMP_SET_MODE_FILTER */
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every jump of the program lands inside it, and it ends by returning.
    #[test]
    fn jumps_stay_inside_the_program() {
        for allow in [false, true] {
            let f = filter(allow);
            let n = f.program.len();
            assert!(n < u16::MAX as usize);
            for (i, ins) in f.program.iter().enumerate() {
                if ins.code & 0x07 == libc::BPF_JMP as u16 {
                    assert!(i + 1 + (ins.jt as usize) < n && i + 1 + (ins.jf as usize) < n);
                }
            }
            assert_eq!(f.program[n - 1].code, BPF_RET_K);
            for &s in &f.pid_slots {
                assert_eq!(f.program[s].code, BPF_JEQ_K);
                assert_eq!(f.program[s - 1].k, ARG0);
            }
        }
    }
}
