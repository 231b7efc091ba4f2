//! The records the store keeps, as plain Rust values.
//!
//! These are the store's vocabulary, not a wire format: the control plane converts them to and
//! from Atlas JSON at its edge. Azure identifiers (tenant, client, subscription, key identifier)
//! are kept as the exact strings the client sent, because Atlas echoes every field exactly as it
//! was set; the control plane validates them with `atrest-domain` types before storing them.
//!
//! Instants are `time::OffsetDateTime` in UTC and are stored with **millisecond** precision: a
//! value read back equals the value written truncated to the millisecond.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use time::OffsetDateTime;

use crate::ids::{ApiKeyId, ClientId, EventId, GroupId, OrgId, RoleId};

/// An Atlas organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub id: OrgId,
    pub name: String,
    pub created_at: OffsetDateTime,
}

/// An Atlas project ("group"). `name` is unique within `org_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    pub org_id: OrgId,
    pub name: String,
    pub created_at: OffsetDateTime,
}

/// Organization-level roles (Atlas spelling in [`OrgRole::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrgRole {
    /// `ORG_OWNER`: everything in the organization, every project included.
    OrgOwner,
    /// `ORG_MEMBER`
    OrgMember,
    /// `ORG_READ_ONLY`: read everything in the organization.
    OrgReadOnly,
}

/// Project-level roles (Atlas spelling in [`GroupRole::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupRole {
    /// `GROUP_OWNER`: needed for writes.
    GroupOwner,
    /// `GROUP_READ_ONLY`: enough for reads.
    GroupReadOnly,
}

/// An Atlas role name the store does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role '{0}'")]
pub struct UnknownRole(pub String);

impl OrgRole {
    pub const ALL: [OrgRole; 3] = [OrgRole::OrgOwner, OrgRole::OrgMember, OrgRole::OrgReadOnly];

    /// The Atlas spelling, e.g. `ORG_OWNER`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgRole::OrgOwner => "ORG_OWNER",
            OrgRole::OrgMember => "ORG_MEMBER",
            OrgRole::OrgReadOnly => "ORG_READ_ONLY",
        }
    }

    /// Parses the Atlas spelling.
    pub fn parse(s: &str) -> Result<Self, UnknownRole> {
        Self::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

impl GroupRole {
    pub const ALL: [GroupRole; 2] = [GroupRole::GroupOwner, GroupRole::GroupReadOnly];

    /// The Atlas spelling, e.g. `GROUP_OWNER`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupRole::GroupOwner => "GROUP_OWNER",
            GroupRole::GroupReadOnly => "GROUP_READ_ONLY",
        }
    }

    /// Parses the Atlas spelling.
    pub fn parse(s: &str) -> Result<Self, UnknownRole> {
        Self::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

impl fmt::Display for OrgRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for GroupRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role bindings of one principal (API key or service account). The store records bindings;
/// deciding what they allow (e.g. that `ORG_OWNER` implies project ownership) is the control
/// plane's job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles {
    pub org: BTreeSet<OrgRole>,
    /// Only projects of the principal's own organization can appear here (the schema enforces it).
    pub groups: BTreeMap<GroupId, BTreeSet<GroupRole>>,
}

impl Roles {
    /// Roles for an organization owner (what bootstrap gives the first key).
    pub fn org_owner() -> Roles {
        Roles { org: BTreeSet::from([OrgRole::OrgOwner]), groups: BTreeMap::new() }
    }

    /// The project roles held on `group` (empty if none).
    pub fn on_group(&self, group: &GroupId) -> BTreeSet<GroupRole> {
        self.groups.get(group).cloned().unwrap_or_default()
    }
}

/// Who a role binding belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    ApiKey(ApiKeyId),
    ServiceAccount(ClientId),
}

impl Principal {
    pub(crate) fn key(&self) -> &str {
        match self {
            Principal::ApiKey(id) => id.as_str(),
            Principal::ServiceAccount(id) => id.as_str(),
        }
    }
}

/// A programmatic API key, authenticated with HTTP Digest (username = `public_key`).
/// `Debug` shows the length of the ciphertext, not its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub org_id: OrgId,
    /// What Digest clients send as the username. Unique across the store.
    pub public_key: String,
    /// The Digest HA1 (`MD5(public:realm:private)`), encrypted by the control plane. The store
    /// never sees the private key or HA1 in clear.
    pub digest_ha1_ciphertext: Vec<u8>,
    pub description: String,
    pub created_at: OffsetDateTime,
    pub roles: Roles,
}

