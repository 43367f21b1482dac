//! The status page in a real browser: Debian's `chromium`, headless, loads
//! the page from a witness and the test reads the DOM it rendered.
//!
//! How a console error is caught, twice over:
//!
//! - `--enable-logging=stderr --v=0` makes Chromium log every console
//!   message (whatever its level) and every uncaught exception as a
//!   `…:CONSOLE…` line on stderr. The page writes nothing to the console in
//!   normal operation, so any such line fails the test.
//!   [`the_console_check_sees_a_script_error`] proves the check works with
//!   the installed Chromium, on a page with a deliberate error.
//! - The page's first script records uncaught errors, unhandled
//!   rejections, failed resource loads and Content-Security-Policy
//!   violations in the DOM (`<html data-page-errors>`, `#page-errors`); the
//!   DOM dumped by `--dump-dom` must have none.
//!
//! `--virtual-time-budget` lets the page's timers run (its data requests
//! pause virtual time until they are answered), so the dumped DOM is the
//! page after a few refreshes.
//!
//! The witnesses' HTTP ports take mutual TLS; the browser reaches them
//! through `witnessctl status-page`, which presents the lab viewer's
//! certificate ([`Relay`]), as an operator would.
//!
//! The README's screenshot comes from the failover test:
//! `WITNESS_SCREENSHOT=docs/status-page.png cargo test -p witness-e2e --test
//! status_page` (a relative path is taken from the workspace root).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use witness_e2e::agents::*;
use witness_e2e::*;

const FAKE: &str = env!("CARGO_BIN_EXE_fake_carbonio");

const CHROMIUM: &str = "chromium";

/// A page load, rendering and dump; generous for a loaded CI machine.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
/// Virtual time the page runs before the DOM is dumped: a few refreshes.
const PAGE_TIME_MS: u64 = 5_000;
/// Time for agents to connect and renew.
const AGENT_SETTLE: Duration = Duration::from_secs(20);

/// What one headless Chromium run left behind.
struct Load {
    /// The serialized DOM (`--dump-dom`), or empty.
    dom: String,
    /// The console's lines from Chromium's log.
    console: Vec<String>,
}

/// Run headless Chromium on `url` with `mode` (`--dump-dom`,
/// `--screenshot=…`), in a fresh profile, killed after [`BROWSER_TIMEOUT`].
fn chromium(url: &str, mode: &[String]) -> Load {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("stdout");
    let err = dir.path().join("stderr");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--virtual-time-budget={PAGE_TIME_MS}"))
        .args(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).expect("stdout file"))
        .stderr(fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run chromium");
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish {url} within {BROWSER_TIMEOUT:?}:\n{}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "chromium on {url}: {status}\n{log}");
    Load {
        dom: fs::read_to_string(&out).unwrap_or_default(),
        console: log
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .map(str::to_string)
            .collect(),
    }
}

/// The page at `url` after a few refreshes, asserted free of errors.
fn load_page(url: &str) -> String {
    let load = chromium(url, &["--dump-dom".to_string()]);
    assert!(
        load.console.is_empty(),
        "the page wrote to the console:\n{}\n{}",
        load.console.join("\n"),
        load.dom
    );
    // The page's own marks are attributes of <html> (its script's text
    // names them too, so the rest of the DOM proves nothing).
    let root = html_tag(&load.dom);
    assert!(
        !root.contains("data-page-errors"),
        "the page recorded errors:\n{}",
        load.dom
    );
    assert!(
        root.contains("data-loaded=\"true\""),
        "the page never rendered its data:\n{}",
        load.dom
    );
    load.dom
}

/// The `<html …>` start tag of a dumped DOM.
fn html_tag(dom: &str) -> &str {
    let start = dom
        .find("<html")
        .unwrap_or_else(|| panic!("no <html> in:\n{dom}"));
    let end = dom[start..].find('>').expect("tag end");
    &dom[start..start + end]
}

/// The text inside the element with `id` (up to its first child tag).
fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in:\n{dom}"));
    let rest = &dom[start..];
    let open = rest.find('>').expect("tag end") + 1;
    let close = rest[open..].find('<').expect("next tag");
    rest[open..open + close].to_string()
}

/// Where `WITNESS_SCREENSHOT` asks for the screenshot, if it does.
fn screenshot_path() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("WITNESS_SCREENSHOT")?);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    Some(workspace.join(path))
}

/// `witnessctl status-page` relaying a loopback port to one witness's HTTP
/// port as the lab's viewer; stopped on drop.
struct Relay {
    child: std::process::Child,
    url: String,
}

