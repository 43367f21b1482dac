//! The witness's network seams, served over turmoil's simulated TCP:
//! a [`Dialer`] for Raft peers and forwarding, the gRPC server's incoming
//! connections, gRPC channels for the lease clients, and a probe
//! [`Transport`] whose TCP connects reach simulated hosts.
//!
//! Every gRPC connection is mutual TLS, set up by the production code
//! (`witness::trust::conn::accept` and `secure`) over the simulated
//! stream, with the certificates of `crate::pki`: a request reaches the
//! services with the caller identity a real one would carry.
//!
//! turmoil's TCP never retransmits: a segment dropped by a partition leaves
//! a gap that stalls the stream for good. A real kernel would retransmit
//! after the partition heals; here HTTP/2 keep-alive pings notice the stall
//! and tonic reconnects, which is what a real client does after a long
//! enough outage anyway.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};
use witness::probe::{
    CommandOutput, GrpcHealth, HttpRequest, HttpResponse, Transport, TransportError,
};
use witness::raft::network::Dialer;
use witness::trust::Trust;
use witness::trust::conn::{Dial, Port};

/// A TCP connect that gets no answer (a partition drops the SYN) gives up
/// after this long, like the production dialer's connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 keep-alive: how often an idle or busy connection is pinged, and
/// how long a ping may go unanswered before the connection is dropped and
/// redialled (see the module doc).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// A witness's accepted, authenticated connection.
pub type TlsConn = witness::trust::conn::Conn<turmoil::net::TcpStream>;

/// One accepted or dialled simulated TCP connection, as tonic wants it.
pub struct Conn(turmoil::net::TcpStream);

impl Connected for Conn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The connections a simulated witness's gRPC listener accepts, forever,
/// each after its TLS handshake with `trust` (in its own task, bounded by
/// the production [`HANDSHAKE_TIMEOUT`](witness::trust::conn::HANDSHAKE_TIMEOUT)).
/// A failed handshake is counted and logged by `trust`, as in production.
/// Accepting stops when the server drops the stream or the host crashes.
pub fn incoming(
    listener: turmoil::net::TcpListener,
    trust: Arc<Trust>,
) -> impl Stream<Item = io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsConn>(64);
    tokio::spawn(async move {
        while !tx.is_closed() {
            let Ok((stream, remote)) = listener.accept().await else {
                continue;
            };
            let (tx, trust) = (tx.clone(), trust.clone());
            tokio::spawn(async move {
                let handshake =
                    witness::trust::conn::accept(&trust, stream, Some(remote), Port::Grpc);
                match tokio::time::timeout(witness::trust::conn::HANDSHAKE_TIMEOUT, handshake).await
                {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(conn).await;
                    }
                    Ok(Err(why)) => trust.note_handshake_failure(remote, &why),
                    Err(_) => trust.note_handshake_failure(remote, "no TLS handshake in time"),
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let conn = rx.recv().await?;
        Some((Ok(conn), rx))
    })
}

/// Connect to `host:port` on the simulated network, bounded by
/// [`CONNECT_TIMEOUT`].
async fn connect(host: String, port: u16) -> io::Result<turmoil::net::TcpStream> {
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        turmoil::net::TcpStream::connect((host, port)),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// A lazily connecting gRPC channel to `addr` (`host:port`) over turmoil,
/// mutual TLS presenting `trust`'s certificate and expecting `expect` at
/// the other end.
pub fn channel(addr: &str, trust: Arc<Trust>, expect: Dial) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
            let trust = trust.clone();
            async move {
                let host = uri.host().unwrap_or_default().to_string();
                let port = uri.port_u16().unwrap_or(80);
                // The endpoint's connect timeout bounds the connect and the
                // handshake together, as in production.
                let tcp = connect(host.clone(), port).await?;
                witness::trust::conn::secure(tcp, &host, port, Some(&trust), expect)
                    .await
                    .map(TokioIo::new)
            }
        })),
    )
}

/// A simulated listener as axum serves it (the fake Consul agents).
pub struct AxumListener(pub turmoil::net::TcpListener);

impl axum::serve::Listener for AxumListener {
    type Io = Conn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Conn, std::net::SocketAddr) {
        loop {
            if let Ok((stream, peer)) = self.0.accept().await {
                return (Conn(stream), peer);
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }
}

/// A witness's peer dialer over turmoil, presenting its certificate
/// `trust` and expecting the dialled node's.
pub fn dialer(trust: Arc<Trust>) -> Dialer {
    Arc::new(move |id, addr: &str| channel(addr, trust.clone(), Dial::Witness(id)))
}

/// Probes and the Consul reader over turmoil: TCP connects and plain-HTTP
/// GETs reach the simulated hosts (the simulation's policy uses TCP targets,
/// and each witness reads its site's fake Consul agent over HTTP); gRPC
/// health and commands are not simulated.
pub struct SimTransport;

/// Most bytes of an HTTP answer's status line and headers.
const MAX_HTTP_HEAD: usize = 16 * 1024;

/// One HTTP/1.0 GET (the server closes the connection after its answer, so
/// the body ends at EOF) to a `http://host:port/path` URL, bounded by the
/// request's timeout and `max_body`.
async fn http_get(request: HttpRequest) -> Result<HttpResponse, TransportError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = request
        .url
        .strip_prefix("http://")
        .ok_or_else(|| TransportError::Invalid(format!("not a plain http URL: {}", request.url)))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let (host, port) = authority
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| TransportError::Invalid(format!("no host:port in {}", request.url)))?;
    let mut stream = connect(host, port)
        .await
        .map_err(|e| TransportError::Connect(e.to_string()))?;
    let mut head = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n");
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| TransportError::Other(e.to_string()))?;
    let limit = (MAX_HTTP_HEAD + request.max_body) as u64;
    let mut raw = Vec::new();
    (&mut stream)
        .take(limit + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| TransportError::Other(format!("reading the answer: {e}")))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| TransportError::Other("an answer without a complete head".into()))?;
    let text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| TransportError::Other(format!("a bad status line in {text:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let truncated = body.len() > request.max_body;
    body.truncate(request.max_body);
    Ok(HttpResponse {
        status,
        headers,
        body,
        truncated,
    })
}

impl Transport for SimTransport {
    fn tcp_connect<'a>(
        &'a self,
        address: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        async move {
            let attempt = turmoil::net::TcpStream::connect(address);
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(_stream)) => Ok(()),
                Ok(Err(e)) => Err(TransportError::Connect(e.to_string())),
                Err(_) => Err(TransportError::Timeout(timeout)),
            }
        }
        .boxed()
    }

    fn http_get(
        &self,
        request: HttpRequest,
    ) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        let timeout = request.timeout;
        async move {
            match tokio::time::timeout(timeout, http_get(request)).await {
                Ok(answer) => answer,
                Err(_) => Err(TransportError::Timeout(timeout)),
            }
        }
        .boxed()
    }

    fn grpc_health<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Duration,
    ) -> BoxFuture<'a, Result<GrpcHealth, TransportError>> {
        async {
            Err(TransportError::Invalid(
                "gRPC health is not simulated".into(),
            ))
        }
        .boxed()
    }

    fn run_command<'a>(
        &'a self,
        _: &'a [String],
        _: Duration,
    ) -> BoxFuture<'a, Result<CommandOutput, TransportError>> {
        async { Err(TransportError::Invalid("commands are not simulated".into())) }.boxed()
    }
}
