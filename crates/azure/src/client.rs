//! [`AzureClient`]: the transport, one app credential and the token cache, put together.
//!
//! Most callers need exactly this: build it once from configuration, then ask it for a
//! [`KeyVaultClient`] or an [`ArmClient`] in the customer's tenant. Several `AzureClient`s (one
//! per credential, e.g. per legacy static secret) can share one [`TokenCache`] and its counters.

use std::sync::Arc;

use atrest_domain::{AzureEnvironment, AzureUuid};

use crate::arm::ArmClient;
use crate::credential::ClientCredential;
use crate::error::Error;
use crate::keyvault::KeyVaultClient;
use crate::retry::RetryPolicy;
use crate::token::TokenProvider;
use crate::token_cache::{TokenCache, TokenCacheStats};
use crate::transport::{Transport, TransportConfig};

/// Transport and retry settings.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// Timeouts and the endpoint override.
    pub transport: TransportConfig,
    /// Retries for every call (tokens, Key Vault, ARM).
    pub retry: RetryPolicy,
}

/// The platform's Azure client for one app credential. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AzureClient {
    tokens: TokenProvider,
    retry: RetryPolicy,
}

impl AzureClient {
    /// A client with its own transport and token cache.
    pub fn new(config: &ClientConfig, credential: ClientCredential) -> Result<Self, Error> {
        let transport = Transport::new(&config.transport)?;
        Ok(Self::with_parts(transport, credential, Arc::new(TokenCache::new()), config.retry.clone()))
    }

    /// A client on an existing transport (connection pool) and token cache.
    pub fn with_parts(
        transport: Transport,
        credential: ClientCredential,
        cache: Arc<TokenCache>,
        retry: RetryPolicy,
    ) -> Self {
        Self { tokens: TokenProvider::new(transport, credential, cache, retry.clone()), retry }
    }

    /// The token provider (for callers that hand tokens on, like the node API).
    pub fn tokens(&self) -> &TokenProvider {
        &self.tokens
    }

    /// The shared transport (connection pool).
    pub fn transport(&self) -> &Transport {
        self.tokens.transport()
    }

    /// Token-cache counters (requests sent, hits, misses, failed refreshes).
    pub fn token_stats(&self) -> TokenCacheStats {
        self.tokens.cache().stats()
    }

    /// A Key Vault client for vaults of `tenant`.
    pub fn key_vault(&self, tenant: AzureUuid) -> KeyVaultClient {
        KeyVaultClient::new(self.tokens.clone(), tenant, self.retry.clone())
    }

    /// An ARM client for `environment` in `tenant`.
    pub fn arm(&self, environment: AzureEnvironment, tenant: AzureUuid) -> ArmClient {
        ArmClient::new(self.tokens.clone(), environment, tenant, self.retry.clone())
    }
}
