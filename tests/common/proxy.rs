//! A loopback TCP proxy that can be taken down (connections reset, new ones refused) and
//! brought back on the same port: how the tests lose the broker or the database mid-stream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub struct Proxy {
    runtime: Runtime,
    pub port: u16,
    upstream: SocketAddr,
    serving: Arc<Mutex<Option<JoinHandle<()>>>>,
    accepted: Arc<AtomicUsize>,
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
        };
        proxy.up();
        proxy
    }

    /// Accept connections again (on the same port).
    pub fn up(&self) {
        let (port, upstream) = (self.port, self.upstream);
        let serving = Arc::clone(&self.serving);
        let accepted = Arc::clone(&self.accepted);
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
                    let Ok((mut client, _)) = listener.accept().await else {
                        break;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
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
}
