//! Signals and the child guard, on real processes.

use std::fs;
use std::process::Command;
use std::time::Duration;

use pgprism_testkit::{ChildGuard, Signal, pause, resume, signal};

/// SIGTERM's number on Linux.
const SIGTERM: i32 = 15;

/// The state letter of `/proc/PID/stat` (R, S, T, Z, …).
fn state(pid: u32) -> char {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name is in parentheses and may contain spaces; the state follows it.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.chars().next().unwrap()
}

fn sleeper() -> ChildGuard {
    ChildGuard::new(Command::new("sleep").arg("30").spawn().unwrap())
}

#[test]
fn stop_and_cont_pause_and_resume_a_sleeping_child() {
    let child = sleeper();
    let pid = child.pid();
    pause(pid).unwrap();
    wait_for_state(pid, 'T');
    resume(pid).unwrap();
    wait_for_state(pid, 'S');
}

#[test]
fn term_ends_a_child_and_wait_timeout_reports_it() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = sleeper();
    assert_eq!(child.wait_timeout(Duration::from_millis(50)), None);
    child.signal(Signal::Term).unwrap();
    let status = child.wait_timeout(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.signal(), Some(SIGTERM));
}

#[test]
fn guard_kills_its_child_on_drop_even_when_stopped() {
    let child = sleeper();
    let pid = child.pid();
    child.signal(Signal::Stop).unwrap();
    drop(child);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(signal(pid, Signal::Cont).is_err(), "pid {pid} still exists");
}

#[test]
fn signals_to_process_groups_are_refused() {
    for pid in [0, u32::MAX] {
        let err = signal(pid, Signal::Kill).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}

fn wait_for_state(pid: u32, want: char) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while state(pid) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} never reached {want}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
