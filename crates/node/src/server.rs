//! A node with its HTTP API on a listener: what `atrest node` runs and what the tests start on
//! `127.0.0.1:0`. [`EmbeddedNode`] serves the embedded engine's document API; [`MariaDbNode`]
//! supervises a mariadbd (its clients connect to MariaDB) and serves the node's status.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::engine::Engine;
use crate::engine::mariadb::{MariaDbEngine, MariaDbOptions};
use crate::engine::sqlcipher::{Durability, Encryption, SqlCipherEngine};
use crate::runtime::{self, NodeError, NodeHandle, NodeOptions};

/// What both kinds of node are: a lifecycle and an HTTP listener.
struct Served {
    handle: NodeHandle,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Binds `listen` (an empty `options.data_url` becomes `http://<bound address>`), starts the
    /// lifecycle with `engine`, and serves what `app` makes of the node's gate.
    async fn start(
        mut options: NodeOptions,
        listen: SocketAddr,
        engine: Arc<dyn Engine>,
        app: impl FnOnce(&NodeHandle) -> axum::Router,
    ) -> Result<Served, NodeError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| NodeError::Setup(format!("cannot listen on {listen}: {e}; pick another --listen address")))?;
        let addr = listener.local_addr().map_err(|e| NodeError::Setup(e.to_string()))?;
        if options.data_url.is_empty() {
            options.data_url = format!("http://{addr}");
        }
        let handle = runtime::start(options, engine).await?;
        let app = app(&handle);
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the node's HTTP API stopped");
            }
        });
        Ok(Served { handle, addr, server })
    }

    async fn shutdown(self) {
        self.server.abort();
        let _ = self.server.await;
        self.handle.shutdown().await;
    }
}

/// A node serving its data API.
pub struct EmbeddedNode(Served);

impl std::fmt::Debug for EmbeddedNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedNode").field("addr", &self.0.addr).finish_non_exhaustive()
    }
}

impl EmbeddedNode {
    /// Binds `listen`, then joins or loads the node in `options.data_dir` and serves. An empty
    /// `options.data_url` becomes `http://<bound address>`.
    pub async fn start(options: NodeOptions, listen: SocketAddr) -> Result<Self, NodeError> {
        let engine = Arc::new(SqlCipherEngine::new(&options.data_dir, Encryption::Encrypted, Durability::Normal));
        let dyn_engine: Arc<dyn Engine> = engine.clone();
        let served = Served::start(options, listen, dyn_engine, |h| crate::data_api::router(h.gate(), engine)).await?;
        Ok(Self(served))
    }

    /// Where the data API listens.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// The data API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.0.addr)
    }

    /// The lifecycle handle (status, identity).
    pub fn handle(&self) -> &NodeHandle {
        &self.0.handle
    }

    /// Waits until the node stops for good (revoked).
    pub async fn stopped(&mut self) -> NodeError {
        self.0.handle.stopped().await
    }

    /// Stops serving, closes the engine and drops the keys.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

/// A node whose engine is MariaDB: the lifecycle opens the engine (starts mariadbd) when the
/// node serves and closes it (stops mariadbd, then its keys) when it shuts down. The listener
/// serves `/healthz` and `/v1/status`.
pub struct MariaDbNode {
    served: Served,
    engine: Arc<MariaDbEngine>,
}

impl MariaDbNode {
    /// Like [`EmbeddedNode::start`]; `mariadb.dir` is replaced by the node's data dir.
    pub async fn start(
        options: NodeOptions,
        listen: SocketAddr,
        mut mariadb: MariaDbOptions,
    ) -> Result<Self, NodeError> {
        for (what, path) in [("mariadbd", &mariadb.mariadbd), ("mariadb-install-db", &mariadb.install_db)] {
            if !path.is_file() {
                return Err(NodeError::Setup(format!(
                    "{what} is not at {}: install MariaDB with `sudo apt-get install mariadb-server mariadb-plugin-hashicorp-key-management`, or name it with --mariadbd",
                    path.display()
                )));
            }
        }
        mariadb.dir = options.data_dir.clone();
        let engine = Arc::new(MariaDbEngine::new(mariadb));
        let dyn_engine: Arc<dyn Engine> = engine.clone();
        let status_engine = dyn_engine.clone();
        let served =
            Served::start(options, listen, dyn_engine, |h| crate::data_api::status_router(h.gate(), status_engine))
                .await?;
        Ok(Self { served, engine })
    }

    /// The status API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.served.addr)
    }

    /// The lifecycle handle (status, identity).
    pub fn handle(&self) -> &NodeHandle {
        &self.served.handle
    }

    /// The engine (mariadbd's port, pid, socket).
    pub fn engine(&self) -> &Arc<MariaDbEngine> {
        &self.engine
    }

    /// Waits until the node stops for good (revoked).
    pub async fn stopped(&mut self) -> NodeError {
        self.served.handle.stopped().await
    }

    /// Stops serving, stops mariadbd and drops the keys.
    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}
