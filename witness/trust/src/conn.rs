//! Connections: the accepting side of a witness's ports and the dialing side
//! of every client, with or without TLS.
//!
//! Accepting: one task accepts TCP connections, sets `TCP_NODELAY`, and hands
//! each to its own handshake task (bounded in time by [`HANDSHAKE_TIMEOUT`]
//! and in number by [`MAX_HANDSHAKES`], so a client that opens connections
//! and never speaks cannot hold the port). A finished handshake yields a
//! [`Conn`] whose [`ConnInfo`] — the caller's identity, read once — reaches
//! every request on it as a request extension (tonic's `Connected`).
//!
//! Dialing: [`channel`] makes a lazily connecting tonic channel whose
//! connector dials TCP, runs the TLS handshake with the process's current
//! certificate, and, when told which witness it expects, refuses a server
//! whose certificate names another node id.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use super::Trust;
use super::identity::{Identity, Principal};
use crate::NodeId;

/// A client must finish its TLS handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once, per port; more connections wait in the
/// kernel's backlog, and are closed if they find no slot when accepted.
pub const MAX_HANDSHAKES: usize = 128;
/// Finished connections waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// Which of a witness's ports a listener serves: they differ in ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Grpc,
    Http,
}

/// The caller on one connection, as its certificate says.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: Identity,
    pub chain: Arc<Vec<CertificateDer<'static>>>,
    /// The certificate's serial number (lower-case hex) and expiry (Unix
    /// seconds): a connection outliving its certificate is refused.
    pub serial: String,
    pub not_after: i64,
    /// [`Trust::generation`] when the handshake was checked.
    pub generation: u64,
}

/// What a request knows of its connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// `None` on a plaintext port (`insecure = true`).
    pub caller: Option<Arc<Caller>>,
}

impl ConnInfo {
    /// The caller's principal, if the connection is authenticated.
    pub fn principal(&self) -> Option<&Principal> {
        self.caller.as_ref().map(|c| &c.identity.principal)
    }
}

/// The stream under a connection: plaintext or TLS.
pub enum Stream<IO> {
    Plain(IO),
    Tls(Box<tokio_rustls::server::TlsStream<IO>>),
}

/// One accepted connection and what is known of its caller.
pub struct Conn<IO> {
    stream: Stream<IO>,
    info: ConnInfo,
}

