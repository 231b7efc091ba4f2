//! Azure Resource Manager reads: a vault's properties and access policies, and the role
//! assignments a principal holds at a scope (with role names).
//!
//! These power validation and `atrest doctor` (design.md §3.3 and §3.8): before using a key,
//! atrest checks that the vault is what the customer said and that the grants are in place, and
//! names the missing one. Reading needs `Reader` on the vault (ARM's `*/read`). api-versions:
//! `Microsoft.KeyVault/vaults` 2023-07-01, `Microsoft.Authorization` 2022-04-01.

use std::collections::BTreeMap;

use futures::future::try_join_all;
use serde::Deserialize;

use atrest_domain::{AzureEnvironment, AzureUuid, VaultName};

use crate::error::{Error, ErrorKind, Service, kind_for_status};
use crate::http::{self, AzureErrorBody, between};
use crate::retry::RetryPolicy;
use crate::token::TokenProvider;
use crate::token_cache::AccessToken;

/// `Microsoft.KeyVault/vaults` api-version.
pub const VAULTS_API_VERSION: &str = "2023-07-01";
/// `Microsoft.Authorization` (role assignments and definitions) api-version.
pub const AUTHORIZATION_API_VERSION: &str = "2022-04-01";
/// A bound on `nextLink` pages, so a misbehaving server cannot keep us reading forever.
const MAX_PAGES: usize = 100;

/// Where a vault lives in ARM.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VaultRef {
    /// The subscription that holds the vault.
    pub subscription_id: AzureUuid,
    /// The resource group, as the customer named it.
    pub resource_group: String,
    /// The vault name.
    pub name: VaultName,
}

impl VaultRef {
    /// A vault reference from its three ARM coordinates.
    pub fn new(subscription_id: AzureUuid, resource_group: impl Into<String>, name: VaultName) -> Self {
        Self { subscription_id, resource_group: resource_group.into(), name }
    }

    /// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{v}`.
    pub fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.KeyVault/vaults/{}",
            self.subscription_id, self.resource_group, self.name
        )
    }
}

/// A vault access policy entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    /// The tenant of the principal the policy names.
    pub tenant_id: String,
    /// The principal's object id.
    pub object_id: String,
    /// Set only for compound identities (user + app); `None` for an app-only principal.
    pub application_id: Option<String>,
    /// Key permissions (`get`, `wrapKey`, `unwrapKey`, ...), as stored (case varies).
    pub key_permissions: Vec<String>,
}

impl AccessPolicy {
    /// Does it grant `permission` on keys (`wrapKey`, `unwrapKey`, `get`, ...)? `all` grants
    /// everything; comparison is case-insensitive, as azure-cli lowercases them.
    pub fn allows_key(&self, permission: &str) -> bool {
        self.key_permissions.iter().any(|p| p.eq_ignore_ascii_case(permission) || p.eq_ignore_ascii_case("all"))
    }
}

/// The vault properties atrest validates.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultProperties {
    /// The ARM resource id.
    pub id: String,
    /// The vault name.
    pub name: String,
    /// The Azure region.
    pub location: String,
    /// The tenant whose tokens the vault accepts.
    pub tenant_id: Option<AzureUuid>,
    /// When true, the data plane uses RBAC and ignores access policies.
    pub enable_rbac_authorization: bool,
    /// The access policies (used only when RBAC authorization is off).
    pub access_policies: Vec<AccessPolicy>,
    /// Soft delete (on for every vault since 2020).
    pub enable_soft_delete: bool,
    /// Purge protection: deleted keys cannot be purged before the retention period ends.
    pub enable_purge_protection: bool,
    /// `Enabled` or `Disabled` (absent means `Enabled`).
    pub public_network_access: Option<String>,
    /// `https://{vault}.{suffix}/`.
    pub vault_uri: Option<String>,
    /// `standard` or `premium`.
    pub sku_name: Option<String>,
}

