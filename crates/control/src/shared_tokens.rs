//! The platform app's tokens shared between this control plane's replicas through the store, so
//! that N replicas cost one Entra request per tenant per token lifetime, not N
//! (`atrest_azure::token_shared` has the rules; this is the storage).
//!
//! Each token is sealed with the KEK, bound to its row (the AAD names the cache key's digest),
//! so the table holds no token in clear and a row copied under another key does not open. Who
//! asks Entra next for a key is a store lease named `token:<id>`, held by this replica's id.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use atrest_azure::{CacheKey, SharedError, SharedTokens, StoredToken};
use atrest_store::{SharedToken, Store};

use crate::kek::Kek;

/// The store as the token cache's shared tier.
pub struct StoreTokens {
    store: Store,
    kek: Arc<Kek>,
    replica_id: String,
}

impl StoreTokens {
    pub fn new(store: Store, kek: Arc<Kek>, replica_id: String) -> StoreTokens {
        StoreTokens { store, kek, replica_id }
    }
}

/// The row id of `key`: a digest of its four parts (the parts are not secret, but a fixed-length
/// id keeps the table and the lease names simple).
pub fn row_id(key: &CacheKey) -> String {
    let joined = format!("{}\0{}\0{}\0{}", key.authority, key.tenant, key.client_id, key.scope);
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, joined.as_bytes()))
}

fn purpose(id: &str) -> String {
    format!("shared-token:{id}")
}

fn lease(id: &str) -> String {
    format!("token:{id}")
}

impl SharedTokens for StoreTokens {
    fn load<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<StoredToken>, SharedError>> {
        async move {
            let id = row_id(key);
            let Some(row) = self.store.shared_token(&id).await? else { return Ok(None) };
            let opened = self.kek.open(&purpose(&id), &row.sealed)?;
            let secret = String::from_utf8(opened.expose_secret().to_vec())
                .map_err(|_| "a shared token is not UTF-8 after opening")?;
            Ok(Some(StoredToken {
                secret: SecretString::from(secret),
                obtained_at: SystemTime::from(row.obtained_at),
                expires_at: SystemTime::from(row.expires_at),
            }))
        }
        .boxed()
    }

    fn save<'a>(&'a self, key: &'a CacheKey, token: &'a StoredToken) -> BoxFuture<'a, Result<(), SharedError>> {
        async move {
            let id = row_id(key);
            let secret = token.secret.expose_secret().as_bytes();
            let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret);
            let row = SharedToken {
                sealed: self.kek.seal(&purpose(&id), secret),
                sha256: sha256.as_ref().try_into().expect("SHA-256 is 32 bytes"),
                obtained_at: OffsetDateTime::from(token.obtained_at),
                expires_at: OffsetDateTime::from(token.expires_at),
                id,
            };
            self.store.put_shared_token(&row, OffsetDateTime::now_utc()).await?;
            Ok(())
        }
        .boxed()
    }

    fn forget<'a>(&'a self, key: &'a CacheKey, sha256: &'a [u8; 32]) -> BoxFuture<'a, Result<(), SharedError>> {
        async move {
            if self.store.delete_shared_token_if(&row_id(key), sha256).await? {
                tracing::info!(tenant = %key.tenant, scope = %key.scope, "deleted a refused token from the shared tier");
            }
            Ok(())
        }
        .boxed()
    }

    fn try_claim<'a>(&'a self, key: &'a CacheKey, ttl: Duration) -> BoxFuture<'a, Result<bool, SharedError>> {
        async move {
            let name = lease(&row_id(key));
            Ok(self.store.try_acquire_lease(&name, &self.replica_id, ttl, OffsetDateTime::now_utc()).await?)
        }
        .boxed()
    }

    fn release<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), SharedError>> {
        async move {
            self.store.release_lease(&lease(&row_id(key)), &self.replica_id).await?;
            Ok(())
        }
        .boxed()
    }
}