impl<IO> Conn<IO> {
    /// A plaintext connection: no caller identity.
    pub fn plain(io: IO, remote: Option<SocketAddr>) -> Conn<IO> {
        Conn {
            stream: Stream::Plain(io),
            info: ConnInfo {
                remote,
                caller: None,
            },
        }
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

macro_rules! delegate_io {
    ($ty:ident, $($variant:ident),+) => {
        impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for $ty<IO> {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut().inner() {
                    $(Inner::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }

        impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for $ty<IO> {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut().inner() {
                    $(Inner::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut().inner() {
                    $(Inner::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut().inner() {
                    $(Inner::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut().inner() {
                    $(Inner::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

/// A borrowed view of either stream kind, so the I/O traits are written once
/// for the server's and the client's connections.
enum Inner<'a, P, T> {
    Plain(&'a mut P),
    Tls(&'a mut T),
}

impl<IO> Conn<IO> {
    fn inner(&mut self) -> Inner<'_, IO, tokio_rustls::server::TlsStream<IO>> {
        match &mut self.stream {
            Stream::Plain(s) => Inner::Plain(s),
            Stream::Tls(s) => Inner::Tls(s.as_mut()),
        }
    }
}

delegate_io!(Conn, Plain, Tls);

/// A client's connection to a witness: plaintext or TLS.
pub struct ClientConn<IO> {
    stream: ClientStream<IO>,
}

enum ClientStream<IO> {
    Plain(IO),
    Tls(Box<tokio_rustls::client::TlsStream<IO>>),
}

impl<IO> ClientConn<IO> {
    fn inner(&mut self) -> Inner<'_, IO, tokio_rustls::client::TlsStream<IO>> {
        match &mut self.stream {
            ClientStream::Plain(s) => Inner::Plain(s),
            ClientStream::Tls(s) => Inner::Tls(s.as_mut()),
        }
    }
}

delegate_io!(ClientConn, Plain, Tls);

/// Accepted connections of one port, as tonic's `serve_with_incoming` and
/// axum's `serve` take them.
pub struct Incoming {
    rx: mpsc::Receiver<Conn<TcpStream>>,
    local: SocketAddr,
}

impl Incoming {
    /// Accept on `listener`: TLS with `trust`'s current certificate when
    /// given, plaintext otherwise. The accepting task ends when the
    /// `Incoming` is dropped.
    pub fn new(listener: TcpListener, trust: Option<Arc<Trust>>, port: Port) -> Incoming {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(accept_loop(listener, trust, port, tx));
        Incoming { rx, local }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl futures::Stream for Incoming {
    type Item = io::Result<Conn<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => {
                let remote = conn.info.remote.unwrap_or(self.local);
                (conn, remote)
            }
            // The accepting task only ends when this is dropped; never
            // return a connection that does not exist.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Self {
        stream.io().info.clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    trust: Option<Arc<Trust>>,
    port: Port,
    tx: mpsc::Sender<Conn<TcpStream>>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Small RPCs must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let Some(trust) = trust.clone() else {
            if tx.send(Conn::plain(tcp, Some(remote))).await.is_err() {
                return;
            }
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            trust.note_handshake_failure(remote, "too many handshakes in progress");
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(&trust, tcp, Some(remote), port))
                .await
            {
                Ok(Ok(conn)) => {
                    let _ = tx.send(conn).await;
                }
                Ok(Err(why)) => trust.note_handshake_failure(remote, &why),
                Err(_) => trust.note_handshake_failure(
                    remote,
                    &format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
                ),
            }
        });
    }
}

/// The server side of the TLS handshake on an accepted connection `io`
/// (TCP here; the deterministic simulation's own streams): the caller's
/// certificate checked by `trust`'s current verifier and its identity read
/// once. The caller bounds it in time.
pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
    trust: &Trust,
    io: IO,
    remote: Option<SocketAddr>,
    port: Port,
) -> Result<Conn<IO>, String> {
    // The generation first: a reload between the two reads stamps the
    // connection with the older generation, so it is re-checked later.
    let generation = trust.generation();
    let material = trust.current();
    let config = match port {
        Port::Grpc => material.grpc_server.clone(),
        Port::Http => material.http_server.clone(),
    };
    let tls = tokio_rustls::TlsAcceptor::from(config)
        .accept(io)
        .await
        .map_err(|e| e.to_string())?;
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    // The verifier already demanded a certificate and read it; reading it
    // again here cannot fail, but say so if it ever does.
    let leaf = chain
        .first()
        .ok_or_else(|| "no client certificate".to_string())?;
    let info = super::pki::cert_info(leaf)?;
    Ok(Conn {
        stream: Stream::Tls(Box::new(tls)),
        info: ConnInfo {
            remote,
            caller: Some(Arc::new(Caller {
                identity: info.identity,
                chain: Arc::new(chain),
                serial: info.serial,
                not_after: info.not_after,
                generation,
            })),
        },
    })
}

/// Which witness a client expects at the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dial {
    /// Any witness of the cluster (agents, `witnessctl`).
    AnyWitness,
    /// This node id (Raft between witnesses, forwarding to the leader).
    Witness(NodeId),
}

/// A lazily connecting channel through `endpoint` (whose URI is
/// `http://host:port`): TLS with `trust`'s current certificate when given.
/// `endpoint`'s connect timeout bounds the TCP connect and the handshake.
pub fn channel(endpoint: Endpoint, trust: Option<Arc<Trust>>, expect: Dial) -> Channel {
    endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
        let trust = trust.clone();
        async move { dial(&uri, trust.as_deref(), expect).await }
    }))
}

/// Like [`channel`], connecting now: a connection or handshake failure is
/// the error (with the handshake explained), not the first call's.
pub async fn connect(
    endpoint: Endpoint,
    trust: Option<Arc<Trust>>,
    expect: Dial,
) -> Result<Channel, tonic::transport::Error> {
    endpoint
        .connect_with_connector(tower::service_fn(move |uri: Uri| {
            let trust = trust.clone();
            async move { dial(&uri, trust.as_deref(), expect).await }
        }))
        .await
}

async fn dial(
    uri: &Uri,
    trust: Option<&Trust>,
    expect: Dial,
) -> io::Result<hyper_util::rt::TokioIo<ClientConn<TcpStream>>> {
    let host = uri.host().unwrap_or_default();
    // `[::1]` in a URI is `::1` to a resolver.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    secure(tcp, &host, port, trust, expect)
        .await
        .map(hyper_util::rt::TokioIo::new)
}

/// The client side of a connection `io` to a witness at `host:port` (TCP
/// here; the deterministic simulation's own streams): plaintext without
/// `trust`, else a TLS handshake presenting `trust`'s current certificate
/// and, for [`Dial::Witness`], refusing a server whose certificate names
/// another node.
pub async fn secure<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    host: &str,
    port: u16,
    trust: Option<&Trust>,
    expect: Dial,
) -> io::Result<ClientConn<IO>> {
    let Some(trust) = trust else {
        return Ok(ClientConn {
            stream: ClientStream::Plain(io),
        });
    };
    let material = trust.current();
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a host name: {e}"),
        )
    })?;
    let tls = tokio_rustls::TlsConnector::from(material.client.clone())
        .connect(name, io)
        .await
        .map_err(|e| explain_handshake(e, host, port))?;
    if let Dial::Witness(id) = expect {
        let who = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| super::pki::cert_info(c).map(|i| i.identity));
        match who {
            Some(Ok(Identity {
                principal: Principal::Peer { id: got },
                ..
            })) if got == id => {}
            Some(Ok(other)) => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{host}:{port} presented {other}, not witness node {id}: the membership's \
                         address for node {id} reaches another witness"
                    ),
                ));
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{host}:{port} presented no readable certificate"),
                ));
            }
        }
    }
    Ok(ClientConn {
        stream: ClientStream::Tls(Box::new(tls)),
    })
}