impl VaultProperties {
    /// The access policy entry for an app-only principal, if the vault has one.
    pub fn access_policy_for(&self, tenant: &AzureUuid, object_id: &AzureUuid) -> Option<&AccessPolicy> {
        let (t, o) = (tenant.to_string(), object_id.to_string());
        self.access_policies.iter().find(|p| {
            p.tenant_id.eq_ignore_ascii_case(&t) && p.object_id.eq_ignore_ascii_case(&o) && p.application_id.is_none()
        })
    }

    /// Is public network access disabled (only private endpoints reach the data plane)?
    pub fn public_network_disabled(&self) -> bool {
        self.public_network_access.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("Disabled"))
    }
}

/// A role assignment, with the role's name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAssignment {
    /// The assignment's full ARM id.
    pub id: String,
    /// The scope it was made at (at or above the scope asked about).
    pub scope: String,
    /// The full role definition id.
    pub role_definition_id: String,
    /// `Key Vault Crypto User`, ...; `None` when the definition no longer exists.
    pub role_name: Option<String>,
    /// The assignee's object id (the principal, or a group it belongs to).
    pub principal_id: String,
    /// `ServicePrincipal`, `User`, `Group`, ...
    pub principal_type: Option<String>,
}

impl RoleAssignment {
    /// The role definition GUID (last path segment of `role_definition_id`).
    pub fn role_definition_guid(&self) -> &str {
        self.role_definition_id.rsplit('/').next().unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct VaultResource {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    location: String,
    properties: VaultResourceProperties,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VaultResourceProperties {
    tenant_id: Option<String>,
    #[serde(default)]
    enable_rbac_authorization: Option<bool>,
    #[serde(default)]
    access_policies: Option<Vec<AccessPolicyResource>>,
    #[serde(default)]
    enable_soft_delete: Option<bool>,
    #[serde(default)]
    enable_purge_protection: Option<bool>,
    public_network_access: Option<String>,
    vault_uri: Option<String>,
    sku: Option<Sku>,
}

#[derive(Deserialize)]
struct Sku {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessPolicyResource {
    #[serde(default)]
    tenant_id: String,
    #[serde(default)]
    object_id: String,
    application_id: Option<String>,
    #[serde(default)]
    permissions: PermissionsResource,
}

#[derive(Deserialize, Default)]
struct PermissionsResource {
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Deserialize)]
struct RoleAssignmentList {
    #[serde(default)]
    value: Vec<RoleAssignmentResource>,
    #[serde(rename = "nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
struct RoleAssignmentResource {
    #[serde(default)]
    id: String,
    properties: RoleAssignmentProperties,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoleAssignmentProperties {
    #[serde(default)]
    scope: String,
    #[serde(default)]
    role_definition_id: String,
    #[serde(default)]
    principal_id: String,
    principal_type: Option<String>,
}

#[derive(Deserialize)]
struct RoleDefinitionResource {
    properties: RoleDefinitionProperties,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoleDefinitionProperties {
    role_name: String,
}

/// An ARM client for one cloud and tenant. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ArmClient {
    tokens: TokenProvider,
    environment: AzureEnvironment,
    tenant: AzureUuid,
    retry: RetryPolicy,
}

impl ArmClient {
    /// A client that reads with tokens from `tokens` issued in `tenant`.
    pub fn new(tokens: TokenProvider, environment: AzureEnvironment, tenant: AzureUuid, retry: RetryPolicy) -> Self {
        Self { tokens, environment, tenant, retry }
    }

    /// `GET .../Microsoft.KeyVault/vaults/{v}`.
    pub async fn get_vault(&self, vault: &VaultRef) -> Result<VaultProperties, Error> {
        let token = self.token().await?;
        let url = self.url(&format!("{}?api-version={VAULTS_API_VERSION}", vault.resource_id()));
        let body = self.get(&url, &token).await?;
        let v: VaultResource = serde_json::from_slice(&body).map_err(|e| bad_answer(&url, &e.to_string()))?;
        let p = v.properties;
        Ok(VaultProperties {
            id: v.id,
            name: v.name,
            location: v.location,
            tenant_id: p.tenant_id.as_deref().and_then(|t| t.parse().ok()),
            enable_rbac_authorization: p.enable_rbac_authorization.unwrap_or(false),
            access_policies: p
                .access_policies
                .unwrap_or_default()
                .into_iter()
                .map(|a| AccessPolicy {
                    tenant_id: a.tenant_id,
                    object_id: a.object_id,
                    application_id: a.application_id.filter(|s| !s.is_empty()),
                    key_permissions: a.permissions.keys,
                })
                .collect(),
            // ARM omits soft delete on old vaults; it has been on by default (and mandatory) since 2020.
            enable_soft_delete: p.enable_soft_delete.unwrap_or(true),
            enable_purge_protection: p.enable_purge_protection.unwrap_or(false),
            public_network_access: p.public_network_access,
            vault_uri: p.vault_uri,
            sku_name: p.sku.and_then(|s| s.name),
        })
    }

    /// The vault's access policies (they are a vault property).
    pub async fn access_policies(&self, vault: &VaultRef) -> Result<Vec<AccessPolicy>, Error> {
        Ok(self.get_vault(vault).await?.access_policies)
    }

    /// Role assignments of `principal_id` that apply at `scope` (at it or above it), with role
    /// names resolved through `roleDefinitions`.
    pub async fn role_assignments(&self, scope: &str, principal_id: &AzureUuid) -> Result<Vec<RoleAssignment>, Error> {
        let token = self.token().await?;
        let scope = scope.trim_end_matches('/');
        // `atScope()` (assignments at or above the scope) combined with `assignedTo()` is what
        // azure-cli sends for `az role assignment list --scope S --assignee X`.
        let filter = format!("atScope() and assignedTo('{principal_id}')");
        let mut next = Some(self.url(&format!(
            "{scope}/providers/Microsoft.Authorization/roleAssignments?api-version={AUTHORIZATION_API_VERSION}&$filter={}",
            encode_query(&filter)
        )));
        let mut raw = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(bad_answer(&url, "more than 100 pages of role assignments"));
            }
            self.check_same_host(&url)?;
            let body = self.get(&url, &token).await?;
            let list: RoleAssignmentList =
                serde_json::from_slice(&body).map_err(|e| bad_answer(&url, &e.to_string()))?;
            raw.extend(list.value);
            next = list.next_link.filter(|l| !l.is_empty());
        }
        // assignedTo() also matches groups the principal is in; keep those, as they grant too.
        let mut definitions: Vec<String> = raw.iter().map(|r| r.properties.role_definition_id.clone()).collect();
        definitions.sort_by_key(|d| d.to_ascii_lowercase());
        definitions.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        // One concurrent round trip for all role names. Definitions are read at the scope the
        // caller asked about (`{scope}/providers/.../roleDefinitions/{guid}`), where it has
        // Reader; the subscription-scoped id in the assignment may be out of its reach.
        let names = try_join_all(definitions.iter().map(|d| self.role_name(scope, d, &token))).await?;
        let names: BTreeMap<String, Option<String>> =
            definitions.iter().map(|d| d.to_ascii_lowercase()).zip(names).collect();
        Ok(raw
            .into_iter()
            .map(|r| RoleAssignment {
                role_name: names.get(&r.properties.role_definition_id.to_ascii_lowercase()).cloned().flatten(),
                id: r.id,
                scope: r.properties.scope,
                role_definition_id: r.properties.role_definition_id,
                principal_id: r.properties.principal_id,
                principal_type: r.properties.principal_type,
            })
            .collect())
    }

    /// The `roleName` of a role definition, read at `scope`; `None` if it no longer exists.
    async fn role_name(
        &self,
        scope: &str,
        role_definition_id: &str,
        token: &AccessToken,
    ) -> Result<Option<String>, Error> {
        let guid = role_definition_id.rsplit('/').next().unwrap_or_default();
        let url = self.url(&format!(
            "{scope}/providers/Microsoft.Authorization/roleDefinitions/{guid}?api-version={AUTHORIZATION_API_VERSION}"
        ));
        match self.get(&url, token).await {
            Ok(body) => {
                let d: RoleDefinitionResource =
                    serde_json::from_slice(&body).map_err(|e| bad_answer(&url, &e.to_string()))?;
                Ok(Some(d.properties.role_name))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn token(&self) -> Result<AccessToken, Error> {
        self.tokens.arm_token(self.environment, &self.tenant).await
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("https://{}{path_and_query}", self.environment.arm_host())
    }

    /// A `nextLink` must stay on the ARM host: the bearer token goes with it.
    fn check_same_host(&self, url: &str) -> Result<(), Error> {
        let host = url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        if host.as_deref() == Some(self.environment.arm_host()) {
            Ok(())
        } else {
            Err(bad_answer(url, "a nextLink points outside Azure Resource Manager"))
        }
    }

    /// GET `url` with retries; a 401 is retried once with a fresh token
    /// ([`TokenProvider::with_refresh_on_401`]).
    async fn get(&self, url: &str, token: &AccessToken) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        let scope = format!("{}/.default", self.environment.arm_resource());
        let result = self
            .tokens
            .with_refresh_on_401(self.environment, &self.tenant, &scope, token, |t| async move {
                self.attempt(url, &t).await
            })
            .await;
        if let Err(e) = &result {
            tracing::info!(url, error = %e, "ARM request failed");
        }
        result
    }

    async fn attempt(&self, url: &str, token: &AccessToken) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        let transport = self.tokens.transport();
        self.retry
            .run(|time_left| {
                let request = transport.http().get(url);
                async move {
                    let resp = http::send(transport, Service::ResourceManager, request, token, time_left).await?;
                    if resp.is_success() { Ok(resp) } else { Err(classify(&resp)) }
                }
            })
            .await
            .map(|r| r.body)
    }
}

/// Percent-encode a query value (ARM's `$filter` has spaces, quotes and parentheses).
fn encode_query(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>().replace('+', "%20")
}

fn bad_answer(url: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::Unreachable,
        Service::ResourceManager,
        format!("Azure Resource Manager's answer to {url} is unusable: {why}"),
    )
}

/// Classify an ARM error answer and attach the fix.
fn classify(resp: &http::Response) -> Error {
    let parsed = AzureErrorBody::parse(&resp.body);
    let code = parsed.specific_code().map(str::to_string);
    let message = if parsed.error.message.is_empty() {
        format!("HTTP {} without an ARM error body", resp.status)
    } else {
        parsed.error.message.clone()
    };
    let kind = match (resp.status, code.as_deref()) {
        (429, _) => ErrorKind::Throttled,
        (500..=599, _) => ErrorKind::Unreachable,
        (
            _,
            Some("ResourceNotFound" | "ResourceGroupNotFound" | "SubscriptionNotFound" | "RoleDefinitionDoesNotExist"),
        ) => ErrorKind::NotFound,
        (_, Some("AuthorizationFailed" | "InvalidAuthenticationToken" | "InvalidAuthenticationTokenTenant")) => {
            ErrorKind::Denied
        }
        (s, _) => kind_for_status(s),
    };
    let mut err = Error::new(kind, Service::ResourceManager, message.clone())
        .with_status(resp.status)
        .with_retry_after(resp.retry_after());
    if let Some(c) = &code {
        err = err.with_code(c.clone());
    }
    if let Some(r) = remediation(kind, code.as_deref(), &message) {
        err = err.with_remediation(r);
    }
    err
}

fn remediation(kind: ErrorKind, code: Option<&str>, message: &str) -> Option<String> {
    match (kind, code) {
        (ErrorKind::Denied, Some("AuthorizationFailed")) => {
            // "The client '{oid}' with object id '{oid}' does not have authorization to perform
            // action '{action}' over scope '{scope}' or the scope is invalid."
            let oid = between(message, "object id '", &['\'']).unwrap_or("<service principal object id>");
            let scope = between(message, "over scope '", &['\'']).unwrap_or("<vault resource id>");
            Some(format!(
                "grant the platform's service principal read access: `az role assignment create --assignee-object-id {oid} --assignee-principal-type ServicePrincipal --role Reader --scope {scope}` (role assignments can take several minutes to propagate)"
            ))
        }
        (ErrorKind::NotFound, Some("ResourceGroupNotFound" | "SubscriptionNotFound" | "ResourceNotFound")) => Some(
            "check subscriptionID, resourceGroupName and keyVaultName; the service principal also needs Reader on the vault to see it"
                .to_string(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> http::Response {
        http::Response {
            status,
            headers: reqwest::header::HeaderMap::new(),
            body: zeroize::Zeroizing::new(body.as_bytes().to_vec()),
        }
    }

    #[test]
    fn authorization_failed_names_reader_on_the_scope() {
        let body = r#"{"error":{"code":"AuthorizationFailed","message":"The client '66666666-7777-8888-9999-000000000000' with object id '66666666-7777-8888-9999-000000000000' does not have authorization to perform action 'Microsoft.KeyVault/vaults/read' over scope '/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1' or the scope is invalid. If access was recently granted, please refresh your credentials."}}"#;
        let e = classify(&resp(403, body));
        assert_eq!(e.kind(), ErrorKind::Denied);
        assert_eq!(e.code(), Some("AuthorizationFailed"));
        assert!(e.remediation().unwrap().contains("--assignee-object-id 66666666-7777-8888-9999-000000000000 --assignee-principal-type ServicePrincipal --role Reader --scope /subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1"));
    }

    #[test]
    fn not_found_and_transient_classes() {
        assert_eq!(
            classify(&resp(404, r#"{"error":{"code":"ResourceNotFound","message":"x"}}"#)).kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(&resp(404, r#"{"error":{"code":"ResourceGroupNotFound","message":"x"}}"#)).kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(&resp(429, r#"{"error":{"code":"TooManyRequests","message":"x"}}"#)).kind(),
            ErrorKind::Throttled
        );
        assert_eq!(classify(&resp(503, "")).kind(), ErrorKind::Unreachable);
        assert_eq!(
            classify(&resp(400, r#"{"error":{"code":"InvalidApiVersionParameter","message":"x"}}"#)).kind(),
            ErrorKind::Misconfigured
        );
        assert_eq!(
            classify(&resp(401, r#"{"error":{"code":"InvalidAuthenticationToken","message":"x"}}"#)).kind(),
            ErrorKind::Denied
        );
    }

    #[test]
    fn filter_is_percent_encoded() {
        assert_eq!(encode_query("atScope() and assignedTo('x')"), "atScope%28%29%20and%20assignedTo%28%27x%27%29");
    }

    #[test]
    fn access_policy_matching() {
        let t: AzureUuid = "aaaaaaaa-0000-0000-0000-000000000000".parse().unwrap();
        let o: AzureUuid = "bbbbbbbb-0000-0000-0000-000000000000".parse().unwrap();
        let p = VaultProperties {
            id: String::new(),
            name: "kv1".into(),
            location: "westeurope".into(),
            tenant_id: Some(t),
            enable_rbac_authorization: false,
            access_policies: vec![
                AccessPolicy {
                    tenant_id: t.to_string(),
                    object_id: o.to_string(),
                    application_id: Some("x".into()),
                    key_permissions: vec!["all".into()],
                },
                AccessPolicy {
                    tenant_id: t.to_string().to_uppercase(),
                    object_id: o.to_string(),
                    application_id: None,
                    key_permissions: vec!["get".into(), "wrapkey".into()],
                },
            ],
            enable_soft_delete: true,
            enable_purge_protection: false,
            public_network_access: Some("Disabled".into()),
            vault_uri: None,
            sku_name: None,
        };
        let ap = p.access_policy_for(&t, &o).unwrap();
        assert!(ap.allows_key("wrapKey") && ap.allows_key("GET") && !ap.allows_key("unwrapKey"));
        assert!(p.public_network_disabled());
    }
}