/// An OAuth 2 client-credentials service account. `Debug` omits the secret's digest.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub client_id: ClientId,
    pub org_id: OrgId,
    pub name: String,
    /// SHA-256 of the client secret (secrets are high-entropy, so a plain digest is enough).
    pub secret_sha256: [u8; 32],
    pub created_at: OffsetDateTime,
    pub roles: Roles,
}

/// An OAuth access token issued to a service account, known only by its SHA-256.
/// `Debug` omits the digest.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token_sha256: [u8; 32],
    pub client_id: ClientId,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

impl AccessToken {
    /// Usable at `now`: not revoked and not yet expired.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// The outcome of presenting a Digest nonce count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// The count was higher than any seen before for this nonce and has been recorded.
    Accepted,
    /// The count was not higher than one already accepted: a replay. Reject with 401.
    Replayed,
    /// The nonce has expired: challenge again with `stale=true`.
    Expired,
    /// No replica issued this nonce (or it was purged): challenge again.
    Unknown,
}

/// Cloud providers a Cloud Provider Access role can be for. Only Azure is supported by this
/// deployment; the enum leaves room for more without changing the schema's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloudProvider {
    Azure,
}

impl CloudProvider {
    /// The Atlas `providerName`.
    pub fn as_str(self) -> &'static str {
        match self {
            CloudProvider::Azure => "AZURE",
        }
    }
}

/// A registered Azure service principal (Atlas "Cloud Provider Access role"). `id` is the `_id`
/// that `azureKeyVault.roleId` refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudProviderAccessRole {
    pub id: RoleId,
    pub group_id: GroupId,
    pub provider: CloudProvider,
    pub atlas_azure_app_id: String,
    pub service_principal_id: String,
    pub tenant_id: String,
    pub created_at: OffsetDateTime,
    pub last_updated_at: OffsetDateTime,
}

/// How the platform authenticates to the customer's tenant for one project. `Debug` shows the
/// length of the secret's ciphertext, not its bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum AzureCredentials {
    /// The secretless mode: a registered service principal of the platform's app.
    Secretless { role_id: RoleId },
    /// The legacy mode: the customer's own app registration and secret. The secret is encrypted
    /// by the control plane under its key-encryption key; the store only sees ciphertext.
    Static { client_id: String, tenant_id: String, secret_ciphertext: Vec<u8> },
}

impl AzureCredentials {
    /// The role this configuration uses, in the secretless mode.
    pub fn role_id(&self) -> Option<&RoleId> {
        match self {
            AzureCredentials::Secretless { role_id } => Some(role_id),
            AzureCredentials::Static { .. } => None,
        }
    }
}

/// The `azureKeyVault` block of a project's Encryption at Rest configuration, as configured.
///
/// Exactly one credential mode is stored at a time (the type and a schema CHECK both enforce it):
/// migrating to the secretless mode replaces the static credentials in the same write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureKeyVaultConfig {
    pub enabled: bool,
    pub credentials: AzureCredentials,
    pub subscription_id: Option<String>,
    pub resource_group_name: Option<String>,
    pub key_vault_name: Option<String>,
    pub key_identifier: Option<String>,
    /// `AZURE`, `AZURE_CHINA` or `AZURE_US_GOVERNMENT`, as sent.
    pub azure_environment: Option<String>,
    pub require_private_networking: bool,
    /// Under private networking, a migration from static credentials to this role waits for the
    /// data nodes: the static credentials stay in force until every node has validated with the
    /// role. Only set with [`AzureCredentials::Static`].
    pub pending_role_id: Option<RoleId>,
}

/// Where validation of a configuration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValidationState {
    /// Not validated yet (e.g. private networking: waiting for the data nodes to report).
    Pending,
    /// The last check passed.
    Valid,
    /// The last check was answered with a denial or a misconfiguration.
    Invalid,
    /// The last check could not reach Azure (DNS, TCP, TLS, timeouts, 5xx, 429).
    Unreachable,
}

impl ValidationState {
    const ALL: [ValidationState; 4] =
        [ValidationState::Pending, ValidationState::Valid, ValidationState::Invalid, ValidationState::Unreachable];

