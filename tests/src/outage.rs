//! Network outages for the real broker: a private tansu process that advertises the address
//! of a TCP proxy in front of it, so that every client connection runs through the proxy,
//! which can drop all connections and refuse new ones for a while.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::own_tansu::{free_port, OwnTansu};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy on 127.0.0.1 that can cut its traffic.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
}

#[derive(Debug, Default)]
struct ProxyState {
    acceptor: Option<JoinHandle<()>>,
    connections: Vec<JoinHandle<()>>,
    cuts: u64,
}

impl Proxy {
    /// Listens on a free port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let proxy = Self {
            addr,
            upstream,
            state: Arc::default(),
        };
        proxy.accept_on(listener);
        proxy
    }

    /// The address clients use.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn accept_on(&self, listener: TcpListener) {
        let (upstream, state) = (self.upstream, Arc::clone(&self.state));
        let acceptor = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut s = state.lock().expect("lock");
                s.connections.retain(|c| !c.is_finished());
                s.connections.push(conn);
            }
        });
        self.state.lock().expect("lock").acceptor = Some(acceptor);
    }

    /// Drops every connection and refuses new ones for `outage`, then accepts again.
    pub async fn cut_for(&self, outage: Duration) {
        {
            let mut s = self.state.lock().expect("lock");
            s.cuts += 1;
            if let Some(a) = s.acceptor.take() {
                a.abort();
            }
            for c in s.connections.drain(..) {
                c.abort();
            }
        }
        // Let the aborted acceptor drop its listener: the port refuses connections.
        tokio::time::sleep(outage).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!("re-binding the proxy: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot re-bind the proxy on {}: {e}", self.addr),
            }
        };
        self.accept_on(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(a) = s.acceptor.take() {
                a.abort();
            }
            for c in s.connections.drain(..) {
                c.abort();
            }
        }
    }
}

/// A tansu process of the test's own, reached only through a [`Proxy`].
#[derive(Debug)]
pub struct ProxiedTansu {
    _tansu: OwnTansu,
    /// The proxy in front of it.
    pub proxy: Proxy,
}

impl ProxiedTansu {
    /// Starts tansu (installed by `scripts/broker.sh`) on a free port behind a new proxy.
    pub async fn start() -> Self {
        let port = free_port();
        let upstream: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let proxy = Proxy::start(upstream).await;
        let tansu =
            tokio::task::block_in_place(|| OwnTansu::start_on(port, &proxy.addr().to_string()));
        Self {
            _tansu: tansu,
            proxy,
        }
    }

    /// The bootstrap address (the proxy's).
    pub fn bootstrap(&self) -> String {
        self.proxy.addr().to_string()
    }
}
