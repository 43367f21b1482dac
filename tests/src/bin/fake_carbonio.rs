//! `fake_carbonio`: a stand-in for Carbonio's `carbonio` and `zmprov` CLIs in
//! tests. It does nothing a real one does; it records how it was called.
//!
//! It acts as `zmprov` when its argv[0]'s file name is `zmprov` (a symlink)
//! or `FAKE_CARBONIO_AS=zmprov`, and as `carbonio` otherwise. Every call
//! appends one JSON line to the file named by `FAKE_CARBONIO_LOG` (when set):
//!
//! ```json
//! {"tool":"carbonio","argv":["--sync","ha",…],"epoch":"7","directive_id":"d-1",
//!  "uid":0,"pid":1234,"realtime_ns":…,"boottime_ns":…,"event":"start"}
//! ```
//!
//! `argv` excludes argv[0]; `epoch` and `directive_id` are `WITNESS_EPOCH`
//! and `WITNESS_DIRECTIVE_ID` (null when unset); `realtime_ns` and
//! `boottime_ns` are `CLOCK_REALTIME` and `CLOCK_BOOTTIME` as the kernel keeps them (never a faked clock). A second line with
//! `"event":"end"` is written when it finishes normally, so a checker can
//! see overlapping runs and runs that were killed (a start with no end).
//!
//! What it does, from its environment:
//! - `FAKE_CARBONIO_SLEEP_MS`: sleep this long first (to test timeouts);
//! - `FAKE_CARBONIO_STATUS_FILE`: print this file for `getAccountStatus`
//!   (canned `--json` output);
//! - `FAKE_CARBONIO_FAIL`: exit with this code (after logging), e.g. `1`
//!   for a failed `--sync` promotion;
//! - `FAKE_CARBONIO_FAIL_MATCH`: only fail when the joined argv contains
//!   this text.
//!
//! Otherwise it prints a small JSON success answer and exits 0.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

/// `clock` read from the kernel by system call, not through the C library:
/// an agent under a clock fault (the harness's clock shim, preloaded into
/// the agent and so into the commands it runs) must not move this evidence,
/// which the harness judges on the kernel's clock.
fn clock_ns(clock: libc::clockid_t) -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into this live local.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clock_gettime,
            clock,
            &mut ts as *mut libc::timespec,
        )
    };
    if rc != 0 {
        return 0;
    }
    u128::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u128::try_from(ts.tv_nsec).unwrap_or(0)
}

fn log(tool: &str, argv: &[String], event: &str) {
    let Some(path) = std::env::var_os("FAKE_CARBONIO_LOG") else {
        return;
    };
    // SAFETY: getuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let uid = unsafe { libc::getuid() };
    let line = serde_json::json!({
        "tool": tool,
        "event": event,
        "argv": argv,
        "epoch": std::env::var("WITNESS_EPOCH").ok(),
        "directive_id": std::env::var("WITNESS_DIRECTIVE_ID").ok(),
        "uid": uid,
        "pid": std::process::id(),
        "realtime_ns": clock_ns(libc::CLOCK_REALTIME).to_string(),
        "boottime_ns": clock_ns(libc::CLOCK_BOOTTIME).to_string(),
    });
    // One write of one line with O_APPEND, so concurrent calls do not
    // interleave within a line.
    let mut text = line.to_string();
    text.push('\n');
    match OpenOptions::new().create(true).append(true).open(&path) {
        Ok(mut file) => {
            if let Err(e) = file.write_all(text.as_bytes()) {
                eprintln!(
                    "fake_carbonio: cannot write {}: {e}",
                    path.to_string_lossy()
                );
            }
        }
        Err(e) => eprintln!("fake_carbonio: cannot open {}: {e}", path.to_string_lossy()),
    }
}

fn main() {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let argv: Vec<String> = args.collect();
    let by_name = std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "zmprov");
    let tool = match std::env::var("FAKE_CARBONIO_AS") {
        Ok(t) if t == "zmprov" => "zmprov",
        Ok(_) => "carbonio",
        Err(_) if by_name => "zmprov",
        Err(_) => "carbonio",
    };
    log(tool, &argv, "start");

    if let Some(ms) = std::env::var("FAKE_CARBONIO_SLEEP_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }

    let joined = argv.join(" ");
    if let Some(code) = std::env::var("FAKE_CARBONIO_FAIL")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        let applies = std::env::var("FAKE_CARBONIO_FAIL_MATCH")
            .map(|m| joined.contains(&m))
            .unwrap_or(true);
        if applies {
            eprintln!("fake_carbonio: failing with {code} as told");
            log(tool, &argv, "end");
            std::process::exit(code);
        }
    }

    if tool == "carbonio" && argv.iter().any(|a| a == "getAccountStatus") {
        match std::env::var_os("FAKE_CARBONIO_STATUS_FILE") {
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(text) => print!("{text}"),
                Err(e) => {
                    eprintln!("fake_carbonio: cannot read {}: {e}", path.to_string_lossy());
                    log(tool, &argv, "end");
                    std::process::exit(70);
                }
            },
            None => println!("{{\"response\":{{\"values\":[]}}}}"),
        }
    } else {
        println!("{{\"response\":{{\"ok\":true}}}}");
    }
    log(tool, &argv, "end");
}
