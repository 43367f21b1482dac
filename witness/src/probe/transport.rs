//! The I/O seam of the probes and the Consul reader.
//!
//! Everything `crate::probe` does on the network or with processes goes
//! through [`Transport`], so a deterministic simulation can substitute a
//! scripted one (reqwest does not run over turmoil's simulated network).
//! [`RealTransport`] is the production implementation: tokio sockets,
//! reqwest (rustls) for HTTP(S), tonic for gRPC health, tokio processes.
//!
//! Contract of every method: it returns within the `timeout` it is given
//! (callers also wrap each call in their own deadline, so a transport that
//! breaks this contract delays nothing but its own result), it reads at
//! most the bytes it is told to, and it never retries: one call is one
//! attempt, and counting attempts is the caller's job.

use std::fmt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncReadExt;

use crate::config::defaults::MAX_PROBE_BODY;
use crate::process::GroupKiller;

/// Bytes of a command's stderr kept for the operator's error message.
pub const MAX_COMMAND_OUTPUT: usize = 4096;

/// One HTTP GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub url: String,
    /// Extra request headers. Their values are marked sensitive (kept out of
    /// debug logs), because one of them is the Consul token.
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Verify the server's certificate (https only).
    pub tls_verify: bool,
    /// Read at most this many body bytes; the rest is left unread and
    /// [`HttpResponse::truncated`] is set.
    pub max_body: usize,
}

impl HttpRequest {
    /// A GET with TLS verification and the probe body limit.
    pub fn get(url: impl Into<String>, timeout: Duration) -> HttpRequest {
        HttpRequest {
            url: url.into(),
            headers: Vec::new(),
            timeout,
            tls_verify: true,
            max_body: MAX_PROBE_BODY,
        }
    }
}

