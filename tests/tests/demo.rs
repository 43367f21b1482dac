//! `witness demo` driven as a user drives it: started, a site failed by
//! typing `fail dc-a`, the timeline read until the failover is told, then
//! stopped with Ctrl-C (SIGINT) — after which nothing of it is left: no
//! process, no port, no temporary directory.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use witness_e2e::*;

/// How far apart the demo's first and last ports are.
const PORT_SPAN: u16 = 51;

/// A port base whose whole span is free on loopback right now.
fn free_port_base() -> u16 {
    free_ports(PORT_SPAN)
}

struct Demo {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(port_base: u16) -> Demo {
        let mut child = Command::new(witness_bin())
            .args(["demo", "--port-base", &port_base.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start witness demo");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// Read until a line contains `what`; returns that line.
    fn wait_for(&mut self, what: &str, within: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(what)) {
            return l.clone();
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                self.seen.push(line.clone());
                if line.contains(what) {
                    return line;
                }
            }
        }
        panic!(
            "the demo never printed {what:?} within {within:?}; it printed:\n{}",
            self.seen.join("\n")
        );
    }

    /// The temporary directory the demo prints.
    fn data_dir(&mut self) -> PathBuf {
        let line = self.wait_for("data, configs, logs and actions.log: ", SETTLE);
        PathBuf::from(
            line.split("actions.log: ")
                .nth(1)
                .and_then(|s| s.split(" (removed on exit)").next())
                .expect("the data dir is printed"),
        )
    }

    fn type_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("type into the demo");
        self.stdin.flush().expect("flush");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole story of a failover, as the demo tells it, and a clean exit.
#[test]
fn demo_shows_a_failover_and_cleans_up_on_ctrl_c() {
    let base = free_port_base();
    let mut demo = Demo::start(base);

    // What runs, and what to try.
    demo.wait_for(&format!("witness w1 (dc-a)  gRPC 127.0.0.1:{base}"), SETTLE);
    let dir = demo.data_dir();
    assert!(dir.is_dir(), "{} exists while the demo runs", dir.display());
    demo.wait_for("export WITNESS_ENDPOINTS=", SETTLE);
    demo.wait_for("fail dc-a", SETTLE);

    // dc-a becomes active and its agents serve.
    demo.wait_for("ACTIVATE dc-a at epoch 1", SETTLE);
    demo.wait_for("agent mbox-a (dc-a/mailstore): serving", SETTLE);

    // Fail dc-a through the documented control and read the failover.
    demo.type_line("fail dc-a");
    demo.wait_for("dc-a FAILED", SETTLE);
    for step in [
        "sees dc-a down",
        "QUORUM: 3 witnesses agree dc-a is down",
        "failover pending: dc-a → dc-b",
        "action: mbox-a ran its fence hook at epoch 1",
        "agent mbox-a (dc-a/mailstore): fenced",
        "ACTIVATE dc-b at epoch 2 (was dc-a at epoch 1)",
        "action: mbox-b ran: carbonio --sync ha promoteAccounts source_mail_host mbox1.dc-a.demo",
        "directive 2/promote (dc-b/mailstore): done by mbox-b",
        "agent mbox-b (dc-b/mailstore): serving",
        "committed #",
    ] {
        demo.wait_for(step, FAILOVER_BOUND);
    }
    let printed = demo.seen.join("\n");
    assert!(!printed.contains("ERROR"), "nothing failed:\n{printed}");

    // `status` prints witnessctl's table in the timeline.
    demo.type_line("status");
    demo.wait_for("verdict: dc-b active, epoch 2", SETTLE);

    // Ctrl-C stops everything and removes the temporary directory.
    let pid = demo.child.id() as i32;
    // SAFETY: kill(2) on the child this test spawned and has not reaped.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    demo.wait_for("stopped; the temporary data dir is removed", SETTLE);
    let deadline = Instant::now() + SETTLE;
    let status = loop {
        if let Some(status) = demo.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not exit after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the demo exits 0 after Ctrl-C: {status:?}"
    );
    assert!(!dir.exists(), "{} is removed", dir.display());
    for port in base..base + PORT_SPAN {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is free again: every process of the demo is gone"
        );
    }
}

/// Bad input is refused with what to do: a data dir that is not empty, a
/// port that is taken, an unknown control command.
#[test]
fn demo_refuses_what_it_cannot_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("keep-me"), "precious").expect("write");
    let out = Command::new(witness_bin())
        .args(["demo", "--data-dir"])
        .arg(dir.path())
        .args(["--port-base", &free_port_base().to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run demo");
    assert!(!out.status.success());
    assert!(text(&out).contains("is not empty"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("keep-me")).expect("kept"),
        "precious"
    );

    let base = free_port_base();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", base + 30)).expect("bind");
    let out = Command::new(witness_bin())
        .args(["demo", "--port-base", &base.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run demo");
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains(&format!("127.0.0.1:{} is in use", base + 30)),
        "{msg}"
    );
    assert!(msg.contains("--port-base"), "{msg}");
}

/// The children of a demo that is killed outright (SIGKILL: no cleanup
/// runs) die with it: no witness or agent is left behind.
#[test]
fn killing_the_demo_kills_its_children() {
    let base = free_port_base();
    let mut demo = Demo::start(base);
    let dir = demo.data_dir();
    demo.wait_for("ACTIVATE dc-a at epoch 1", SETTLE);
    demo.wait_for("agent mbox-a (dc-a/mailstore): serving", SETTLE);
    let pid = demo.child.id();
    let children: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the demo's threads")
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    assert_eq!(
        children.len(),
        7,
        "three witnesses and four agents: {children:?}"
    );
    demo.child.kill().expect("SIGKILL the demo");
    let _ = demo.child.wait();
    let alive = |p: &u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
    };
    wait_until(SETTLE, "every child of the killed demo to be gone", || {
        (!children.iter().any(alive)).then_some(())
    });
    wait_until(SETTLE, "the demo's ports to be free", || {
        (base..base + PORT_SPAN)
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
            .then_some(())
    });
    // Nothing ran the demo's cleanup: its temporary directory is left.
    std::fs::remove_dir_all(&dir).expect("remove the killed demo's directory");
}
