//! Who can call the API: programmatic API keys (HTTP Digest), service accounts (OAuth 2 client
//! credentials) with their access tokens, and the role bindings both kinds share.
//!
//! Both kinds are rows of one `principals` table (the key's id, or the service account's client
//! id), so role bindings are stored and read by one code path. A project role can only be bound
//! on a project of the principal's own organization: the schema's composite foreign keys make a
//! cross-organization binding impossible, not merely unchecked.

use std::collections::{BTreeSet, HashMap};

use time::OffsetDateTime;

use crate::codec::{Cols, to_millis};
use crate::error::{Meaning, Result, StoreError, corrupt};
use crate::ids::{ApiKeyId, ClientId, GroupId, OrgId};
use crate::model::{AccessToken, ApiKey, GroupRole, OrgRole, Principal, Roles, ServiceAccount};
use crate::{BeginWrite, Store, with_backend};

const KIND_API_KEY: &str = "API_KEY";
const KIND_SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";

const GROUP_IN_ORG: &str = "group in the principal's organization";

/// Inserts all of `$roles` for a principal inside transaction `$tx`.
macro_rules! insert_roles {
    ($tx:expr, $principal:expr, $org:expr, $roles:expr) => {{
        for role in &$roles.org {
            sqlx::query("INSERT INTO principal_org_roles (principal_id, role) VALUES ($1, $2)")
                .bind($principal)
                .bind(role.as_str())
                .execute(&mut *$tx)
                .await?;
        }
        for (group, set) in &$roles.groups {
            for role in set {
                sqlx::query(
                    "INSERT INTO principal_group_roles (principal_id, org_id, group_id, role) VALUES ($1, $2, $3, $4)",
                )
                .bind($principal)
                .bind($org)
                .bind(group.as_str())
                .bind(role.as_str())
                .execute(&mut *$tx)
                .await
                .map_err(|e| Meaning::missing(GROUP_IN_ORG).classify(e))?;
            }
        }
    }};
}

/// Role rows grouped by principal id.
fn collect_roles<O: Cols, G: Cols>(org_rows: &[O], group_rows: &[G]) -> Result<HashMap<String, Roles>> {
    let mut by_principal: HashMap<String, Roles> = HashMap::new();
    for row in org_rows {
        let role = OrgRole::parse(&row.text("role")?).map_err(corrupt)?;
        by_principal.entry(row.text("principal_id")?).or_default().org.insert(role);
    }
    for row in group_rows {
        let role = GroupRole::parse(&row.text("role")?).map_err(corrupt)?;
        let group = GroupId::parse(&row.text("group_id")?).map_err(corrupt)?;
        by_principal.entry(row.text("principal_id")?).or_default().groups.entry(group).or_default().insert(role);
    }
    Ok(by_principal)
}

/// Decodes an API key row; roles are filled in by the caller.
fn api_key_from<R: Cols>(row: &R) -> Result<ApiKey> {
    Ok(ApiKey {
        roles: Roles::default(),
        id: ApiKeyId::parse(&row.text("id")?).map_err(corrupt)?,
        org_id: OrgId::parse(&row.text("org_id")?).map_err(corrupt)?,
        public_key: row.text("public_key")?,
        digest_ha1_ciphertext: row.bytes("digest_ha1_ciphertext")?,
        description: row.text("description")?,
        created_at: row.instant("created_at")?,
    })
}

/// Decodes a service account row; roles are filled in by the caller.
fn service_account_from<R: Cols>(row: &R) -> Result<ServiceAccount> {
    Ok(ServiceAccount {
        roles: Roles::default(),
        client_id: ClientId::parse(&row.text("client_id")?).map_err(corrupt)?,
        org_id: OrgId::parse(&row.text("org_id")?).map_err(corrupt)?,
        name: row.text("name")?,
        secret_sha256: row.digest("secret_sha256")?,
        created_at: row.instant("created_at")?,
    })
}

fn access_token_from<R: Cols>(row: &R) -> Result<AccessToken> {
    Ok(AccessToken {
        token_sha256: row.digest("token_sha256")?,
        client_id: ClientId::parse(&row.text("client_id")?).map_err(corrupt)?,
        issued_at: row.instant("issued_at")?,
        expires_at: row.instant("expires_at")?,
        revoked_at: row.opt_instant("revoked_at")?,
    })
}

