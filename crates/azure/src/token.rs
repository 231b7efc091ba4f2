//! Getting tokens from Entra ID's v2.0 token endpoint as the platform app, in any tenant.
//!
//! `POST https://{login host}/{tenant}/oauth2/v2.0/token` with the client-credentials grant
//! (`shared/reference/azure-protocols.md` §1.1). The tenant is the one that owns the resource —
//! for Key Vault the customer's — and the platform app must have a service principal there
//! (otherwise Entra answers AADSTS700016). Tokens go through the shared [`TokenCache`].

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use secrecy::SecretString;
use serde::Deserialize;
use tokio::time::Instant;
use zeroize::Zeroizing;

use atrest_domain::{AzureEnvironment, AzureUuid};

use crate::credential::ClientCredential;
use crate::entra_error::{self, RequestContext};
use crate::error::{Error, ErrorKind, Service};
use crate::retry::{self, RetryPolicy};
use crate::token_cache::{AccessToken, CacheKey, TokenCache};
use crate::transport::Transport;

/// Obtains tokens for one app credential. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TokenProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: Transport,
    source: Source,
    cache: Arc<TokenCache>,
    retry: RetryPolicy,
}

/// Where tokens come from.
#[derive(Debug)]
enum Source {
    /// This process holds the app credential and asks Entra.
    Entra(ClientCredential),
    /// This process holds no credential and asks someone who does (a data node asks its
    /// control plane). The cache, single flight and refresh-on-401 work the same.
    External { client_id: AzureUuid, source: Arc<dyn TokenSource> },
}

/// A source of access tokens for a process that holds no Azure credential of its own: a data
/// node gets its Key Vault tokens from the control plane, which never hands the platform
/// credential out. Errors keep Azure's kinds, so a denial relayed by the control plane stops a
/// node and an outage does not.
pub trait TokenSource: Send + Sync + std::fmt::Debug {
    /// A token for `scope` in `tenant`, fetched now (the caller caches it).
    fn fetch<'a>(
        &'a self,
        environment: AzureEnvironment,
        tenant: &'a AzureUuid,
        scope: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<AccessToken, Error>>;

    /// The service refused `token` (401) although it is not expired by our clock: the next
    /// [`TokenSource::fetch`] should tell the source, so that it drops its own cached copy
    /// instead of handing the same token back. Called before that fetch.
    fn refused(&self, _token: &AccessToken) {}
}

/// The success body. `expires_in` is a number in Entra's answers, but some proxies and older
/// endpoints send it as a string, so both are accepted.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Zeroizing<String>,
    expires_in: NumberOrString,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u64),
    String(String),
}

impl TokenProvider {
    /// A provider for `credential`, caching in `cache` (share one cache per process).
    pub fn new(transport: Transport, credential: ClientCredential, cache: Arc<TokenCache>, retry: RetryPolicy) -> Self {
        Self { inner: Arc::new(Inner { transport, source: Source::Entra(credential), cache, retry }) }
    }

    /// A provider whose tokens come from `source` (no credential in this process), reported as
    /// belonging to the app `client_id`. `transport` is still the one Key Vault is called with.
    pub fn external(
        transport: Transport,
        client_id: AzureUuid,
        source: Arc<dyn TokenSource>,
        cache: Arc<TokenCache>,
        retry: RetryPolicy,
    ) -> Self {
        Self { inner: Arc::new(Inner { transport, source: Source::External { client_id, source }, cache, retry }) }
    }

    /// The application (client) id.
    pub fn client_id(&self) -> &AzureUuid {
        match &self.inner.source {
            Source::Entra(c) => c.client_id(),
            Source::External { client_id, .. } => client_id,
        }
    }

    /// The cache it shares.
    pub fn cache(&self) -> &Arc<TokenCache> {
        &self.inner.cache
    }

    /// The transport it uses.
    pub fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// The cache key of a token for `scope` in `tenant`.
    pub fn cache_key(&self, environment: AzureEnvironment, tenant: &AzureUuid, scope: &str) -> CacheKey {
        CacheKey {
            authority: environment.login_host().to_string(),
            tenant: *tenant,
            client_id: *self.client_id(),
            scope: scope.to_string(),
        }
    }

    /// A token for Key Vault in `environment`, issued in `tenant` (the vault's tenant).
    pub async fn key_vault_token(
        &self,
        environment: AzureEnvironment,
        tenant: &AzureUuid,
    ) -> Result<AccessToken, Error> {
        self.token(environment, tenant, &format!("{}/.default", environment.vault_resource())).await
    }

    /// Drops the cached Key Vault token for `tenant` if its SHA-256 is `refused_sha256`: a
    /// holder of a copy (a data node) was refused it by Key Vault (401), so handing it out again
    /// would only be refused again. See [`TokenCache::invalidate_if_sha256`].
    pub fn drop_refused_key_vault_token(
        &self,
        environment: AzureEnvironment,
        tenant: &AzureUuid,
        refused_sha256: &[u8],
    ) -> bool {
        let key = self.cache_key(environment, tenant, &format!("{}/.default", environment.vault_resource()));
        self.inner.cache.invalidate_if_sha256(&key, refused_sha256)
    }

    /// A token for Azure Resource Manager in `environment`, issued in `tenant`.
    pub async fn arm_token(&self, environment: AzureEnvironment, tenant: &AzureUuid) -> Result<AccessToken, Error> {
        self.token(environment, tenant, &format!("{}/.default", environment.arm_resource())).await
    }

