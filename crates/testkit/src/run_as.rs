//! Running server commands as an unprivileged user when the tests run as root.
//!
//! Postgres refuses to run as root, and tests and CI here do. So as root, `initdb`,
//! `pg_ctl` and `postgres` run as the `postgres` system user (or `nobody` where there is
//! none), through [`CommandExt::uid`]/[`CommandExt::gid`]: std switches ids between fork
//! and exec, and when the parent is root and no groups were set it also clears the
//! supplementary groups (`setgroups(0, NULL)`), so root's groups do not leak. That needs
//! no `unsafe` (the workspace denies it), no `setpriv`/`runuser` on the machine, and no
//! shell quoting. When not root, commands run as the current user.
//!
//! The switched process keeps the caller's environment and working directory; callers
//! set the directory to one the user can enter, because Postgres binaries resolve their
//! own path with `getcwd`, which fails under an unreadable directory such as `/root`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::{Uid, User};

use crate::TestkitError;

/// The longest temp dir path used: the Postgres socket path (dir + `/.s.PGSQL.NNNNN`) must
/// fit in `sun_path` (108 bytes).
const MAX_BASE_LEN: usize = 80;

/// Who server processes run as.
#[derive(Debug, Clone)]
pub(crate) enum RunAs {
    /// The current user (not root).
    Current,
    /// An unprivileged system user, switched to from root.
    User {
        /// Login name, for messages.
        name: String,
        /// User id.
        uid: u32,
        /// Primary group id.
        gid: u32,
    },
}

impl RunAs {
    /// The current user unless that is root; then `postgres`, else `nobody`.
    pub(crate) fn server_user() -> Result<RunAs, TestkitError> {
        if !Uid::effective().is_root() {
            return Ok(RunAs::Current);
        }
        for name in ["postgres", "nobody"] {
            let user = User::from_name(name).map_err(|e| TestkitError::Io {
                context: format!("looking up user {name}"),
                source: e.into(),
            })?;
            if let Some(u) = user {
                return Ok(RunAs::User {
                    name: name.to_owned(),
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                });
            }
        }
        Err(TestkitError::Missing {
            what: "an unprivileged user to run Postgres as (postgres or nobody)".to_owned(),
        })
    }

    /// The user's name when it is not the current one.
    pub(crate) fn name(&self) -> Option<&str> {
        match self {
            RunAs::Current => None,
            RunAs::User { name, .. } => Some(name),
        }
    }

    /// Make `cmd` run as this user.
    pub(crate) fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        match self {
            RunAs::Current => cmd,
            RunAs::User { uid, gid, .. } => cmd.uid(*uid).gid(*gid),
        }
    }

    /// Give `path` to this user.
    pub(crate) fn own(&self, path: &Path) -> io::Result<()> {
        match self {
            RunAs::Current => Ok(()),
            RunAs::User { uid, gid, .. } => std::os::unix::fs::chown(path, Some(*uid), Some(*gid)),
        }
    }

    /// Write `contents` to `path`, owned by this user.
    pub(crate) fn write(&self, path: &Path, contents: &str) -> Result<(), TestkitError> {
        std::fs::write(path, contents)
            .and_then(|()| self.own(path))
            .map_err(TestkitError::io(format!("writing {}", path.display())))
    }

    /// Where temp dirs for servers go: the system temp dir, unless another user could not
    /// reach into it or its path is too long for a socket; then `/tmp`.
    pub(crate) fn temp_base(&self) -> PathBuf {
        let base = std::env::temp_dir();
        let reachable = match self {
            RunAs::Current => true,
            RunAs::User { .. } => base.ancestors().all(|dir| {
                std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
            }),
        };
        if reachable && base.as_os_str().len() <= MAX_BASE_LEN {
            base
        } else {
            PathBuf::from("/tmp")
        }
    }
}