/// `SELECT <every column> FROM api_keys` joined with the owning principal, for `concat!`.
macro_rules! select_api_keys {
    () => {
        "SELECT k.id, p.org_id, k.public_key, k.digest_ha1_ciphertext, k.description, k.created_at \
         FROM api_keys k JOIN principals p ON p.id = k.id"
    };
}

/// How a role query selects its principals: one by id, or all of an organization.
enum RoleScope<'a> {
    Principal(&'a str),
    Org(&'a OrgId),
}

impl Store {
    /// The role bindings of one principal (empty if it has none).
    async fn roles_of(&self, principal_id: &str) -> Result<Roles> {
        Ok(self.roles_in(RoleScope::Principal(principal_id)).await?.remove(principal_id).unwrap_or_default())
    }

    /// Role bindings of the principals in `scope`, keyed by principal id.
    async fn roles_in(&self, scope: RoleScope<'_>) -> Result<HashMap<String, Roles>> {
        let (org_sql, group_sql, param) = match scope {
            RoleScope::Principal(id) => (
                "SELECT principal_id, role FROM principal_org_roles WHERE principal_id = $1",
                "SELECT principal_id, group_id, role FROM principal_group_roles WHERE principal_id = $1",
                id,
            ),
            RoleScope::Org(org) => (
                "SELECT principal_id, role FROM principal_org_roles \
                 WHERE principal_id IN (SELECT id FROM principals WHERE org_id = $1)",
                "SELECT principal_id, group_id, role FROM principal_group_roles WHERE org_id = $1",
                org.as_str(),
            ),
        };
        with_backend!(self, |pool| {
            let org_rows = sqlx::query(org_sql).bind(param).fetch_all(pool).await?;
            let group_rows = sqlx::query(group_sql).bind(param).fetch_all(pool).await?;
            collect_roles(&org_rows, &group_rows)
        })
    }

    /// Creates an API key with its role bindings, atomically. `Conflict` if the public key is
    /// taken; `NotFound` if the organization, or a project named in `roles.groups` within that
    /// organization, does not exist.
    pub async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        with_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO principals (id, org_id, kind) VALUES ($1, $2, $3)")
                .bind(key.id.as_str())
                .bind(key.org_id.as_str())
                .bind(KIND_API_KEY)
                .execute(&mut *tx)
                .await
                .map_err(|e| Meaning::conflict("API key id").and_missing("organization").classify(e))?;
            sqlx::query(
                "INSERT INTO api_keys (id, public_key, digest_ha1_ciphertext, description, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(key.id.as_str())
            .bind(&key.public_key)
            .bind(&key.digest_ha1_ciphertext)
            .bind(&key.description)
            .bind(to_millis(key.created_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| Meaning::conflict("API key public key").classify(e))?;
            insert_roles!(tx, key.id.as_str(), key.org_id.as_str(), key.roles);
            tx.commit().await?;
        });
        Ok(())
    }

    /// The API key with this id, with its roles. `NotFound` if absent.
    pub async fn get_api_key(&self, id: &ApiKeyId) -> Result<ApiKey> {
        self.api_key_where(concat!(select_api_keys!(), " WHERE k.id = $1"), id.as_str()).await
    }

    /// The API key a Digest client names as its username. `NotFound` if absent.
    pub async fn get_api_key_by_public_key(&self, public_key: &str) -> Result<ApiKey> {
        self.api_key_where(concat!(select_api_keys!(), " WHERE k.public_key = $1"), public_key).await
    }

    /// The one API key `sql` (a `select_api_keys!` query with one parameter) finds, with roles.
    async fn api_key_where(&self, sql: &'static str, param: &str) -> Result<ApiKey> {
        let key = with_backend!(self, |pool| {
            let row = sqlx::query(sql).bind(param).fetch_optional(pool).await?;
            row.as_ref().map(api_key_from).transpose()?
        });
        let mut key = key.ok_or(StoreError::NotFound { what: "API key" })?;
        key.roles = self.roles_of(key.id.as_str()).await?;
        Ok(key)
    }

    /// The API keys of an organization with their roles, oldest first.
    pub async fn list_api_keys(&self, org: &OrgId) -> Result<Vec<ApiKey>> {
        let mut roles = self.roles_in(RoleScope::Org(org)).await?;
        with_backend!(self, |pool| {
            sqlx::query(concat!(select_api_keys!(), " WHERE p.org_id = $1 ORDER BY k.created_at, k.id"))
                .bind(org.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let mut key = api_key_from(row)?;
                    key.roles = roles.remove(key.id.as_str()).unwrap_or_default();
                    Ok(key)
                })
                .collect()
        })
    }

    /// Deletes an API key and its role bindings. `NotFound` if absent.
    pub async fn delete_api_key(&self, id: &ApiKeyId) -> Result<()> {
        self.delete_principal(id.as_str(), KIND_API_KEY, "API key").await
    }

    async fn delete_principal(&self, id: &str, kind: &'static str, what: &'static str) -> Result<()> {
        let deleted = with_backend!(self, |pool| {
            sqlx::query("DELETE FROM principals WHERE id = $1 AND kind = $2")
                .bind(id)
                .bind(kind)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if deleted == 0 {
            return Err(StoreError::NotFound { what });
        }
        Ok(())
    }

    /// Replaces the organization roles of a principal (an empty set removes them all).
    /// `NotFound` if the principal does not exist.
    pub async fn set_org_roles(&self, principal: &Principal, roles: &BTreeSet<OrgRole>) -> Result<()> {
        let id = principal.key();
        with_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let exists = sqlx::query("SELECT org_id FROM principals WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound { what: "principal" });
            }
            sqlx::query("DELETE FROM principal_org_roles WHERE principal_id = $1").bind(id).execute(&mut *tx).await?;
            for role in roles {
                sqlx::query("INSERT INTO principal_org_roles (principal_id, role) VALUES ($1, $2)")
                    .bind(id)
                    .bind(role.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Replaces the roles a principal holds on one project (an empty set unbinds it from the
    /// project). `NotFound` if the principal does not exist, or the project does not exist in
    /// the principal's organization.
    pub async fn set_group_roles(
        &self,
        principal: &Principal,
        group: &GroupId,
        roles: &BTreeSet<GroupRole>,
    ) -> Result<()> {
        let id = principal.key();
        with_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let org_id = match sqlx::query("SELECT org_id FROM principals WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
            {
                Some(row) => row.text("org_id")?,
                None => return Err(StoreError::NotFound { what: "principal" }),
            };
            sqlx::query("DELETE FROM principal_group_roles WHERE principal_id = $1 AND group_id = $2")
                .bind(id)
                .bind(group.as_str())
                .execute(&mut *tx)
                .await?;
            for role in roles {
                sqlx::query(
                    "INSERT INTO principal_group_roles (principal_id, org_id, group_id, role) VALUES ($1, $2, $3, $4)",
                )
                .bind(id)
                .bind(&org_id)
                .bind(group.as_str())
                .bind(role.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| Meaning::missing(GROUP_IN_ORG).classify(e))?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Creates a service account with its role bindings, atomically. `Conflict` if the client id
    /// is taken; `NotFound` as for [`Store::create_api_key`].
    pub async fn create_service_account(&self, account: &ServiceAccount) -> Result<()> {
        with_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO principals (id, org_id, kind) VALUES ($1, $2, $3)")
                .bind(account.client_id.as_str())
                .bind(account.org_id.as_str())
                .bind(KIND_SERVICE_ACCOUNT)
                .execute(&mut *tx)
                .await
                .map_err(|e| Meaning::conflict("service account client id").and_missing("organization").classify(e))?;
            sqlx::query(
                "INSERT INTO service_accounts (client_id, name, secret_sha256, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(account.client_id.as_str())
            .bind(&account.name)
            .bind(account.secret_sha256.as_slice())
            .bind(to_millis(account.created_at))
            .execute(&mut *tx)
            .await?;
            insert_roles!(tx, account.client_id.as_str(), account.org_id.as_str(), account.roles);
            tx.commit().await?;
        });
        Ok(())
    }

    /// The service account, with its roles. `NotFound` if absent.
    pub async fn get_service_account(&self, client_id: &ClientId) -> Result<ServiceAccount> {
        let account = with_backend!(self, |pool| {
            let row = sqlx::query(
                "SELECT s.client_id, p.org_id, s.name, s.secret_sha256, s.created_at \
                 FROM service_accounts s JOIN principals p ON p.id = s.client_id WHERE s.client_id = $1",
            )
            .bind(client_id.as_str())
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(service_account_from).transpose()?
        });
        let mut account = account.ok_or(StoreError::NotFound { what: "service account" })?;
        account.roles = self.roles_of(client_id.as_str()).await?;
        Ok(account)
    }

    /// The service accounts of an organization with their roles, oldest first.
    pub async fn list_service_accounts(&self, org: &OrgId) -> Result<Vec<ServiceAccount>> {
        let mut roles = self.roles_in(RoleScope::Org(org)).await?;
        with_backend!(self, |pool| {
            sqlx::query(
                "SELECT s.client_id, p.org_id, s.name, s.secret_sha256, s.created_at \
                 FROM service_accounts s JOIN principals p ON p.id = s.client_id \
                 WHERE p.org_id = $1 ORDER BY s.created_at, s.client_id",
            )
            .bind(org.as_str())
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                let mut account = service_account_from(row)?;
                account.roles = roles.remove(account.client_id.as_str()).unwrap_or_default();
                Ok(account)
            })
            .collect()
        })
    }

    /// Deletes a service account, its role bindings and its tokens. `NotFound` if absent.
    pub async fn delete_service_account(&self, client_id: &ClientId) -> Result<()> {
        self.delete_principal(client_id.as_str(), KIND_SERVICE_ACCOUNT, "service account").await
    }

    /// Records an issued access token (by digest). `NotFound` if the service account is gone.
    pub async fn insert_access_token(&self, token: &AccessToken) -> Result<()> {
        with_backend!(self, |pool| {
            sqlx::query(
                "INSERT INTO access_tokens (token_sha256, client_id, issued_at, expires_at, revoked_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(token.token_sha256.as_slice())
            .bind(token.client_id.as_str())
            .bind(to_millis(token.issued_at))
            .bind(to_millis(token.expires_at))
            .bind(token.revoked_at.map(to_millis))
            .execute(pool)
            .await
            .map_err(|e| Meaning::conflict("access token").and_missing("service account").classify(e))?;
        });
        Ok(())
    }

    /// The token with this digest, whatever its state (check [`AccessToken::is_active`]).
    /// `NotFound` if unknown.
    pub async fn get_access_token(&self, token_sha256: &[u8; 32]) -> Result<AccessToken> {
        with_backend!(self, |pool| {
            let row = sqlx::query(
                "SELECT token_sha256, client_id, issued_at, expires_at, revoked_at FROM access_tokens \
                 WHERE token_sha256 = $1",
            )
            .bind(token_sha256.as_slice())
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(access_token_from).transpose()?.ok_or(StoreError::NotFound { what: "access token" })
        })
    }

    /// Revokes a token, but only if it was issued to `client_id` (RFC 7009: a client revokes its
    /// own tokens). Returns whether this call revoked it; revoking twice or someone else's token
    /// is not an error, so the caller can always answer 200.
    pub async fn revoke_access_token(
        &self,
        client_id: &ClientId,
        token_sha256: &[u8; 32],
        now: OffsetDateTime,
    ) -> Result<bool> {
        let revoked = with_backend!(self, |pool| {
            sqlx::query(
                "UPDATE access_tokens SET revoked_at = $3 \
                 WHERE token_sha256 = $1 AND client_id = $2 AND revoked_at IS NULL",
            )
            .bind(token_sha256.as_slice())
            .bind(client_id.as_str())
            .bind(to_millis(now))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(revoked > 0)
    }

    /// Deletes tokens that expired before `now`; returns how many.
    pub async fn purge_expired_access_tokens(&self, now: OffsetDateTime) -> Result<u64> {
        Ok(with_backend!(self, |pool| {
            sqlx::query("DELETE FROM access_tokens WHERE expires_at <= $1")
                .bind(to_millis(now))
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}
