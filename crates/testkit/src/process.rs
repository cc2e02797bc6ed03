//! Process control for chaos tests: send signals, pause and resume, and a child guard
//! that never outlives its test.

use std::io;
use std::ops::{Deref, DerefMut};
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal as NixSignal, kill};
use nix::unistd::Pid;

/// A signal a test may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL: die now, no cleanup.
    Kill,
    /// SIGTERM: polite shutdown.
    Term,
    /// SIGINT: as Ctrl-C.
    Int,
    /// SIGSTOP: freeze (cannot be caught).
    Stop,
    /// SIGCONT: thaw a stopped process.
    Cont,
}

impl Signal {
    fn to_nix(self) -> NixSignal {
        match self {
            Signal::Kill => NixSignal::SIGKILL,
            Signal::Term => NixSignal::SIGTERM,
            Signal::Int => NixSignal::SIGINT,
            Signal::Stop => NixSignal::SIGSTOP,
            Signal::Cont => NixSignal::SIGCONT,
        }
    }
}

/// The pid as kill(2) wants it; 0 and values past `i32::MAX` would address process
/// groups (or everything), never what a test means.
fn target(pid: u32) -> io::Result<Pid> {
    match i32::try_from(pid) {
        Ok(p) if p > 0 => Ok(Pid::from_raw(p)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}: not a single process"),
        )),
    }
}

/// Send `sig` to the process `pid`.
pub fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    kill(target(pid)?, sig.to_nix()).map_err(io::Error::from)
}

/// Whether a process `pid` exists and has not exited. A zombie (exited, not yet reaped by
/// its parent, which for a daemonized postmaster is init) counts as gone.
pub(crate) fn alive(pid: u32) -> bool {
    let exists = target(pid).is_ok_and(|p| kill(p, None).is_ok());
    exists && !zombie(pid)
}

/// Whether `/proc` says `pid` is a zombie; `false` where there is no `/proc`.
fn zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: comm may contain spaces and parentheses, the state follows the
    // last `)`.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state == "Z")
}

/// Wait up to `limit` for `pid` to be gone; whether it is.
pub(crate) fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Freeze `pid` (SIGSTOP), as a stalled process or a long GC pause would look.
pub fn pause(pid: u32) -> io::Result<()> {
    signal(pid, Signal::Stop)
}

/// Thaw a process frozen by [`pause`] (SIGCONT).
pub fn resume(pid: u32) -> io::Result<()> {
    signal(pid, Signal::Cont)
}

/// A child process that is SIGKILLed and reaped when the guard drops, so a failing test
/// leaves no process behind. Derefs to the [`Child`].
#[derive(Debug)]
pub struct ChildGuard(Child);

impl ChildGuard {
    /// Guard `child`.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(child)
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Send `sig` to the child.
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        signal(self.pid(), sig)
    }

    /// Wait up to `limit` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
