//! Running the system tools the harness drives (`ip`, `iptables`, `ss`):
//! each with a time bound, its output captured, and a failure reported with
//! the full command line and the tool's stderr.
//!
//! Invariant: no call here blocks longer than its bound; a tool that hangs is
//! killed and reaped before we return.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Bound for one invocation of `ip` or `iptables`. They normally take a few
/// milliseconds; the bound only matters on a wedged kernel or a lock held by
/// a stuck tool, where failing loudly beats hanging the whole run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a running tool is polled for exit. Small against the tools'
/// typical run time so it adds little latency, large enough not to spin.
const POLL: Duration = Duration::from_millis(2);

/// The command line as a human would type it, for error messages.
pub fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Build a command from a program and arguments.
pub fn command<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Run `cmd` to completion within `timeout`, feeding `stdin` if given.
/// Fails on spawn errors, on timeout, and on a non-zero exit (with stderr).
pub fn run(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let out = run_unchecked(cmd, stdin, timeout)?;
    if out.output.status.success() {
        Ok(out.output)
    } else {
        Err(out.into_error())
    }
}

/// The result of a tool that ran to completion, whatever its exit status.
pub struct Finished {
    /// The rendered command line.
    pub cmd: String,
    /// Exit status and captured output.
    pub output: Output,
}

impl Finished {
    /// Standard error as text, trimmed.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr)
            .trim()
            .to_owned()
    }

    /// Turn a failed run into the error that names it.
    pub fn into_error(self) -> Error {
        Error::Command {
            stderr: self.stderr(),
            status: self.output.status.to_string(),
            cmd: self.cmd,
        }
    }
}

/// Like [`run`] but a non-zero exit is returned, not raised: for callers
/// that treat some failures as "already so" (idempotent teardown).
pub fn run_unchecked(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Finished> {
    let line = render(&cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        cmd: line.clone(),
        source,
    })?;
    // Drain both pipes on their own threads: a tool that writes more than a
    // pipe buffer would otherwise block forever while we wait for its exit.
    let out_reader = drain(child.stdout.take());
    let err_reader = drain(child.stderr.take());
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Our inputs are a few KiB of iptables rules, far below what a tool
        // would refuse to read; a write error means the tool already died and
        // its exit status will say why.
        let _ = pipe.write_all(input);
    }
    let status = match wait_bounded(&mut child, timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Timeout {
                cmd: line,
                after: timeout,
            });
        }
        Err(e) => return Err(Error::io(format!("waiting for `{line}`"), e)),
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Finished {
        cmd: line,
        output: Output {
            status,
            stdout,
            stderr,
        },
    })
}

/// Wait for `child` to exit for at most `timeout`; `None` if it is still
/// running then. The child is not killed here.
pub fn wait_bounded(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            // A read error leaves what was read so far: the exit status is
            // what decides success, the text only explains a failure.
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failing tool's error names the command line and carries its stderr.
    #[test]
    fn failure_names_the_command_and_its_stderr() {
        let err = run(
            command("sh", ["-c", "echo boom >&2; exit 3"]),
            None,
            TOOL_TIMEOUT,
        )
        .expect_err("exit 3 must fail");
        let text = err.to_string();
        assert!(text.contains("sh -c echo boom >&2; exit 3"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }

    /// A tool that outlives its bound is killed and reported as a timeout.
    #[test]
    fn a_hanging_tool_is_killed_at_its_bound() {
        let start = Instant::now();
        let err = run(command("sleep", ["30"]), None, Duration::from_millis(200))
            .expect_err("must time out");
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    /// Standard input reaches the tool and standard output comes back.
    #[test]
    fn stdin_is_fed_and_stdout_captured() {
        let out = run(
            command("cat", [] as [&str; 0]),
            Some(b"hello"),
            TOOL_TIMEOUT,
        )
        .expect("cat");
        assert_eq!(out.stdout, b"hello");
    }
}
