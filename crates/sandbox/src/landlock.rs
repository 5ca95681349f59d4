//! Landlock (Linux 5.13+, no privilege needed): the program may read and execute anything
//! it could before, but create, write, remove, rename or truncate only beneath its private
//! directory (and write `/dev/null`); on kernels with Landlock ABI 4 it can neither bind
//! nor connect TCP sockets, and with ABI 6 it can signal no process outside itself. The
//! ruleset is built in the parent; the child only enforces it (`restrict_self`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const CREATE_RULESET: libc::c_long = 444;
const ADD_RULE: libc::c_long = 445;
const RESTRICT_SELF: libc::c_long = 446;
const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;

const WRITE_FILE: u64 = 1 << 1;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The kernel's Landlock ABI version, or None where it has none (or it is disabled).
pub fn abi() -> Option<u32> {
    // SAFETY: the version query takes no pointer.
    let v = unsafe {
        libc::syscall(
            CREATE_RULESET,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v as u32)
}

/// The access rights that change the file system, as far as ABI `abi` knows them.
fn write_rights(abi: u32) -> u64 {
    // remove dir/file, make char/dir/reg/sock/fifo/block/sym: bits 4-12.
    let mut r = WRITE_FILE | (0x1ff << 4);
    if abi >= 2 {
        r |= 1 << 13; // REFER: links and renames across directories
    }
    if abi >= 3 {
        r |= TRUNCATE;
    }
    if abi >= 5 {
        r |= IOCTL_DEV;
    }
    r
}

/// A ruleset allowing writes only beneath `dir` (and to `/dev/null`); None when the kernel
/// has no Landlock.
pub fn ruleset(dir: &Path) -> std::io::Result<Option<OwnedFd>> {
    let Some(abi) = abi() else {
        return Ok(None);
    };
    let fs = write_rights(abi);
    let attr = RulesetAttr {
        handled_access_fs: fs,
        // ABI 4: TCP bind and connect, with no rule allowing either.
        handled_access_net: if abi >= 4 { 0b11 } else { 0 },
        // ABI 6: abstract Unix sockets and signals stay inside the domain.
        scoped: if abi >= 6 { 0b11 } else { 0 },
    };
    // SAFETY: attr lives across the call and its size is passed.
    let fd = unsafe {
        libc::syscall(
            CREATE_RULESET,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor (close-on-exec), owned by nobody else.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    allow(&ruleset, dir, fs)?;
    allow(
        &ruleset,
        Path::new("/dev/null"),
        fs & (WRITE_FILE | TRUNCATE | IOCTL_DEV),
    )?;
    Ok(Some(ruleset))
}

fn allow(ruleset: &OwnedFd, path: &Path, access: u64) -> std::io::Result<()> {
    let target = std::fs::File::open(path)?;
    let rule = PathBeneathAttr {
        allowed_access: access,
        parent_fd: target.as_raw_fd(),
    };
    // SAFETY: rule lives across the call; both descriptors are open.
    let r = unsafe {
        libc::syscall(
            ADD_RULE,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &rule as *const PathBeneathAttr,
            0u32,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Enforces the ruleset on the calling process (after `PR_SET_NO_NEW_PRIVS`).
///
/// # Safety
/// Async-signal-safe (one system call); meant for the child between `fork` and `exec`.
pub unsafe fn restrict_self(ruleset: i32) -> std::io::Result<()> {
    // SAFETY: one system call taking a descriptor.
    if unsafe { libc::syscall(RESTRICT_SELF, ruleset, 0u32) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
