//! The delaying TCP proxy behind the latency fault. This kernel has no
//! `netem` qdisc, so latency is added in user space: the client host's
//! connections to `target` are steered (by DNAT, see the parent module) to a
//! proxy listening on the client's own loopback, which forwards each
//! connection to `target` and holds every chunk, in each direction, for
//! `delay` plus a random `jitter` before writing it on.
//!
//! The proxy runs on a dedicated thread that has entered the *client's*
//! namespace, with a single-threaded tokio runtime, so both its listener and
//! its upstream connections belong to the client host. The upstream
//! connection therefore leaves from the client's own address: the target
//! sees the real peer, and any partition rule that applies to the client
//! applies to proxied traffic too. Its upstream sockets carry [`MARK`] so the
//! steering rule skips them (otherwise the proxy would steer to itself).
//!
//! Invariants: order within a direction is kept (a chunk is never released
//! before the one read before it); memory is bounded by [`MAX_CONNS`] ×
//! 2 directions × [`QUEUE_CHUNKS`] × [`CHUNK`]; stopping the proxy closes every
//! connection it holds and ends its thread.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc as tmpsc, oneshot};

use crate::error::{Error, Result};
use crate::netns;

/// Packet mark on the proxy's upstream sockets; the DNAT rule matches
/// `! --mark MARK`. Any value works inside our namespaces, where nothing
/// else marks packets; this one spells "WJ".
pub const MARK: u32 = 0x574a;

/// Largest chunk read at once. Chunks, not bytes, are what get delayed.
pub const CHUNK: usize = 16 * 1024;

/// Chunks held per direction of one connection. When full, the proxy stops
/// reading that direction and TCP flow control pushes back on the sender,
/// as a slow real link would.
pub const QUEUE_CHUNKS: usize = 64;

/// Connections proxied at once; more wait in the listen backlog.
pub const MAX_CONNS: usize = 256;

/// Bound on connecting upstream. On failure the client's connection is
/// closed, which the client sees as a dropped connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Bound on the proxy thread starting (entering the namespace, binding).
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on the proxy thread ending once told to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How much delay a latency fault adds, per chunk and per direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    /// Added to every chunk in each direction: a round trip gains at least
    /// twice this.
    pub delay: Duration,
    /// A further uniformly random 0..=jitter per chunk (order is still kept).
    pub jitter: Duration,
}

/// A running proxy. Dropping it stops it.
#[derive(Debug)]
pub struct Proxy {
    listen: SocketAddr,
    target: SocketAddrV4,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Start a proxy inside namespace `ns` forwarding to `target`, listening
    /// on an ephemeral port of 127.0.0.1 there.
    pub fn start(ns: &str, target: SocketAddrV4, latency: Latency, seed: u64) -> Result<Proxy> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr>>();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = netns::spawn_in(ns, &format!("proxy:{target}"), move |entered| {
            let started = entered.and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("building the proxy runtime", e))
            });
            let rt = match started {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::io("binding the proxy listener", e)));
                        return;
                    }
                };
                let addr = listener
                    .local_addr()
                    .map_err(|e| Error::io("proxy local address", e));
                let _ = ready_tx.send(addr);
                serve(listener, target, latency, seed, stop_rx).await;
            });
            // Dropping the runtime here cancels every connection task and
            // closes their sockets.
        })?;
        let listen = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::io(
                    format!("starting the proxy to {target} in {ns}"),
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer from proxy thread",
                    ),
                ));
            }
        };
        Ok(Proxy {
            listen,
            target,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Where the proxy listens (inside its namespace).
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddrV4 {
        self.target
    }

    /// Stop accepting, close every proxied connection, end the thread.
    /// Idempotent.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                // Cannot happen unless the runtime is wedged; leaking the
                // thread is better than hanging the harness.
                eprintln!(
                    "jepsen: proxy to {} did not stop within {STOP_TIMEOUT:?}",
                    self.target
                );
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    listener: TcpListener,
    target: SocketAddrV4,
    latency: Latency,
    seed: u64,
    mut stop: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNS));
    let mut conn_id: u64 = 0;
    loop {
        // Take a slot before accepting, so excess clients wait in the
        // kernel's backlog instead of in our memory.
        let permit = tokio::select! {
            _ = &mut stop => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else {
            // Accept errors (e.g. the client reset before we got to it) are
            // per-connection; the listener itself goes on.
            continue;
        };
        conn_id += 1;
        let seed = seed ^ conn_id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        tokio::spawn(async move {
            let _permit = permit;
            proxy_one(client, target, latency, seed).await;
        });
    }
}

async fn connect_marked(target: SocketAddrV4) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Mark, &MARK)
        .map_err(std::io::Error::from)?;
    sock.connect(SocketAddr::V4(target)).await
}

async fn proxy_one(client: TcpStream, target: SocketAddrV4, latency: Latency, seed: u64) {
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, connect_marked(target)).await {
        Ok(Ok(s)) => s,
        // Unreachable or refused upstream: closing the client's connection
        // is the nearest thing to what it would have seen without us.
        _ => return,
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = pipe(cr, uw, latency, StdRng::seed_from_u64(seed));
    let down = pipe(ur, cw, latency, StdRng::seed_from_u64(seed.rotate_left(1)));
    tokio::pin!(up, down);
    // A direction that ends cleanly (EOF, passed on as a half-close) leaves
    // the other running, as TCP allows; one that fails ends the connection,
    // so no task waits forever on a peer that is gone.
    tokio::select! {
        clean = &mut up => if clean { down.await; },
        clean = &mut down => if clean { up.await; },
    }
}

/// Copy `from` to `to`, releasing each chunk no earlier than `delay +
/// jitter` after it was read and never before the previous chunk. True if
/// it ended cleanly: EOF read, every chunk written, the half-close passed on.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    latency: Latency,
    mut rng: StdRng,
) -> bool {
    let (tx, mut rx) = tmpsc::channel::<(tokio::time::Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let jitter_us = u64::try_from(latency.jitter.as_micros()).unwrap_or(u64::MAX);
    let reader = async move {
        let mut last = tokio::time::Instant::now();
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match from.read(&mut buf).await {
                // Returning drops tx, which tells the writer that no more
                // chunks come.
                Ok(0) => return true,
                Ok(n) => n,
                Err(_) => return false,
            };
            buf.truncate(n);
            let extra = Duration::from_micros(if jitter_us == 0 {
                0
            } else {
                rng.random_range(0..=jitter_us)
            });
            // max() keeps order: a chunk with less jitter never overtakes
            // the one before it.
            let due = (tokio::time::Instant::now() + latency.delay + extra).max(last);
            last = due;
            if tx.send((due, buf)).await.is_err() {
                return false;
            }
        }
    };
    let writer = async move {
        while let Some((due, buf)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&buf).await.is_err() {
                return false;
            }
        }
        // Pass the half-close on, after every delayed chunk is out.
        to.shutdown().await.is_ok()
    };
    tokio::pin!(reader, writer);
    tokio::select! {
        clean = &mut reader => clean && writer.await,
        // The writer only finishes first when a write failed.
        _ = &mut writer => false,
    }
}