impl Relay {
    fn start(c: &Cluster, node: &NodeSpec) -> Relay {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(witnessctl_bin())
            .args(["status-page", "--http"])
            .arg(format!("127.0.0.1:{}", node.http))
            .args(["--listen", &listen])
            .envs(Pki::ctl_env(&c.pki().viewer()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn witnessctl status-page");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("read the relay's first line");
        assert!(
            line.contains(&format!("open http://{listen}/")),
            "witnessctl status-page said: {line:?}"
        );
        Relay {
            child,
            url: format!("http://{listen}/"),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agreed leader's id and one follower.
fn leader_and_follower(c: &Cluster) -> (u64, NodeSpec) {
    let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
    let follower = c
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .expect("a follower")
        .clone();
    (leader, follower)
}

/// The console check is not vacuous: an uncaught exception on a page shows
/// up as a console line in Chromium's log.
#[test]
fn the_console_check_sees_a_script_error() {
    require_tool(CHROMIUM, "chromium");
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("broken.html");
    fs::write(
        &page,
        "<!DOCTYPE html><link rel=icon href=\"data:,\"><p>broken</p>\
         <script>no_such_function();</script>",
    )
    .expect("write page");
    let load = chromium(
        &format!("file://{}", page.display()),
        &["--dump-dom".to_string()],
    );
    assert!(
        load.console
            .iter()
            .any(|l| l.contains("no_such_function is not defined")),
        "Chromium's log shows no console error for a broken page; the check would prove \
         nothing: {:?}",
        load.console
    );
}

/// The page served by a follower loads without errors and shows the
/// leader's view: dc-a active at epoch 1, the agents, the initial
/// activation in the timeline. After dc-a dies, a fresh load shows dc-b
/// active at epoch 2 and the failover in the timeline. With the leader and
/// a second witness gone, the page still loads and says in a banner that
/// it shows the remaining witness's own view.
#[test]
fn status_page_shows_the_active_site_and_follows_a_failover() {
    require_tool(CHROMIUM, "chromium");
    let mut sites = Sites::start();
    let mut c = Cluster::running(3, "", &sites.policy(""));
    c.wait_verdict("dc-a", 1, SETTLE);
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.addr()).collect();
    let lab = AgentLab::new(FAKE);
    let proxy_a = lab.start(&AgentSpec::new("proxy-a", "dc-a", "proxy"), &endpoints);
    let _proxy_b = lab.start(&AgentSpec::new("proxy-b", "dc-b", "proxy"), &endpoints);
    wait_until(AGENT_SETTLE, "proxy-a serving at epoch 1", || {
        proxy_a.first("serving", Some(1))
    });

    let (leader, follower) = leader_and_follower(&c);
    let relay = Relay::start(&c, &follower);
    let url = relay.url.clone();

    let dom = load_page(&url);
    assert_eq!(text_of(&dom, "active-site"), "dc-a", "{dom}");
    assert_eq!(text_of(&dom, "epoch"), "1", "{dom}");
    assert!(
        text_of(&dom, "answered").starts_with(&format!("answered by w{leader} (leader)")),
        "{dom}"
    );
    assert!(
        dom.contains("id=\"local-banner\" hidden"),
        "no banner: {dom}"
    );
    assert!(dom.contains(">proxy-a<"), "the leader's agents: {dom}");
    assert!(
        dom.contains("class=\"what\">activated dc-a, initial<"),
        "the timeline: {dom}"
    );

    sites.kill('a');
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    let dom = load_page(&url);
    assert_eq!(text_of(&dom, "active-site"), "dc-b", "{dom}");
    assert_eq!(text_of(&dom, "epoch"), "2", "{dom}");
    assert!(
        dom.contains("class=\"what\">activated dc-b (was dc-a), site down<"),
        "the timeline: {dom}"
    );
    if let Some(path) = screenshot_path() {
        chromium(
            &url,
            &[
                format!("--screenshot={}", path.display()),
                "--window-size=1280,900".to_string(),
            ],
        );
        assert!(path.exists(), "no screenshot at {}", path.display());
    }

    // The leader and one more witness go: the last one cannot reach a
    // leader, and its page says so.
    let (_, survivor) = leader_and_follower(&c);
    for n in [1, 2, 3] {
        if n != survivor.id {
            c.kill(n);
        }
    }
    let relay = Relay::start(&c, &survivor);
    let dom = load_page(&relay.url);
    assert!(
        text_of(&dom, "local-banner").starts_with(&format!(
            "The leader could not be reached: this is {}'s own view",
            survivor.name
        )),
        "{dom}"
    );
    assert_eq!(text_of(&dom, "active-site"), "dc-b", "{dom}");
}