/// The answer to an [`HttpRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was longer than `max_body` and was cut.
    pub truncated: bool,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a gRPC health check answered (`grpc.health.v1.HealthCheckResponse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcHealth {
    Serving,
    NotServing,
    /// The server does not know the requested service name.
    ServiceUnknown,
    Unknown,
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// The first [`MAX_COMMAND_OUTPUT`] bytes of its stderr, lossily decoded.
    pub stderr: String,
}

/// Why one attempt failed, in words an operator understands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No answer within the deadline (a command is killed first).
    #[error("no answer within {}", crate::config::show(*.0))]
    Timeout(Duration),
    /// The connection was refused, reset or could not be made.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// TLS failed: a certificate that does not verify, a protocol error.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// A command could not be started.
    #[error("cannot run the command: {0}")]
    Spawn(String),
    /// The request itself is malformed (a bad URL, a bad header).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Anything else (a protocol error, a reset mid-answer).
    #[error("{0}")]
    Other(String),
}

/// All the I/O a witness's probes and its Consul reader do.
///
/// Methods return boxed futures so `Arc<dyn Transport>` works; each call
/// is one attempt bounded by the given timeout.
pub trait Transport: Send + Sync + 'static {
    /// Open a TCP connection to `address` (`host:port`) and close it again.
    fn tcp_connect<'a>(
        &'a self,
        address: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), TransportError>>;

    /// One HTTP(S) GET; redirects are not followed, proxies are not used.
    fn http_get(&self, request: HttpRequest)
    -> BoxFuture<'_, Result<HttpResponse, TransportError>>;

    /// The standard gRPC health check of `service` ("" = the whole server)
    /// at `address`, plaintext.
    fn grpc_health<'a>(
        &'a self,
        address: &'a str,
        service: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<GrpcHealth, TransportError>>;

    /// Run `argv` (no shell) with stdin and stdout closed; on timeout kill
    /// its whole process group and return [`TransportError::Timeout`].
    fn run_command<'a>(
        &'a self,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<CommandOutput, TransportError>>;
}

/// The production [`Transport`]: real sockets, processes and TLS.
#[derive(Clone)]
pub struct RealTransport {
    /// Verifies certificates against the platform's trust store.
    verified: reqwest::Client,
    /// Accepts any certificate (`tls_verify = false` targets only).
    unverified: reqwest::Client,
}

impl fmt::Debug for RealTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RealTransport")
    }
}

impl RealTransport {
    /// Build the HTTP clients. Fails only if the TLS backend cannot start.
    pub fn new() -> Result<RealTransport, TransportError> {
        Ok(RealTransport {
            verified: http_client(true)?,
            unverified: http_client(false)?,
        })
    }

    /// The transport of a Consul reader over TLS: certificates checked
    /// against `tls`'s CA (else the system's trust store), presenting its
    /// client certificate if it has one.
    pub fn for_consul(tls: &crate::config::ConsulTls) -> Result<RealTransport, TransportError> {
        let mut builder = base_builder();
        if let Some(ca) = &tls.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(ca).map_err(|e| {
                TransportError::Other(format!("consul.ca_file is not PEM: {}", chain(&e)))
            })?;
            builder = builder.tls_certs_only(certs);
        }
        if let Some(identity) = &tls.identity_pem {
            let identity = reqwest::Identity::from_pem(identity).map_err(|e| {
                TransportError::Other(format!(
                    "consul.cert_file and key_file are not a PEM certificate and key: {}",
                    chain(&e)
                ))
            })?;
            builder = builder.identity(identity);
        }
        let verified = builder.build().map_err(|e| {
            TransportError::Other(format!("cannot start the HTTP client: {}", chain(&e)))
        })?;
        Ok(RealTransport {
            verified: verified.clone(),
            unverified: verified,
        })
    }

    /// As [`new`](Self::new), shared.
    pub fn shared() -> Result<Arc<dyn Transport>, TransportError> {
        Ok(Arc::new(RealTransport::new()?))
    }
}

fn http_client(verify: bool) -> Result<reqwest::Client, TransportError> {
    base_builder()
        .tls_danger_accept_invalid_certs(!verify)
        .build()
        .map_err(|e| TransportError::Other(format!("cannot start the HTTP client: {}", chain(&e))))
}

fn base_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        // A probe reports what the target answers: a redirect to a login
        // page is not "up" unless the policy expects that status.
        .redirect(reqwest::redirect::Policy::none())
        // HTTP(S)_PROXY in the service's environment must not route a
        // health probe (or the Consul token) through somebody else.
        .no_proxy()
        // A fresh connection per probe: a pooled one could hide a dead
        // listener behind an old keep-alive connection.
        .pool_max_idle_per_host(0)
        .user_agent(concat!("witness/", env!("CARGO_PKG_VERSION")))
}

/// An error and its sources, `: `-joined, without repeats, bounded.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    clip(&parts.join(": "), 300)
}

/// `text` cut to at most `max` characters (marked with `…`), with control
/// characters replaced, so an answer can be quoted in a log line.
pub(crate) fn clip(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

fn reqwest_error(err: &reqwest::Error, timeout: Duration) -> TransportError {
    let text = chain(err);
    if err.is_timeout() {
        TransportError::Timeout(timeout)
    } else if err.is_builder() {
        TransportError::Invalid(text)
    } else if text.contains("certificate") || text.contains("tls") || text.contains("TLS") {
        TransportError::Tls(text)
    } else if err.is_connect() {
        TransportError::Connect(text)
    } else {
        TransportError::Other(text)
    }
}

impl Transport for RealTransport {
    fn tcp_connect<'a>(
        &'a self,
        address: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(async move {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
                Err(_) => Err(TransportError::Timeout(timeout)),
                Ok(Err(e)) => Err(TransportError::Connect(format!("{address}: {e}"))),
                // Dropping the stream closes it gracefully: the target sees
                // an ordinary short connection, not a reset.
                Ok(Ok(_stream)) => Ok(()),
            }
        })
    }

    fn http_get(
        &self,
        request: HttpRequest,
    ) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(async move {
            let client = if request.tls_verify {
                &self.verified
            } else {
                &self.unverified
            };
            let mut builder = client.get(&request.url).timeout(request.timeout);
            for (name, value) in &request.headers {
                let mut value = reqwest::header::HeaderValue::from_str(value)
                    .map_err(|e| TransportError::Invalid(format!("header {name}: {e}")))?;
                value.set_sensitive(true);
                builder = builder.header(name.as_str(), value);
            }
            let timeout = request.timeout;
            // reqwest's own timeout covers the whole exchange, body included;
            // this outer one makes the contract hold whatever reqwest does.
            let exchange = async {
                let mut response = builder
                    .send()
                    .await
                    .map_err(|e| reqwest_error(&e, timeout))?;
                let status = response.status().as_u16();
                let headers = response
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_ascii_lowercase(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                let mut body = Vec::new();
                let mut truncated = false;
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|e| reqwest_error(&e, timeout))?
                {
                    let room = request.max_body.saturating_sub(body.len());
                    if chunk.len() > room {
                        body.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(HttpResponse {
                    status,
                    headers,
                    body,
                    truncated,
                })
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or(Err(TransportError::Timeout(timeout)))
        })
    }

    fn grpc_health<'a>(
        &'a self,
        address: &'a str,
        service: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<GrpcHealth, TransportError>> {
        Box::pin(async move {
            use tonic_health::pb::health_check_response::ServingStatus;
            use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

            let check = async {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .map_err(|e| TransportError::Invalid(format!("{address}: {e}")))?
                    .connect_timeout(timeout)
                    .timeout(timeout);
                let channel = endpoint
                    .connect()
                    .await
                    .map_err(|e| TransportError::Connect(format!("{address}: {}", chain(&e))))?;
                let answer = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: service.to_string(),
                    })
                    .await;
                match answer {
                    Ok(reply) => Ok(match reply.into_inner().status() {
                        ServingStatus::Serving => GrpcHealth::Serving,
                        ServingStatus::NotServing => GrpcHealth::NotServing,
                        ServingStatus::ServiceUnknown => GrpcHealth::ServiceUnknown,
                        ServingStatus::Unknown => GrpcHealth::Unknown,
                    }),
                    Err(status) if status.code() == tonic::Code::NotFound => {
                        Ok(GrpcHealth::ServiceUnknown)
                    }
                    Err(status) if status.code() == tonic::Code::Unimplemented => {
                        Err(TransportError::Other(format!(
                            "{address} has no gRPC health service (grpc.health.v1.Health)"
                        )))
                    }
                    Err(status) => Err(TransportError::Other(format!(
                        "gRPC {:?}: {}",
                        status.code(),
                        clip(status.message(), 200)
                    ))),
                }
            };
            tokio::time::timeout(timeout, check)
                .await
                .unwrap_or(Err(TransportError::Timeout(timeout)))
        })
    }

    fn run_command<'a>(
        &'a self,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<CommandOutput, TransportError>> {
        Box::pin(run_command(argv, timeout))
    }
}

async fn run_command(argv: &[String], timeout: Duration) -> Result<CommandOutput, TransportError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(TransportError::Invalid("argv is empty".into()));
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too
        // (a shell script's children would otherwise outlive it).
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| TransportError::Spawn(format!("{program}: {e}")))?;
    // Armed until the command is known to have exited: if this future is
    // dropped or times out first, the whole group is killed.
    let mut group = GroupKiller::new(child.id());
    let mut stderr = child.stderr.take();
    let mut kept = Vec::new();

    let run = async {
        let mut chunk = [0u8; 1024];
        loop {
            tokio::select! {
                status = child.wait() => return status,
                read = read_some(&mut stderr, &mut chunk) => match read {
                    Some(n) => keep(&mut kept, &chunk[..n]),
                    None => stderr = None,
                },
            }
        }
    };
    let status = match tokio::time::timeout(timeout, run).await {
        Err(_) => {
            group.kill();
            // Reap it now that it is dead; bounded in case it is stuck in
            // the kernel (uninterruptible sleep), where nothing else helps.
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
                group.disarm();
            }
            return Err(TransportError::Timeout(timeout));
        }
        Ok(Err(e)) => return Err(TransportError::Other(format!("waiting for {program}: {e}"))),
        Ok(Ok(status)) => status,
    };
    // The leader exited and was reaped: its pid (= the group id) may be
    // reused from now on, so never signal the group after this point.
    group.disarm();
    // What it wrote just before exiting may still sit in the pipe; a
    // grandchild holding the pipe open must not stall the probe.
    if let Some(mut pipe) = stderr {
        let mut chunk = [0u8; 1024];
        let drain = async {
            while let Some(n) = read_some(&mut Some(&mut pipe), &mut chunk).await {
                keep(&mut kept, &chunk[..n]);
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(50), drain).await;
    }
    Ok(CommandOutput {
        code: status.code(),
        stderr: String::from_utf8_lossy(&kept).into_owned(),
    })
}

/// Read once from an optional pipe: `Some(n)` bytes, or `None` at EOF, on
/// error, or when there is no pipe (then it never completes, so a
/// `select!` keeps waiting for the other branch).
async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut [u8],
) -> Option<usize> {
    match pipe {
        Some(p) => match p.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

fn keep(kept: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_COMMAND_OUTPUT.saturating_sub(kept.len());
    kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

#[cfg(test)]
mod tests {
    //! The Consul reader's TLS against a real TLS server that demands a
    //! client certificate, as a Consul agent with `verify_incoming` does.

    use super::*;
    use crate::config::ConsulTls;
    use crate::trust::{Expect, Port, Principal, Trust, certs};

    /// A CA for `cluster` in `dir` (unless there is one) and, from it, a
    /// certificate for `id` valid for 127.0.0.1: (CA PEM, certificate and
    /// key PEM).
    fn issue(dir: &std::path::Path, cluster: &str, id: u64) -> (Vec<u8>, Vec<u8>) {
        let now = crate::trust::unix_now();
        if !dir.join(certs::CA_CERT).exists() {
            certs::init_ca(dir, cluster, 1, false, now).expect("CA");
        }
        let (cert, key) = certs::issue_into(
            dir,
            dir,
            Principal::Peer { id },
            &["127.0.0.1".to_string()],
            1,
            false,
            now,
        )
        .expect("certificate");
        let ca = std::fs::read(dir.join(certs::CA_CERT)).expect("CA pem");
        let mut identity = std::fs::read(cert).expect("cert pem");
        identity.extend(std::fs::read(key).expect("key pem"));
        (ca, identity)
    }

    /// A one-route HTTPS server on loopback (Consul's health endpoint)
    /// that accepts only clients with a certificate of `dir`'s CA.
    async fn consul_over_tls(dir: &std::path::Path) -> std::net::SocketAddr {
        issue(dir, "consul", 2);
        let files = crate::trust::TlsFiles {
            ca: dir.join(certs::CA_CERT),
            cert: dir.join("peer-2.pem"),
            key: dir.join("peer-2.key"),
            deny: None,
        };
        let trust = Trust::load(
            files,
            Expect::Peer {
                cluster: "consul".into(),
                id: 2,
            },
        )
        .expect("server trust");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let incoming = crate::trust::Incoming::new(listener, Some(trust), Port::Http);
        let addr = incoming.local_addr();
        let app = axum::Router::new().route(
            "/v1/health/state/any",
            axum::routing::get(|| async {
                r#"[{"Node":"mbox-a","CheckID":"serfHealth","Status":"passing"}]"#
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(incoming, app).await;
        });
        addr
    }

    fn request(addr: std::net::SocketAddr) -> HttpRequest {
        HttpRequest {
            url: format!("https://127.0.0.1:{}/v1/health/state/any", addr.port()),
            headers: Vec::new(),
            timeout: Duration::from_secs(5),
            tls_verify: true,
            max_body: 64 * 1024,
        }
    }

    #[tokio::test]
    async fn the_consul_reader_speaks_mutual_tls_with_its_ca_and_certificate() {
        let server_dir = tempfile::tempdir().expect("tempdir");
        let addr = consul_over_tls(server_dir.path()).await;
        let (ca, identity) = issue(server_dir.path(), "consul", 1);

        let transport = RealTransport::for_consul(&ConsulTls {
            ca_pem: Some(ca.clone()),
            identity_pem: Some(identity),
        })
        .expect("transport");
        let answer = transport.http_get(request(addr)).await.expect("answered");
        assert_eq!(answer.status, 200);
        assert!(String::from_utf8_lossy(&answer.body).contains("passing"));

        // Without a client certificate, the agent refuses the handshake.
        let transport = RealTransport::for_consul(&ConsulTls {
            ca_pem: Some(ca),
            identity_pem: None,
        })
        .expect("transport");
        assert!(transport.http_get(request(addr)).await.is_err());

        // With another CA, the agent's certificate is not trusted.
        let other_dir = tempfile::tempdir().expect("tempdir");
        let (other_ca, other_identity) = issue(other_dir.path(), "consul", 1);
        let transport = RealTransport::for_consul(&ConsulTls {
            ca_pem: Some(other_ca),
            identity_pem: Some(other_identity),
        })
        .expect("transport");
        let refused = transport
            .http_get(request(addr))
            .await
            .expect_err("a server of another CA is refused");
        assert!(
            format!("{refused:?}")
                .to_lowercase()
                .contains("certificate"),
            "{refused:?}"
        );
    }
}
