//! The harness's error type. Every variant that comes from running a tool
//! carries the exact command line and what the tool said, because the fix
//! is nearly always on the machine (a missing package, not root, a kernel
//! without a module) and the operator needs the tool's own words to see it.

use std::time::Duration;

/// What went wrong, and what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tool ran and failed: fix the machine or the input it was given.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line, program and arguments, space separated.
        cmd: String,
        /// Exit status as the OS reported it.
        status: String,
        /// The tool's standard error (trimmed; may be empty).
        stderr: String,
    },
    /// A tool could not be started at all: usually it is not installed
    /// (`apt-get install -y iproute2 iptables`).
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The OS error from spawning.
        source: std::io::Error,
    },
    /// A tool did not finish within its bound and was killed.
    #[error("`{cmd}` did not finish within {after:?} and was killed")]
    Timeout {
        /// The command line.
        cmd: String,
        /// The bound that ran out.
        after: Duration,
    },
    /// The topology or a nemesis request is malformed: fix the input.
    #[error("invalid specification: {0}")]
    InvalidSpec(String),
    /// A host name that is not part of this topology.
    #[error("unknown host `{0}`")]
    UnknownHost(String),
    /// Another live process owns namespaces with this prefix: pick another
    /// prefix, or stop that process. We never tear down a live run.
    #[error("prefix `{prefix}` is in use by live process {pid}")]
    PrefixInUse {
        /// The run prefix asked for.
        prefix: String,
        /// The owner recorded on its bridge.
        pid: u32,
    },
    /// A system call on a namespace, socket or process failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done, with the object's name.
        what: String,
        /// The errno.
        source: nix::Error,
    },
    /// Other I/O (files, sockets, threads).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the object's name.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            what: what.into(),
            source,
        }
    }
}
