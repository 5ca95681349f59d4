//! Programs that try what a model's code must not do: each ends as a failed run, promptly,
//! and leaves the machine as it was.

use std::ffi::OsStr;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use ferrollama_sandbox::{python, Limits, Outcome, Sandbox, Status};

fn py() -> PathBuf {
    python().expect("python3 is needed for these tests")
}

fn run_python(source: &str, limits: &Limits) -> Outcome {
    let sb = Sandbox::new().unwrap();
    sb.write("main.py", source.as_bytes()).unwrap();
    let args: [&OsStr; 3] = ["-I".as_ref(), "-B".as_ref(), "main.py".as_ref()];
    sb.run(&py(), &args, b"", limits).unwrap()
}

fn quick() -> Limits {
    Limits {
        cpu_seconds: 2,
        wall: Duration::from_secs(4),
        ..Limits::default()
    }
}

#[test]
fn a_good_program_runs_and_writes_in_its_directory() {
    let o = run_python(
        "import threading, sys\n\
         open('out.txt', 'w').write('kept')\n\
         t = threading.Thread(target=lambda: None); t.start(); t.join()\n\
         print(open('out.txt').read(), input() if False else '')\n\
         sys.exit(0)\n",
        &quick(),
    );
    assert!(o.success(), "{o:?}");
    assert_eq!(o.stdout.trim(), "kept");
    assert!(o.protections.seccomp);
}

#[test]
fn an_infinite_loop_is_stopped_by_the_cpu_limit() {
    let o = run_python("while True:\n    pass\n", &quick());
    assert!(!o.success());
    assert!(
        matches!(o.status, Status::Signaled(_) | Status::TimedOut),
        "{o:?}"
    );
    assert!(o.wall < Duration::from_secs(5), "{:?}", o.wall);
}

#[test]
fn a_sleeping_program_is_stopped_by_the_wall_clock() {
    let limits = Limits {
        wall: Duration::from_secs(1),
        ..quick()
    };
    let o = run_python("import time\ntime.sleep(60)\n", &limits);
    assert_eq!(o.status, Status::TimedOut);
    assert!(o.wall < Duration::from_secs(3), "{:?}", o.wall);
}

#[test]
fn a_fork_bomb_cannot_start_a_process() {
    let o = run_python("import os\nwhile True:\n    os.fork()\n", &quick());
    assert!(!o.success(), "{o:?}");
    assert!(
        o.stderr.contains("BlockingIOError") || o.stderr.contains("Error"),
        "{o:?}"
    );
    assert!(o.wall < Duration::from_secs(3));
    let o = run_python(
        "import subprocess\nsubprocess.run(['/bin/true'])\n",
        &quick(),
    );
    assert!(!o.success(), "{o:?}");
}

#[test]
fn a_ten_gigabyte_allocation_fails() {
    let o = run_python(
        "x = bytearray(10 * 1024 ** 3)\nprint('allocated')\n",
        &quick(),
    );
    assert!(!o.success(), "{o:?}");
    assert!(o.stderr.contains("MemoryError"), "{o:?}");
    assert!(!o.stdout.contains("allocated"));
}

#[test]
fn nothing_is_written_outside_the_private_directory() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("escaped.txt");
    let victim = outside.path().join("victim.txt");
    std::fs::write(&victim, "intact").unwrap();
    let o = run_python(
        &format!(
            "import os\n\
             for attempt in [lambda: open({t:?}, 'w').write('x'), \
                             lambda: open({v:?}, 'w'), \
                             lambda: os.remove({v:?}), \
                             lambda: os.chmod({v:?}, 0o777)]:\n\
             \x20   try:\n\
             \x20       attempt(); print('escaped')\n\
             \x20   except OSError as e:\n\
             \x20       print('refused', e.errno)\n",
            t = target.display().to_string(),
            v = victim.display().to_string()
        ),
        &quick(),
    );
    if o.protections.landlock_abi.is_none() {
        eprintln!("not run: this kernel has no Landlock, so writes outside are not prevented");
        return;
    }
    assert!(o.success(), "{o:?}");
    assert!(!o.stdout.contains("escaped"), "{o:?}");
    assert_eq!(o.stdout.matches("refused").count(), 4, "{o:?}");
    assert!(!target.exists());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "intact");
}

#[test]
fn no_network_connection_can_be_made() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let o = run_python(
        &format!(
            "import socket\n\
             try:\n\
             \x20   socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')\n\
             except OSError as e:\n\
             \x20   print('refused', e.errno)\n\
             try:\n\
             \x20   socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {udp_port})); print('sent')\n\
             except OSError as e:\n\
             \x20   print('refused', e.errno)\n"
        ),
        &quick(),
    );
    assert!(o.success(), "{o:?}");
    assert_eq!(o.stdout.matches("refused").count(), 2, "{o:?}");
    assert!(listener.accept().is_err(), "a connection arrived");
    let mut buf = [0u8; 8];
    assert!(udp.recv(&mut buf).is_err(), "a datagram arrived");
}

#[test]
fn no_other_process_can_be_signalled() {
    let o = run_python(
        "import os, signal\n\
         for pid in [os.getppid(), 1, -1, 0]:\n\
         \x20   try:\n\
         \x20       os.kill(pid, 0); print('signalled', pid)\n\
         \x20   except OSError as e:\n\
         \x20       print('refused', e.errno)\n\
         os.kill(os.getpid(), 0); print('self ok')\n",
        &quick(),
    );
    assert!(o.success(), "{o:?}");
    assert_eq!(o.stdout.matches("refused").count(), 4, "{o:?}");
    assert!(o.stdout.contains("self ok"));
}

#[test]
fn a_flood_of_output_is_cut_off() {
    let limits = Limits {
        output_bytes: 64 << 10,
        ..quick()
    };
    let o = run_python("while True:\n    print('x' * 1000)\n", &limits);
    assert_eq!(o.status, Status::OutputLimit, "{:?}", o.status);
    assert!(o.stdout.len() <= 64 << 10);
}

#[test]
fn input_is_given_and_an_unread_one_does_not_hang_the_run() {
    let sb = Sandbox::new().unwrap();
    sb.write("echo.py", b"import sys\nprint(sys.stdin.read().upper())\n")
        .unwrap();
    sb.write("deaf.py", b"import time\ntime.sleep(30)\n")
        .unwrap();
    let args =
        |f: &'static str| -> [&'static OsStr; 3] { ["-I".as_ref(), "-B".as_ref(), f.as_ref()] };
    let o = sb.run(&py(), &args("echo.py"), b"hello", &quick()).unwrap();
    assert_eq!(o.stdout.trim(), "HELLO");
    // Far more than a pipe holds, to a program that never reads it: the wall clock still
    // ends it.
    let big = vec![b'x'; 8 << 20];
    let limits = Limits {
        wall: Duration::from_secs(1),
        ..quick()
    };
    let o = sb.run(&py(), &args("deaf.py"), &big, &limits).unwrap();
    assert_eq!(o.status, Status::TimedOut);
    assert!(o.wall < Duration::from_secs(3), "{:?}", o.wall);
}
