//! `witnessctl status-page`: a witness's status page for a browser that has
//! no client certificate.
//!
//! The HTTP port of a witness takes mutual TLS like the gRPC port; importing
//! a client certificate into a browser is a chore at 3 a.m. This relays a
//! loopback port to the witness's HTTP port: each browser connection is
//! carried over its own TLS connection that presents the operator's
//! certificate (`--ca/--cert/--key`). Only loopback is served, so the relay
//! lends the certificate to nobody but the local user.

use std::net::SocketAddr;

use tokio::net::TcpListener;

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
            match witness_trust::conn::connect_stream(&trust, &http, &[b"http/1.1"]).await {
                Ok(mut witness) => {
                    let _ = tokio::io::copy_bidirectional(&mut browser, &mut witness).await;
                }
                Err(e) => eprintln!("{http}: {e}"),
            }
        });
    }
}
