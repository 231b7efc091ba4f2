//! The emulator's persistent model of Azure: tenants, applications, service principals,
//! subscriptions, resource groups, vaults with their keys, and role assignments.
//!
//! All of it lives in one [`State`] behind a lock in [`crate::Ctx`]. Every mutation goes through
//! [`crate::Ctx::mutate`], which writes the whole state to `DIR/state.json` (temp file + rename,
//! mode 0600) before the response is sent, so an acknowledged write survives a restart.
//!
//! Identifiers are stored exactly as Azure shows them (lowercase GUIDs); names that Azure treats
//! case-insensitively (resource groups, vaults, keys) are keyed by their lowercase form and keep
//! the caller's spelling for display.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use atrest_domain::AzureEnvironment;

pub type Map<K, V> = BTreeMap<K, V>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Bumped on every structural change that must invalidate runtime caches.
    #[serde(default)]
    pub generation: u64,
    pub tenants: Map<Uuid, Tenant>,
    /// Keyed by the application's object id.
    pub applications: Map<Uuid, Application>,
    /// Keyed by the service principal's object id (unique across tenants, as in Entra).
    pub service_principals: Map<Uuid, ServicePrincipal>,
    pub subscriptions: Map<Uuid, Subscription>,
    /// Keyed by (subscription, lowercase resource group name).
    pub resource_groups: Map<String, ResourceGroup>,
    /// Keyed by (cloud, lowercase vault name): vault names are globally unique per cloud.
    pub vaults: Map<String, Vault>,
    /// Keyed by the lowercase full assignment id.
    pub role_assignments: Map<String, RoleAssignment>,
    pub settings: Settings,
    /// Identities the emulator itself uses (bootstrap principal).
    pub bootstrap: Option<Bootstrap>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bootstrap {
    pub tenant_id: Uuid,
    pub subscription_id: Uuid,
    pub client_id: Uuid,
    /// Hex SHA-256 of the bootstrap principal's client secret. The secret itself is shown only
    /// in `emulator.json` (0600); on restart it is read back from there and checked against
    /// this hash (see [`crate::Emulator::start`]).
    #[serde(default)]
    pub client_secret_sha256: String,
    /// The clear secret older data dirs stored here. Read once to migrate (hash it, keep it for
    /// `emulator.json`), never written again.
    #[serde(default, skip_serializing)]
    pub client_secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tenant {
    pub id: Uuid,
    pub display_name: String,
    /// `{something}.onmicrosoft.com`; accepted in place of the GUID in token URLs.
    pub default_domain: String,
    pub created: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Application {
    /// Object id of the application in its home tenant.
    pub object_id: Uuid,
    /// The application (client) id.
    pub app_id: Uuid,
    pub home_tenant: Uuid,
    pub display_name: String,
    /// `AzureADMultipleOrgs` when true, `AzureADMyOrg` when false.
    pub multi_tenant: bool,
    #[serde(default)]
    pub secrets: Vec<SecretCredential>,
    #[serde(default)]
    pub certificates: Vec<CertificateCredential>,
    #[serde(default)]
    pub federated: Vec<FederatedCredential>,
    pub created: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretCredential {
    pub key_id: Uuid,
    /// First three characters, as Entra shows them.
    pub hint: String,
    /// Hex SHA-256 of the secret. The secret itself is never stored.
    pub sha256: String,
    pub end_date_time: i64,
    /// When the secret starts to work (`None`: since the app was created, as older data dirs had).
    #[serde(default)]
    pub start_date_time: Option<i64>,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateCredential {
    pub key_id: Uuid,
    /// Hex SHA-1 of the certificate DER (what `x5t` encodes).
    pub sha1: String,
    /// Hex SHA-256 of the certificate DER (what `x5t#S256` encodes).
    pub sha256: String,
    /// Base64 DER of the certificate's SubjectPublicKeyInfo.
    pub spki_der_b64: String,
    /// The credential's validity (Graph's startDateTime/endDateTime): within the certificate's.
    pub not_before: i64,
    pub not_after: i64,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FederatedCredential {
    pub id: Uuid,
    pub name: String,
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServicePrincipal {
    pub object_id: Uuid,
    pub tenant_id: Uuid,
    pub app_id: Uuid,
    pub display_name: String,
    pub account_enabled: bool,
    /// Directory admin (Global Administrator equivalent) in its tenant: may create service
    /// principals and register applications through Graph.
    #[serde(default)]
    pub directory_admin: bool,
    pub created: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscription {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub display_name: String,
    pub cloud: AzureEnvironment,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceGroup {
    pub subscription_id: Uuid,
    pub name: String,
    pub location: String,
    #[serde(default)]
    pub tags: Map<String, String>,
}

impl ResourceGroup {
    pub fn key(subscription_id: Uuid, name: &str) -> String {
        format!("{subscription_id}/{}", name.to_ascii_lowercase())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vault {
    pub cloud: AzureEnvironment,
    pub subscription_id: Uuid,
    /// Resource group name as first written.
    pub resource_group: String,
    /// Vault name as first written (lookups are case-insensitive).
    pub name: String,
    pub location: String,
    #[serde(default)]
    pub tags: Map<String, String>,
    pub properties: VaultProperties,
    #[serde(default)]
    pub keys: Map<String, Key>,
    #[serde(default)]
    pub deleted_keys: Map<String, DeletedKey>,
    pub created: i64,
}

impl Vault {
    pub fn key(cloud: AzureEnvironment, name: &str) -> String {
        format!("{}/{}", cloud.as_str(), name.to_ascii_lowercase())
    }
    /// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{v}`
    pub fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.KeyVault/vaults/{}",
            self.subscription_id, self.resource_group, self.name
        )
    }
    pub fn vault_uri(&self) -> String {
        self.cloud.vault_uri(&self.name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaultProperties {
    pub tenant_id: Uuid,
    pub sku_family: String,
    pub sku_name: String,
    pub enable_rbac_authorization: bool,
    #[serde(default)]
    pub access_policies: Vec<AccessPolicy>,
    pub enable_soft_delete: bool,
    pub soft_delete_retention_in_days: u32,
    /// `None` = not set (ARM omits it), `Some(true)` once enabled (it can never be turned off).
    pub enable_purge_protection: Option<bool>,
    /// `Enabled` or `Disabled`.
    pub public_network_access: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessPolicy {
    pub tenant_id: Uuid,
    pub object_id: String,
    pub application_id: Option<String>,
    pub permissions: Permissions,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Permissions {
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub certificates: Vec<String>,
    #[serde(default)]
    pub storage: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Key {
    /// Name as first written.
    pub name: String,
    /// Oldest first; the last element is the current (latest) version.
    pub versions: Vec<KeyVersionRecord>,
}

impl Key {
    pub fn latest(&self) -> Option<&KeyVersionRecord> {
        self.versions.last()
    }
    pub fn version(&self, v: &str) -> Option<&KeyVersionRecord> {
        self.versions.iter().find(|r| r.version.eq_ignore_ascii_case(v))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyVersionRecord {
    pub version: String,
    /// `RSA` or `RSA-HSM`.
    pub kty: String,
    pub key_size: u32,
    /// Base64 PKCS#8 DER of the private key.
    pub pkcs8_b64: String,
    /// Base64url modulus and exponent, as the JWK carries them.
    pub n: String,
    pub e: String,
    pub key_ops: Vec<String>,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
    #[serde(default)]
    pub tags: Map<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedKey {
    pub key: Key,
    pub deleted_date: i64,
    pub scheduled_purge_date: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleAssignment {
    /// The assignment GUID (last path segment).
    pub name: String,
    /// The scope exactly as written by the caller (without a trailing slash).
    pub scope: String,
    /// Full role definition id as written by the caller.
    pub role_definition_id: String,
    pub principal_id: String,
    pub principal_type: String,
    pub description: Option<String>,
    pub condition: Option<String>,
    pub condition_version: Option<String>,
    pub created_on: i64,
    pub updated_on: i64,
    pub created_by: Option<String>,
    /// When the grant starts to count for authorization (created + propagation delay).
    pub effective_from: i64,
    /// Set on DELETE: the assignment is gone from ARM at once, but keeps granting access
    /// until this instant (the propagation delay).
    pub revoked_at: Option<i64>,
}

impl RoleAssignment {
    pub fn id(&self) -> String {
        format!("{}/providers/Microsoft.Authorization/roleAssignments/{}", self.scope, self.name)
    }
    /// Is this assignment visible in ARM reads? (Deleted ones are not.)
    pub fn visible(&self) -> bool {
        self.revoked_at.is_none()
    }
    /// Does this assignment grant access at `now` (unix seconds, emulator clock)?
    pub fn in_force(&self, now: i64) -> bool {
        now >= self.effective_from && self.revoked_at.is_none_or(|t| now < t)
    }
}

/// Switches set through the admin API. They persist with the rest of the state; faults and
/// vault throttles are runtime-only and live in [`crate::Inner`] instead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Seconds before a new or removed role assignment takes effect on authorization.
    pub rbac_propagation_delay_secs: u64,
    /// Added to the wall clock for every time decision (token exp/nbf, key nbf/exp).
    pub clock_shift_secs: i64,
    /// Lifetime of issued access tokens.
    pub token_lifetime_secs: u64,
    /// Private-endpoint listeners (recreated on start, on the same port when possible).
    #[serde(default)]
    pub private_endpoints: Vec<PrivateEndpoint>,
    /// Extra CA certificates (PEM) trusted when fetching a federated issuer's OIDC metadata.
    #[serde(default)]
    pub trusted_issuer_ca_pems: Vec<String>,
    /// Allow federated issuers over plain http on loopback (off by default: Entra requires https).
    #[serde(default)]
    pub allow_http_issuers: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rbac_propagation_delay_secs: 0,
            clock_shift_secs: 0,
            token_lifetime_secs: 3599,
            private_endpoints: Vec::new(),
            trusted_issuer_ca_pems: Vec::new(),
            allow_http_issuers: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fault {
    pub id: Uuid,
    /// Lowercase host (`login.microsoftonline.com`, `myvault.vault.azure.net`) or `None` for any.
    pub host: Option<String>,
    /// Lowercase vault name (matches the vault on every cloud) or `None`.
    pub vault: Option<String>,
    /// Only requests whose path starts with this.
    pub path_prefix: Option<String>,
    pub kind: FaultKind,
    /// How many requests it applies to; `None` = until removed.
    pub remaining: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Delay, then serve normally.
    Latency { millis: u64 },
    /// 429 with `Retry-After`.
    Throttle { retry_after_secs: u64 },
    /// A 5xx with an Azure-shaped body.
    ServerError { status: u16 },
    /// Close the connection without a response.
    Reset,
    /// Never answer (the connection stays open until the client gives up).
    Blackhole,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrivateEndpoint {
    pub id: Uuid,
    /// Lowercase vault name it connects to.
    pub vault: String,
    pub port: u16,
    /// The private endpoint connection on the vault, when the endpoint was requested with
    /// manual approval (`connectionName`). `None`: auto-approved (the creator could approve it
    /// on the vault itself, as Azure does for a requester with write access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<PeConnection>,
}

impl PrivateEndpoint {
    /// Whether requests through this endpoint may reach its vault: Azure lets only an
    /// `Approved` connection through.
    pub fn approved(&self) -> bool {
        self.connection.as_ref().is_none_or(|c| c.status == PeConnectionStatus::Approved)
    }
}

/// A private endpoint connection as the vault's owner sees it in ARM
/// (`Microsoft.KeyVault/vaults/privateEndpointConnections`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeConnection {
    /// The connection's name on the vault (unique per vault).
    pub name: String,
    pub status: PeConnectionStatus,
    /// `privateLinkServiceConnectionState.description`: the requester's message, then the
    /// approver's.
    pub description: String,
}

/// `privateLinkServiceConnectionState.status`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum PeConnectionStatus {
    Pending,
    Approved,
    Rejected,
    /// The vault's owner deleted the connection: the endpoint stays but reaches nothing, and
    /// cannot be approved again (the requester must create a new endpoint).
    Disconnected,
}

impl PeConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Approved => "Approved",
            Self::Rejected => "Rejected",
            Self::Disconnected => "Disconnected",
        }
    }
}

/// A client secret in Entra's style: 40 characters with a `~` after a 3-character hint.
pub fn new_client_secret() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
    let mut rng = rand::rng();
    let mut s: String = (0..3).map(|_| ALPHABET[rng.random_range(0..62)] as char).collect();
    s.push_str("8Q~");
    s.extend((0..34).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char));
    s
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

impl State {
    /// Create a tenant with one subscription and an admin principal that is a directory admin,
    /// Owner and Key Vault Administrator of the subscription. Returns the principal in the
    /// `emulator.json` `bootstrap` shape (the only time the secret is visible).
    pub fn create_tenant_with_admin(
        &mut self,
        display_name: &str,
        cloud: AzureEnvironment,
        now: i64,
    ) -> crate::PrincipalInfo {
        let tenant_id = Uuid::new_v4();
        let short = &tenant_id.simple().to_string()[..8];
        self.tenants.insert(
            tenant_id,
            Tenant {
                id: tenant_id,
                display_name: display_name.to_string(),
                default_domain: format!("atrest{short}.onmicrosoft.com"),
                created: now,
            },
        );
        let subscription_id = Uuid::new_v4();
        self.subscriptions.insert(
            subscription_id,
            Subscription {
                id: subscription_id,
                tenant_id,
                display_name: format!("{display_name} subscription"),
                cloud,
            },
        );
        let secret = new_client_secret();
        let app = Application {
            object_id: Uuid::new_v4(),
            app_id: Uuid::new_v4(),
            home_tenant: tenant_id,
            display_name: format!("{display_name} admin"),
            multi_tenant: false,
            secrets: vec![SecretCredential {
                key_id: Uuid::new_v4(),
                hint: secret[..3].to_string(),
                sha256: sha256_hex(secret.as_bytes()),
                end_date_time: now + 10 * 365 * 86400,
                start_date_time: Some(now),
                display_name: None,
            }],
            certificates: vec![],
            federated: vec![],
            created: now,
        };
        let sp = ServicePrincipal {
            object_id: Uuid::new_v4(),
            tenant_id,
            app_id: app.app_id,
            display_name: app.display_name.clone(),
            account_enabled: true,
            directory_admin: true,
            created: now,
        };
        let scope = format!("/subscriptions/{subscription_id}");
        for role in [crate::authz::OWNER, crate::authz::KEY_VAULT_ADMINISTRATOR] {
            let name = Uuid::new_v4().to_string();
            let ra = RoleAssignment {
                name: name.clone(),
                scope: scope.clone(),
                role_definition_id: format!("{scope}/providers/Microsoft.Authorization/roleDefinitions/{role}"),
                principal_id: sp.object_id.to_string(),
                principal_type: "ServicePrincipal".into(),
                description: Some("Created by the atrest emulator for the tenant's admin principal".into()),
                condition: None,
                condition_version: None,
                created_on: now,
                updated_on: now,
                created_by: None,
                effective_from: now,
                revoked_at: None,
            };
            self.role_assignments.insert(ra.id().to_ascii_lowercase(), ra);
        }
        let info = crate::PrincipalInfo {
            tenant_id: tenant_id.to_string(),
            subscription_id: subscription_id.to_string(),
            client_id: app.app_id.to_string(),
            client_secret: secret,
        };
        self.applications.insert(app.object_id, app);
        self.service_principals.insert(sp.object_id, sp);
        info
    }

    /// Give the bootstrap principal a new client secret in place of the one `bootstrap` names
    /// (used when `emulator.json`, the only copy of the secret, is gone). Returns the secret.
    pub fn rotate_bootstrap_secret(&mut self, now: i64) -> anyhow::Result<String> {
        let b = self.bootstrap.as_mut().ok_or_else(|| anyhow::anyhow!("the state has no bootstrap principal"))?;
        let app =
            self.applications.values_mut().find(|a| a.app_id == b.client_id).ok_or_else(|| {
                anyhow::anyhow!("the bootstrap application {} is missing from state.json", b.client_id)
            })?;
        let secret = new_client_secret();
        let old = std::mem::take(&mut b.client_secret_sha256);
        app.secrets.retain(|c| c.sha256 != old);
        app.secrets.push(SecretCredential {
            key_id: Uuid::new_v4(),
            hint: secret[..3].to_string(),
            sha256: sha256_hex(secret.as_bytes()),
            end_date_time: now + 10 * 365 * 86400,
            start_date_time: Some(now),
            display_name: None,
        });
        b.client_secret_sha256 = sha256_hex(secret.as_bytes());
        b.client_secret = None;
        Ok(secret)
    }

    /// The tenant named by a token URL segment: a GUID or a default domain.
    pub fn find_tenant(&self, tenant: &str) -> Option<&Tenant> {
        if let Ok(id) = tenant.parse::<Uuid>() {
            return self.tenants.get(&id);
        }
        self.tenants.values().find(|t| t.default_domain.eq_ignore_ascii_case(tenant))
    }

    pub fn app_by_app_id(&self, app_id: Uuid) -> Option<&Application> {
        self.applications.values().find(|a| a.app_id == app_id)
    }

    /// The service principal of `app_id` in `tenant_id`, if one exists.
    pub fn sp_in_tenant(&self, app_id: Uuid, tenant_id: Uuid) -> Option<&ServicePrincipal> {
        self.service_principals.values().find(|s| s.app_id == app_id && s.tenant_id == tenant_id)
    }

    pub fn vault(&self, cloud: AzureEnvironment, name: &str) -> Option<&Vault> {
        self.vaults.get(&Vault::key(cloud, name))
    }
}