    /// The stored spelling (`pending`, `valid`, `invalid`, `unreachable`).
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationState::Pending => "pending",
            ValidationState::Valid => "valid",
            ValidationState::Invalid => "invalid",
            ValidationState::Unreachable => "unreachable",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The result of the latest validation of a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationStatus {
    /// Atlas's read-only `valid`. Kept separately from `state` so that the control plane can
    /// decide, for instance, that an unreachable vault leaves the last known validity in place.
    pub valid: bool,
    pub state: ValidationState,
    /// A human-readable explanation (failed check, Azure error code, fix). Never a secret.
    pub detail: Option<String>,
    /// The key version the last successful wrap/unwrap used (resolved if the identifier is
    /// unversioned).
    pub key_version_in_use: Option<String>,
    pub last_validated_at: Option<OffsetDateTime>,
}

impl ValidationStatus {
    /// Nothing validated yet.
    pub fn pending(detail: Option<String>) -> ValidationStatus {
        ValidationStatus {
            valid: false,
            state: ValidationState::Pending,
            detail,
            key_version_in_use: None,
            last_validated_at: None,
        }
    }
}

/// The version of a configuration (its etag): bumped by every configuration write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigVersion(pub(crate) i64);

/// The version of a configuration's validation status: bumped by every recorded result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatusVersion(pub(crate) i64);

impl ConfigVersion {
    /// The number, e.g. to render an ETag.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl StatusVersion {
    /// The number.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// A group's stored Azure Key Vault configuration with its validation state and versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEarConfig {
    pub group_id: GroupId,
    pub azure: AzureKeyVaultConfig,
    pub status: ValidationStatus,
    pub config_version: ConfigVersion,
    pub status_version: StatusVersion,
    pub updated_at: OffsetDateTime,
    /// When background revalidation is next due.
    pub next_validation_at: OffsetDateTime,
}

/// What [`crate::Store::put_ear_config`] writes: the whole configuration and the result of the
/// validation that justified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarConfigWrite {
    pub azure: AzureKeyVaultConfig,
    pub status: ValidationStatus,
    /// The write's time, recorded as `updated_at`.
    pub now: OffsetDateTime,
    /// When background revalidation should first look at the new configuration.
    pub next_validation_at: OffsetDateTime,
}

/// An event to record (Atlas-style, e.g. `ENCRYPTION_AT_REST_CONFIG_NO_LONGER_VALID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    pub group_id: GroupId,
    pub event_type_name: String,
    pub created_at: OffsetDateTime,
    /// Free-form details, typically JSON produced by the control plane. Never a secret.
    pub payload: String,
}

/// A page request: Atlas's `pageNum` (from 1) and `itemsPerPage` (1 to 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page_num: u32,
    pub items_per_page: u32,
}

impl Page {
    /// The largest `itemsPerPage` Atlas accepts.
    pub const MAX_ITEMS_PER_PAGE: u32 = 500;

    /// Atlas's defaults: page 1, 100 items.
    pub fn first() -> Page {
        Page { page_num: 1, items_per_page: 100 }
    }
}

/// One page of events, newest first, with the total across all pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub total_count: u64,
}

/// A named lease as currently stored (possibly expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub acquired_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// Stands in for sensitive bytes in `Debug` output: says how many there are, never what they are.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes redacted>", self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("public_key", &self.public_key)
            .field("digest_ha1_ciphertext", &Redacted(self.digest_ha1_ciphertext.len()))
            .field("description", &self.description)
            .field("created_at", &self.created_at)
            .field("roles", &self.roles)
            .finish()
    }
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_id", &self.client_id)
            .field("org_id", &self.org_id)
            .field("name", &self.name)
            .field("secret_sha256", &Redacted(self.secret_sha256.len()))
            .field("created_at", &self.created_at)
            .field("roles", &self.roles)
            .finish()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token_sha256", &Redacted(self.token_sha256.len()))
            .field("client_id", &self.client_id)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish()
    }
}

impl fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureCredentials::Secretless { role_id } => f.debug_struct("Secretless").field("role_id", role_id).finish(),
            AzureCredentials::Static { client_id, tenant_id, secret_ciphertext } => f
                .debug_struct("Static")
                .field("client_id", client_id)
                .field("tenant_id", tenant_id)
                .field("secret_ciphertext", &Redacted(secret_ciphertext.len()))
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_sensitive_bytes() {
        let credentials = AzureCredentials::Static {
            client_id: "c".into(),
            tenant_id: "t".into(),
            secret_ciphertext: b"SEALED-SECRET".to_vec(),
        };
        let shown = format!("{credentials:?}");
        assert!(!shown.contains("83, 69") && shown.contains("<13 bytes redacted>"), "{shown}");
        let key = ApiKey {
            id: ApiKeyId::new_random(),
            org_id: OrgId::new_random(),
            public_key: "abcdefgh".into(),
            digest_ha1_ciphertext: vec![0xde, 0xad],
            description: String::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            roles: Roles::default(),
        };
        assert!(format!("{key:?}").contains("<2 bytes redacted>"));
    }
}
