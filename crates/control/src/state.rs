//! [`AppState`]: what every handler and background job shares: configuration, the store, the
//! KEK, the platform's Azure client, metrics.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use atrest_azure::{
    AzureClient, CertificateCredential, ClientCredential, FederatedTokenFile, RetryPolicy, TokenCache, Transport,
    TransportConfig,
};
use atrest_domain::AzureUuid;
use atrest_store::{GroupId, Store};
use parking_lot::Mutex;
use secrecy::SecretString;
use time::OffsetDateTime;

use crate::config::Config;
use crate::error::{ApiError, codes};
use crate::kek::Kek;
use crate::metrics::Metrics;

/// Shared state. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

pub struct Inner {
    pub config: Config,
    pub store: Store,
    pub kek: Arc<Kek>,
    pub platform: Platform,
    pub metrics: Metrics,
    /// Unique per process: the lease holder name of this replica.
    pub replica_id: String,
    /// Per project, when this replica last asked the store for a read-triggered revalidation.
    /// Only an optimisation in front of the store's own once-per-interval claim, so that reads
    /// do not take the store's write path every time.
    pub read_revalidation: Mutex<HashMap<GroupId, Instant>>,
    /// Grows whenever this replica changes something a data node's config shows (EAR settings,
    /// a cluster, its data credentials, Try Again, a master-key rotation request), so the
    /// node config long-polls held by this replica wake at once.
    pub nodes_config: tokio::sync::watch::Sender<u64>,
    /// What this replica knows for the key rotation alert (crate::key_age).
    pub key_ages: crate::key_age::KeyAges,
    /// Projects this replica is revalidating because a node shut down or recovered.
    pub node_revalidations: Mutex<std::collections::HashSet<GroupId>>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    pub fn new(config: Config, store: Store, kek: Kek, platform: Platform) -> AppState {
        let replica_id = format!("replica-{}", uuid::Uuid::new_v4().simple());
        let metrics = Metrics::new(platform.cache.clone());
        let kek = Arc::new(kek);
        // The platform app's tokens are shared with the other replicas through the store. The
        // customers' own (legacy) credentials have caches of their own and are never shared.
        let tier = crate::shared_tokens::StoreTokens::new(store.clone(), kek.clone(), replica_id.clone());
        if !platform.cache.set_shared(Arc::new(tier)) {
            tracing::debug!("the platform token cache already shares tokens through a store");
        }
        AppState {
            inner: Arc::new(Inner {
                config,
                store,
                kek,
                platform,
                metrics,
                replica_id,
                read_revalidation: Mutex::new(HashMap::new()),
                nodes_config: tokio::sync::watch::Sender::new(0),
                key_ages: Default::default(),
                node_revalidations: Default::default(),
            }),
        }
    }

    /// Tells this replica's waiting node config polls that something they show may have changed.
    pub fn nodes_config_changed(&self) {
        self.nodes_config.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The current time. One place, so every part agrees.
    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The platform's side of Azure: one transport (connection pool), one token cache shared by
/// every credential, and the platform app's own client for the secretless mode.
#[derive(Clone)]
pub struct Platform {
    pub app_id: Option<AzureUuid>,
    client: Option<AzureClient>,
    pub transport: Transport,
    pub cache: Arc<TokenCache>,
    pub retry: RetryPolicy,
}

impl Platform {
    /// Builds the transport and the platform credential from configuration.
    pub fn from_config(config: &Config) -> anyhow::Result<Platform> {
        let mut transport_config = TransportConfig {
            request_timeout: std::time::Duration::from_secs(config.azure.request_timeout_secs),
            ..TransportConfig::default()
        };
        if let Some(addr) = config.azure.endpoint_override {
            let ca = match &config.azure.extra_ca_path {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading azure.extra_ca_path {}", p.display()))?,
                None => anyhow::bail!("azure.endpoint_override needs azure.extra_ca_path (the emulator's ca.pem)"),
            };
            transport_config = TransportConfig {
                request_timeout: transport_config.request_timeout,
                ..TransportConfig::with_override(addr, ca)
            };
        }
        let transport = Transport::new(&transport_config).context("building the Azure HTTP client")?;
        let cache = Arc::new(TokenCache::new());
        let retry = RetryPolicy {
            total: std::time::Duration::from_secs(config.azure.retry_budget_secs),
            ..RetryPolicy::default()
        };
        let p = &config.platform;
        let app_id = p
            .app_id
            .as_deref()
            .map(|s| s.parse::<AzureUuid>().with_context(|| format!("platform.app_id '{s}' is not a UUID")))
            .transpose()?;
        let credential = match (app_id, &p.certificate_path, &p.private_key_path, &p.federated_token_file) {
            (Some(id), Some(cert), Some(key), None) => {
                let cert_pem = std::fs::read_to_string(cert).with_context(|| format!("reading {}", cert.display()))?;
                let key_pem = SecretString::from(
                    std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?,
                );
                let c = CertificateCredential::from_pem(&cert_pem, &key_pem)
                    .map_err(|e| anyhow::anyhow!("platform certificate: {e}"))?;
                Some(ClientCredential::certificate(id, c))
            }
            (Some(id), None, None, Some(file)) => {
                Some(ClientCredential::federated_token_file(id, FederatedTokenFile::new(file.clone())))
            }
            _ => None,
        };
        let client = credential.map(|c| AzureClient::with_parts(transport.clone(), c, cache.clone(), retry.clone()));
        Ok(Platform { app_id, client, transport, cache, retry })
    }

    /// The platform app's client, for the secretless mode.
    pub fn secretless(&self) -> Result<&AzureClient, ApiError> {
        self.client.as_ref().ok_or_else(|| {
            ApiError::bad_request(
                codes::CANNOT_AUTHENTICATE_SERVICE_PRINCIPAL,
                "This deployment has no platform application configured, so the secretless mode is unavailable. \
                 The operator must set platform.app_id and a platform credential (certificate or federated token file).",
            )
        })
    }

    /// A client for a legacy static credential (the customer's own app and secret). It shares the
    /// transport but has a token cache of its own: the shared cache is keyed by (authority,
    /// tenant, client, scope), not by the secret, so a shared one would let a PATCH carrying any
    /// secret for a (tenant, client) that another project validated ride on that project's
    /// cached token, and a mistyped secret would pass. A fresh cache sends this secret to Entra.
    pub fn static_client(&self, client_id: AzureUuid, secret: SecretString) -> AzureClient {
        AzureClient::with_parts(
            self.transport.clone(),
            ClientCredential::client_secret(client_id, secret),
            Arc::new(TokenCache::new()),
            self.retry.clone(),
        )
    }
}