    /// A token for `scope` (`{resource}/.default`) in `tenant`: cached, single-flight,
    /// refreshed ahead of expiry.
    pub async fn token(
        &self,
        environment: AzureEnvironment,
        tenant: &AzureUuid,
        scope: &str,
    ) -> Result<AccessToken, Error> {
        let key = self.cache_key(environment, tenant, scope);
        let inner = self.inner.clone();
        let tenant = *tenant;
        let scope_owned = scope.to_string();
        self.inner
            .cache
            .get_or_fetch(&key, move || async move { inner.fetch(environment, &tenant, &scope_owned).await }.boxed())
            .await
    }

    /// Runs `call` with `token`; if the service answers 401 (it refused the token itself:
    /// expired by Azure's clock although ours still counts it valid, or revoked), drops that token
    /// from the cache (only if it is still the cached one, see [`TokenCache::invalidate_if`]) and
    /// runs `call` once more with a fresh token for `scope`, so a skewed clock never reads as a
    /// denial. Once only: a fresh token refused again (wrong tenant or audience) stays cached, so
    /// a service that always answers 401 cannot make us refetch forever. If Entra fails on the
    /// refetch, that error is returned: an outage is not a denial.
    pub(crate) async fn with_refresh_on_401<T, F, Fut>(
        &self,
        environment: AzureEnvironment,
        tenant: &AzureUuid,
        scope: &str,
        token: &AccessToken,
        call: F,
    ) -> Result<T, Error>
    where
        F: Fn(AccessToken) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let result = call(token.clone()).await;
        if !matches!(&result, Err(e) if e.status() == Some(401)) {
            return result;
        }
        self.inner.cache.invalidate_if(&self.cache_key(environment, tenant, scope), token);
        if let Source::External { source, .. } = &self.inner.source {
            source.refused(token);
        }
        match self.token(environment, tenant, scope).await {
            Ok(fresh) if fresh.expose_secret() != token.expose_secret() => call(fresh).await,
            Ok(_) => result,
            Err(token_error) => Err(token_error),
        }
    }
}

impl Inner {
    async fn fetch(
        &self,
        environment: AzureEnvironment,
        tenant: &AzureUuid,
        scope: &str,
    ) -> Result<AccessToken, Error> {
        let credential = match &self.source {
            Source::Entra(c) => c,
            Source::External { source, .. } => {
                self.cache.count_request();
                return source.fetch(environment, tenant, scope).await;
            }
        };
        let tenant_str = tenant.to_string();
        let token_url = format!("https://{}/{tenant_str}/oauth2/v2.0/token", environment.login_host());
        tracing::debug!(tenant = %tenant, client_id = %credential.client_id(), scope, "requesting an Entra token");
        let result = self
            .retry
            .run(|time_left| {
                let token_url = &token_url;
                let tenant_str = &tenant_str;
                async move {
                    // Built per attempt: a fresh assertion (new jti, current nbf), and the
                    // federated token file as it is now.
                    let form = credential.token_form(token_url, scope).await?;
                    let fields: Vec<(&str, &str)> = form.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    self.cache.count_request();
                    let sent_at = Instant::now();
                    let resp = self
                        .transport
                        .http()
                        .post(token_url)
                        .form(&fields)
                        .timeout(time_left.min(self.transport.request_timeout()))
                        .send()
                        .await
                        .map_err(|e| crate::error::from_transport(Service::Entra, &e))?;
                    let status = resp.status().as_u16();
                    let retry_after = retry::retry_after(resp.headers(), std::time::SystemTime::now());
                    let body = Zeroizing::new(
                        resp.bytes().await.map_err(|e| crate::error::from_transport(Service::Entra, &e))?.to_vec(),
                    );
                    if (200..300).contains(&status) {
                        return parse_success(&body, sent_at);
                    }
                    let ctx = RequestContext {
                        environment,
                        tenant: tenant_str,
                        client_id: credential.client_id(),
                        scope,
                        federated: form.federated_issuer_subject.as_ref(),
                    };
                    Err(entra_error::error_from_response(status, &body, &ctx).with_retry_after(retry_after))
                }
            })
            .await;
        if let Err(e) = &result {
            // The error carries codes and messages only; nothing secret.
            tracing::info!(tenant = %tenant, client_id = %credential.client_id(), scope, error = %e, "Entra refused a token");
        }
        result
    }
}

fn parse_success(body: &[u8], sent_at: Instant) -> Result<AccessToken, Error> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::Unreachable,
            Service::Entra,
            format!("the token endpoint's success answer is unusable: {why}"),
        )
        .with_status(200)
    };
    let parsed: TokenResponse = serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
    let lifetime = match &parsed.expires_in {
        NumberOrString::Number(n) => *n,
        NumberOrString::String(s) => s.trim().parse().map_err(|_| bad("expires_in is not a number"))?,
    };
    if parsed.access_token.is_empty() || lifetime == 0 {
        return Err(bad("empty access_token or zero expires_in"));
    }
    Ok(AccessToken::new(SecretString::from(parsed.access_token.as_str()), sent_at, Duration::from_secs(lifetime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_body_accepts_number_or_string_lifetimes() {
        let now = Instant::now();
        let t = parse_success(
            br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"a.b.c"}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.expose_secret(), "a.b.c");
        assert_eq!(t.expires_at() - now, Duration::from_secs(3599));
        let t = parse_success(br#"{"expires_in":"60","access_token":"x"}"#, now).unwrap();
        assert_eq!(t.expires_at() - now, Duration::from_secs(60));
        assert!(parse_success(br#"{"expires_in":0,"access_token":"x"}"#, now).is_err());
        assert!(parse_success(br#"{"expires_in":"soon","access_token":"x"}"#, now).is_err());
        assert!(parse_success(b"<html>", now).is_err());
    }
}
