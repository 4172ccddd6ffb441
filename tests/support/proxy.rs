//! A loopback TCP proxy that can be taken down (connections reset, new ones refused) and
//! brought back on the same port: how the tests lose the broker or the database mid-stream.
//! It can also freeze: every connection stays open but no byte moves, as when a network path
//! or a server stops answering without closing anything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

pub struct Proxy {
    runtime: Runtime,
    pub port: u16,
    upstream: SocketAddr,
    serving: Arc<Mutex<Option<JoinHandle<()>>>>,
    accepted: Arc<AtomicUsize>,
    /// true: frozen.
    frozen: watch::Sender<bool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let port = runtime.block_on(async {
            TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let proxy = Self {
            runtime,
            port,
            upstream,
            serving: Arc::new(Mutex::new(None)),
            accepted: Arc::new(AtomicUsize::new(0)),
            frozen: watch::channel(false).0,
        };
        proxy.up();
        proxy
    }

    /// Accept connections again (on the same port).
    pub fn up(&self) {
        let (port, upstream) = (self.port, self.upstream);
        let serving = Arc::clone(&self.serving);
        let accepted = Arc::clone(&self.accepted);
        let frozen = self.frozen.clone();
        self.runtime.block_on(async move {
            let listener = loop {
                match TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                }
            };
            let task = tokio::spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        break;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let frozen = frozen.subscribe();
                    connections.spawn(async move {
                        // Accepted while frozen: held open, not forwarded until thawed.
                        flowing(&frozen).await;
                        if let Ok(server) = TcpStream::connect(upstream).await {
                            let (from_client, to_client) = client.into_split();
                            let (from_server, to_server) = server.into_split();
                            tokio::join!(
                                pump(from_client, to_server, frozen.clone()),
                                pump(from_server, to_client, frozen),
                            );
                        }
                    });
                }
            });
            *serving.lock().await = Some(task);
        });
    }

    /// Connections accepted so far: more after an outage than before means a client reconnected.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Reset every open connection and refuse new ones.
    pub fn down(&self) {
        let serving = Arc::clone(&self.serving);
        self.runtime.block_on(async move {
            if let Some(task) = serving.lock().await.take() {
                // Aborting the accept loop drops the listener and the JoinSet, which aborts
                // every connection task and closes both of its sockets.
                task.abort();
                let _ = task.await;
            }
        });
    }

    /// Stop every byte: open connections stay open (neither side hears anything, not even a
    /// close), new ones are accepted and left waiting.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Let bytes flow again, starting with those held while frozen.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

/// Until the proxy is not frozen.
async fn flowing(frozen: &watch::Receiver<bool>) {
    let mut frozen = frozen.clone();
    let _ = frozen.wait_for(|f| !*f).await;
}

/// Copy one direction of a connection, holding everything (data and end of stream) while frozen.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        flowing(&frozen).await;
        let n = from.read(&mut buf).await.unwrap_or(0);
        // Read just before a freeze: held until the thaw like the rest.
        flowing(&frozen).await;
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
