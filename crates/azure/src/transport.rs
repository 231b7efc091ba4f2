//! The HTTP transport: one pooled reqwest client (rustls, HTTP/2 when the server offers it).
//!
//! This is the only place where talking to the emulator differs from talking to Azure
//! (design.md §2, "identical code paths"). With an [`EndpointOverride`], every Azure host name
//! (`login.microsoftonline.com`, `management.azure.com`, `<vault>.vault.azure.net`, and their
//! sovereign-cloud equivalents) resolves to one socket address, and the override's CA is the one
//! trusted. URLs, Host headers, SNI and key identifiers stay exactly as in Azure. Hyper keeps the
//! resolver's port when the URL has none, so `https://myvault.vault.azure.net/...` reaches
//! `127.0.0.1:PORT`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use atrest_domain::AzureEnvironment;

use crate::error::Error;

/// Where Azure host names resolve instead of DNS, and which CA to trust there.
#[derive(Clone)]
pub struct EndpointOverride {
    /// Every Azure host name resolves to this address.
    pub addr: SocketAddr,
    /// PEM of the CA that signed the server certificate at `addr` (the emulator's `ca.pem`).
    pub extra_ca_pem: String,
}

impl std::fmt::Debug for EndpointOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A CA certificate is public, but a page of base64 in a log line helps nobody.
        f.debug_struct("EndpointOverride").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// Timeouts and the optional endpoint override.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// One HTTP attempt, from sending to the end of the body. The retry policy's total budget
    /// bounds the sum of attempts.
    pub request_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Send Azure host names somewhere else (the emulator).
    pub endpoint_override: Option<EndpointOverride>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(90),
            endpoint_override: None,
        }
    }
}

impl TransportConfig {
    /// Defaults, with every Azure host name sent to `addr` and `ca_pem` trusted.
    pub fn with_override(addr: SocketAddr, ca_pem: impl Into<String>) -> Self {
        Self { endpoint_override: Some(EndpointOverride { addr, extra_ca_pem: ca_pem.into() }), ..Self::default() }
    }
}

/// A shared, pooled HTTP client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Transport {
    http: reqwest::Client,
    request_timeout: Duration,
}

/// Resolves Azure host names to the override address and everything else through the
/// system resolver.
struct OverrideResolver(SocketAddr);

impl reqwest::dns::Resolve for OverrideResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let target = self.0;
        let host = name.as_str().to_string();
        Box::pin(async move {
            if AzureEnvironment::classify_host(&host).is_some() {
                return Ok(Box::new(std::iter::once(target)) as reqwest::dns::Addrs);
            }
            // Not an Azure name: resolve it normally (port 0 is replaced by the URL's port).
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl Transport {
    /// Build the pooled client; fails only on a bad override CA.
    pub fn new(config: &TransportConfig) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(config.pool_idle_timeout)
            .https_only(true)
            .user_agent(concat!("atrest-azure/", env!("CARGO_PKG_VERSION")))
            // Azure answers 3xx only for things this client never asks for; following a
            // redirect would re-send the bearer token to a host we did not choose.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(o) = &config.endpoint_override {
            let ca = reqwest::Certificate::from_pem(o.extra_ca_pem.as_bytes())
                .map_err(|e| Error::local(format!("the endpoint override's CA is not a PEM certificate: {e}")))?;
            // Every Azure name goes to one address, so only that server's CA can be right:
            // trusting the public roots as well would add nothing but attack surface.
            builder = builder.tls_certs_only([ca]).dns_resolver(Arc::new(OverrideResolver(o.addr)));
        }
        let http = builder.build().map_err(|e| Error::local(format!("could not build the HTTP client: {e}")))?;
        Ok(Self { http, request_timeout: config.request_timeout })
    }

    /// The underlying client, for callers that need a request this crate does not model
    /// (tests set up the emulator through it). It has the same resolution and trust.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The per-attempt timeout.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
}
