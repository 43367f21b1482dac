//! `witnessctl status-page`: a witness's status page for a browser that has
//! no client certificate.
//!
//! The HTTP port of a witness takes mutual TLS like the gRPC port; importing
//! a client certificate into a browser is a chore at 3 a.m. This relays a
//! loopback port to the witness's HTTP port: each browser connection is
//! carried over its own TLS connection that presents the operator's
//! certificate (`--ca/--cert/--key`). Only loopback is served, so the relay
//! lends the certificate to nobody but the local user; and only requests
//! whose `Host` is a loopback name are relayed, so a web page that rebinds
//! its own DNS name to 127.0.0.1 cannot read the cluster through it.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{Cli, CtlError};

/// Serve until `stop` resolves.
pub async fn serve(
    cli: &Cli,
    http: &str,
    listen: SocketAddr,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), CtlError> {
    if !listen.ip().is_loopback() {
        return Err(CtlError::Usage(format!(
            "--listen {listen} is not a loopback address: anyone who reaches it would read the \
             cluster with your certificate; use 127.0.0.1 or [::1]"
        )));
    }
    let Some(trust) = cli.trust()? else {
        return Err(CtlError::Usage(format!(
            "with --insecure the HTTP port is plaintext: open http://{http}/ directly"
        )));
    };
    // Fail now, not at the browser's first request, if the witness cannot
    // be reached or refuses the certificate.
    witness_trust::conn::connect_stream(&trust, http, &[b"http/1.1"])
        .await
        .map_err(|e| CtlError::Unreachable(format!("{http}: {e}")))?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| CtlError::Usage(format!("--listen {listen}: {e}")))?;
    let local = listener.local_addr().unwrap_or(listen);
    println!(
        "The status page of {http}, as {}: open http://{local}/ (Ctrl-C stops)",
        trust.own()
    );
    tokio::pin!(stop);
    loop {
        let (mut browser, _) = tokio::select! {
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("accepting a browser connection: {e}");
                    continue;
                }
            },
        };
        let trust = trust.clone();
        let http = http.to_string();
        tokio::spawn(async move {
            let head = match read_head(&mut browser).await {
                Ok(head) => head,
                Err(why) => {
                    let _ = browser.write_all(refusal(&why).as_bytes()).await;
                    return;
                }
            };
            match witness_trust::conn::connect_stream(&trust, &http, &[b"http/1.1"]).await {
                Ok(mut witness) => {
                    if witness.write_all(&head).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut browser, &mut witness).await;
                    }
                }
                Err(e) => eprintln!("{http}: {e}"),
            }
        });
    }
}

/// Most bytes of a browser's first request head.
const MAX_HEAD: usize = 16 * 1024;

/// The browser's first request head (and whatever followed it in the same
/// reads), refused unless its `Host` names this machine's loopback.
async fn read_head(browser: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(format!("a request head longer than {MAX_HEAD} bytes"));
        }
        let n = browser
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("the connection closed before a whole request".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let host = text
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("host")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    if loopback_host(&host) {
        Ok(head)
    } else {
        Err(format!(
            "Host {host:?} is not this machine's loopback: open the page as http://127.0.0.1:<port>/"
        ))
    }
}

/// Whether a `Host` header value (`name[:port]`) names loopback.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn refusal(why: &str) -> String {
    format!(
        "HTTP/1.1 421 Misdirected Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{why}\n",
        why.len() + 1
    )
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn only_loopback_hosts_are_relayed() {
        for ok in [
            "127.0.0.1:7480",
            "localhost:7480",
            "LOCALHOST",
            "[::1]:7480",
            "127.0.0.2",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:7480",
            "",
            "10.0.0.1:7480",
            "[2001:db8::1]:80",
            "localhost.evil",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }
}
