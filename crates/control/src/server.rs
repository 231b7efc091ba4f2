//! Starting and stopping a control plane: open the store, load the KEK, build the platform's
//! Azure client, bootstrap on first start, bind the listener (plain HTTP or TLS), start the
//! background revalidation.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bootstrap::BootstrapInfo;
use crate::config::Config;
use crate::kek::Kek;
use crate::state::{AppState, Platform};

/// A running control plane.
pub struct ControlPlane {
    addr: SocketAddr,
    url: String,
    state: AppState,
    bootstrap: Option<BootstrapInfo>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The data directory's lock on the embedded store, released when the control plane stops.
    _lock: Option<crate::datadir::DirLock>,
}

impl ControlPlane {
    /// Starts a control plane from `config` and returns once it accepts requests.
    pub async fn start(config: Config) -> anyhow::Result<ControlPlane> {
        let tls = match &config.tls {
            Some(t) => Some(load_tls(&t.cert_path, &t.key_path)?),
            None => None,
        };
        // On the embedded store the data directory belongs to this process alone (issue 10 §4);
        // replicas share a PostgreSQL store, each with a data directory of its own or not.
        let lock = if config.store_url().starts_with("sqlite://") {
            crate::datadir::create_private_dir(&config.data_dir)?;
            Some(crate::datadir::DirLock::acquire(&config.data_dir, "control plane")?)
        } else {
            None
        };
        let state = open_state(config).await?;
        // A shortened revalidate_interval_secs applies at once: no project waits for a date set
        // under the old, longer interval (issue 10 §6).
        let latest = state.now() + state.config.revalidate_interval();
        let moved = state
            .store
            .cap_next_validations(latest)
            .await
            .map_err(|e| anyhow::anyhow!("rescheduling revalidations to the configured interval: {e}"))?;
        if moved > 0 {
            tracing::info!(
                moved,
                interval_secs = state.config.revalidate_interval().as_secs(),
                "revalidations rescheduled to the configured interval"
            );
        }
        let bootstrap = if state.config.bootstrap { crate::bootstrap::ensure(&state).await? } else { None };

        let listener =
            TcpListener::bind(state.config.listen).await.with_context(|| format!("binding {}", state.config.listen))?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let (shutdown, rx) = watch::channel(false);
        let app = crate::api::router(state.clone());
        let mut tasks = vec![tokio::spawn(serve(listener, app, tls, rx.clone()))];
        tasks.push(tokio::spawn(crate::jobs::run(state.clone(), rx)));
        tracing::info!(%url, replica = %state.replica_id, "control plane listening");
        Ok(ControlPlane { addr, url, state, bootstrap, shutdown, tasks, _lock: lock })
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// What the first start created (organization, owner API key, service account), if this
    /// start created it. Later starts return `None`: secrets are shown once.
    pub fn bootstrap(&self) -> Option<&BootstrapInfo> {
        self.bootstrap.as_ref()
    }

    /// Stops accepting, stops the background jobs, closes the store.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.state.store.close().await;
    }
}

/// Opens everything a control plane needs (data directory, store, KEK, platform client)
/// without serving: for `atrest admin` and for starting.
pub async fn open_state(config: Config) -> anyhow::Result<AppState> {
    crate::datadir::create_private_dir(&config.data_dir)?;
    let store =
        atrest_store::Store::open(&config.store_url()).await.map_err(|e| anyhow::anyhow!("opening the store: {e}"))?;
    let kek_env = std::env::var("ATREST_KEK").ok();
    let kek = Kek::load(kek_env.as_deref(), &config.data_dir.join("kek.key"))?;
    // Every replica on a store must hold the same KEK (issue 10 §4): check it before serving.
    kek.check_canary(&store, time::OffsetDateTime::now_utc()).await?;
    tracing::debug!(kek = kek.fingerprint(), source = kek.source(), "key-encryption key matches the store's");
    let platform = Platform::from_config(&config)?;
    Ok(AppState::new(config, store, kek, platform))
}

fn load_tls(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("reading tls.cert_path {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("reading tls.key_path {}", key.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{} is not a PEM private key", key.display()))?
        .with_context(|| format!("no private key in {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(tls) = tls else {
        let mut rx = shutdown.clone();
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else { return };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
