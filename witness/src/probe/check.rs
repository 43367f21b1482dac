//! One probe of one target: what to ask ([`CheckSpec`]) and how to judge the
//! answer. One call is one attempt, bounded by its timeout; counting
//! attempts into a health is [`TargetState`](super::TargetState)'s job.

use std::time::Duration;

use crate::config::{ProbeKind, TargetPolicy, defaults::MAX_PROBE_BODY};

use super::transport::{GrpcHealth, HttpRequest, Transport, TransportError, clip};

/// What a target's probe does, resolved from its policy with defaults.
/// Two targets with equal specs measure the same thing, so a policy change
/// that leaves the spec equal keeps the target's counted state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CheckSpec {
    Tcp {
        address: String,
    },
    Http {
        url: String,
        expect_status: u16,
        expect_body: Option<String>,
        tls_verify: bool,
    },
    Grpc {
        address: String,
        service: String,
    },
    Command {
        argv: Vec<String>,
    },
}

impl CheckSpec {
    /// The spec of a (validated) target; `None` when a required key is
    /// missing, which validation rules out.
    pub fn from_target(target: &TargetPolicy) -> Option<CheckSpec> {
        Some(match target.kind {
            ProbeKind::Tcp => CheckSpec::Tcp {
                address: target.address.clone()?,
            },
            ProbeKind::Grpc => CheckSpec::Grpc {
                address: target.address.clone()?,
                service: target.grpc_service().to_string(),
            },
            ProbeKind::Http | ProbeKind::Https => CheckSpec::Http {
                url: target.url.clone()?,
                expect_status: target.expect_status(),
                expect_body: target.expect_body.clone(),
                // Plain http has no certificate; the flag only matters for https.
                tls_verify: target.kind == ProbeKind::Http || target.tls_verify(),
            },
            ProbeKind::Command => CheckSpec::Command {
                argv: target.argv.clone()?,
            },
        })
    }
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    /// Why it failed, for `status`; `None` on success.
    pub error: Option<String>,
    /// How long the attempt took (the timeout when it ran out).
    pub latency: Duration,
}

/// Run one probe, bounded by `timeout` whatever the transport does.
pub async fn probe_once(
    transport: &dyn Transport,
    spec: &CheckSpec,
    timeout: Duration,
) -> ProbeResult {
    let started = tokio::time::Instant::now();
    let verdict = match tokio::time::timeout(timeout, attempt(transport, spec, timeout)).await {
        Ok(verdict) => verdict,
        // Dropping the attempt kills a command's process group (the
        // transport's contract), so both deadlines mean the same thing.
        Err(_) => Err(timed_out(spec, timeout)),
    };
    let latency = started.elapsed().min(timeout);
    match verdict {
        Ok(()) => ProbeResult {
            ok: true,
            error: None,
            latency,
        },
        Err(error) => ProbeResult {
            ok: false,
            error: Some(error),
            latency,
        },
    }
}

/// `Ok` when the target answered as healthy, else what was wrong.
async fn attempt(
    transport: &dyn Transport,
    spec: &CheckSpec,
    timeout: Duration,
) -> Result<(), String> {
    match spec {
        CheckSpec::Tcp { address } => transport
            .tcp_connect(address, timeout)
            .await
            .map_err(|e| e.to_string()),
        CheckSpec::Http {
            url,
            expect_status,
            expect_body,
            tls_verify,
        } => {
            let request = HttpRequest {
                url: url.clone(),
                headers: Vec::new(),
                timeout,
                tls_verify: *tls_verify,
                max_body: MAX_PROBE_BODY,
            };
            let response = transport
                .http_get(request)
                .await
                .map_err(|e| e.to_string())?;
            if response.status != *expect_status {
                return Err(format!(
                    "HTTP status {} (expected {expect_status})",
                    response.status
                ));
            }
            if let Some(needle) = expect_body {
                let body = String::from_utf8_lossy(&response.body);
                if !body.contains(needle.as_str()) {
                    let within = if response.truncated {
                        format!(" (searched the first {} KiB)", MAX_PROBE_BODY / 1024)
                    } else {
                        String::new()
                    };
                    return Err(format!(
                        "body does not contain {:?}{within}",
                        clip(needle, 60)
                    ));
                }
            }
            Ok(())
        }
        CheckSpec::Grpc { address, service } => {
            match transport
                .grpc_health(address, service, timeout)
                .await
                .map_err(|e| e.to_string())?
            {
                GrpcHealth::Serving => Ok(()),
                GrpcHealth::NotServing => Err("gRPC health: NOT_SERVING".into()),
                GrpcHealth::ServiceUnknown => Err(format!(
                    "gRPC health: service {service:?} is unknown to the server"
                )),
                GrpcHealth::Unknown => Err("gRPC health: UNKNOWN".into()),
            }
        }
        CheckSpec::Command { argv } => {
            let output = transport
                .run_command(argv, timeout)
                .await
                .map_err(|e| match e {
                    TransportError::Timeout(t) => timed_out(spec, t),
                    other => other.to_string(),
                })?;
            match output.code {
                Some(0) => Ok(()),
                code => {
                    let why = output
                        .stderr
                        .lines()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("");
                    let status = match code {
                        Some(code) => format!("exit status {code}"),
                        None => "killed by a signal".to_string(),
                    };
                    if why.is_empty() {
                        Err(status)
                    } else {
                        Err(format!("{status}: {}", clip(why.trim(), 200)))
                    }
                }
            }
        }
    }
}

fn timed_out(spec: &CheckSpec, timeout: Duration) -> String {
    match spec {
        CheckSpec::Command { .. } => format!(
            "killed after running longer than {}",
            crate::config::show(timeout)
        ),
        _ => TransportError::Timeout(timeout).to_string(),
    }
}