/// A TLS connection to a witness's port at `addr` (`host:port`) speaking
/// `alpn`, presenting `trust`'s certificate: for a caller that carries its
/// own protocol over it (`witnessctl status-page` relays HTTP/1.1).
pub async fn connect_stream(
    trust: &Trust,
    addr: &str,
    alpn: &[&[u8]],
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr:?} is not host:port"),
            )
        })?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    let mut config = (*trust.current().client).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a host name: {e}"),
        )
    })?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| explain_handshake(e, &host, port))
}

/// A handshake error in words an operator can act on.
fn explain_handshake(e: io::Error, host: &str, port: u16) -> io::Error {
    let text = e.to_string();
    let hint = if text.contains("UnknownCA") || text.contains("unknown issuer") {
        "the two ends trust different CAs: check tls.ca on both"
    } else if text.contains("CertificateExpired") || text.contains("expired") {
        "a certificate has expired: reissue it with `witness certs`"
    } else if text.contains("BadCertificate")
        || text.contains("AccessDenied")
        || text.contains("CertificateRequired")
        || text.contains("CertificateRevoked")
    {
        "the witness refused this certificate (another cluster, no identity, or on its deny \
         list): see the witness's log"
    } else if text.contains("InvalidCertificate") {
        "the server's certificate is not a witness certificate of this cluster"
    } else {
        "is it a witness's gRPC port, with TLS on?"
    };
    io::Error::new(
        e.kind(),
        format!("TLS handshake with {host}:{port} failed: {text} ({hint})"),
    )
}
