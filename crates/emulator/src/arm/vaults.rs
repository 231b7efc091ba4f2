//! `Microsoft.KeyVault/vaults` (api-version 2023-07-01 shapes): create/update, get, patch,
//! delete, list, and the incremental `accessPolicies/{add|replace|remove}` update.
//!
//! `az keyvault set-policy` does not use `accessPolicies/add`: it GETs the vault, edits
//! `properties.accessPolicies` and PUTs the whole vault back, echoing read-only fields
//! (`vaultUri`, `provisioningState`). Both paths are served and validated the same way.

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use atrest_domain::VaultName;

use super::path::vault_id;
use super::resources::{normalize_location, rg_not_found};
use super::{ArmError, ArmResult, Call, empty, json};
use crate::authz;
use crate::state::{
    AccessPolicy, Map, PeConnection, PeConnectionStatus, Permissions, PrivateEndpoint, ResourceGroup, State, Vault,
    VaultProperties,
};

const VAULT_READ: &str = "Microsoft.KeyVault/vaults/read";
const VAULT_WRITE: &str = "Microsoft.KeyVault/vaults/write";
const VAULT_DELETE: &str = "Microsoft.KeyVault/vaults/delete";
const POLICIES_WRITE: &str = "Microsoft.KeyVault/vaults/accessPolicies/write";

/// Azure's limit on access policies per vault.
const MAX_ACCESS_POLICIES: usize = 1024;

// Valid permission names per category (keyvault.json 2023-07-01 `KeyPermissions` etc.),
// lowercase: matching is case-insensitive, as az sends lowercase and the portal camelCase.
const KEY_PERMISSIONS: &[&str] = &[
    "all",
    "encrypt",
    "decrypt",
    "wrapkey",
    "unwrapkey",
    "sign",
    "verify",
    "get",
    "list",
    "create",
    "update",
    "import",
    "delete",
    "backup",
    "restore",
    "recover",
    "purge",
    "release",
    "rotate",
    "getrotationpolicy",
    "setrotationpolicy",
];
const SECRET_PERMISSIONS: &[&str] = &["all", "get", "list", "set", "delete", "backup", "restore", "recover", "purge"];
const CERTIFICATE_PERMISSIONS: &[&str] = &[
    "all",
    "get",
    "list",
    "delete",
    "create",
    "import",
    "update",
    "managecontacts",
    "getissuers",
    "listissuers",
    "setissuers",
    "deleteissuers",
    "manageissuers",
    "recover",
    "purge",
    "backup",
    "restore",
];
const STORAGE_PERMISSIONS: &[&str] = &[
    "all",
    "get",
    "list",
    "delete",
    "set",
    "update",
    "regeneratekey",
    "recover",
    "purge",
    "backup",
    "restore",
    "setsas",
    "listsas",
    "getsas",
    "deletesas",
];

#[derive(Deserialize)]
struct VaultBody {
    location: Option<String>,
    tags: Option<Map<String, String>>,
    properties: Option<PropsBody>,
}

/// Vault properties as a client sends them. Everything is optional here so that PUT (create
/// or update) and PATCH share one merge, and missing required fields get ARM's errors.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PropsBody {
    tenant_id: Option<String>,
    sku: Option<SkuBody>,
    enable_rbac_authorization: Option<bool>,
    access_policies: Option<Vec<PolicyBody>>,
    enable_soft_delete: Option<bool>,
    soft_delete_retention_in_days: Option<i64>,
    enable_purge_protection: Option<bool>,
    public_network_access: Option<String>,
    network_acls: Option<Value>,
}

#[derive(Deserialize)]
struct SkuBody {
    family: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyBody {
    tenant_id: Option<String>,
    object_id: Option<String>,
    application_id: Option<String>,
    permissions: Option<PermissionsBody>,
}

#[derive(Deserialize, Default)]
struct PermissionsBody {
    keys: Option<Vec<String>>,
    secrets: Option<Vec<String>>,
    certificates: Option<Vec<String>>,
    storage: Option<Vec<String>>,
}

fn bad_request(message: impl AsRef<str>) -> ArmError {
    ArmError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
}

pub(super) fn vault_not_found(rg: &str, vault: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!(
            "The Resource 'Microsoft.KeyVault/vaults/{vault}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
    )
}

/// The vault `name` in resource group `rg` of `sub`: 404 `ResourceGroupNotFound` or
/// `ResourceNotFound` otherwise (a vault of that name elsewhere is not this one).
pub(super) fn find_vault<'s>(state: &'s State, call: &Call, sub: Uuid, rg: &str, name: &str) -> ArmResult<&'s Vault> {
    if !state.resource_groups.contains_key(&ResourceGroup::key(sub, rg)) {
        return Err(rg_not_found(rg));
    }
    state
        .vault(call.cloud, name)
        .filter(|v| v.subscription_id == sub && v.resource_group.eq_ignore_ascii_case(rg))
        .ok_or_else(|| vault_not_found(rg, name))
}

fn policy_json(p: &AccessPolicy) -> Value {
    let mut v = json!({
        "tenantId": p.tenant_id,
        "objectId": p.object_id,
        "permissions": {
            "keys": p.permissions.keys,
            "secrets": p.permissions.secrets,
            "certificates": p.permissions.certificates,
            "storage": p.permissions.storage,
        },
    });
    if let Some(app) = &p.application_id {
        v["applicationId"] = json!(app);
    }
    v
}

/// The full vault resource. `network_acls` is echoed on writes only (it is not stored).
/// `properties.privateEndpointConnections` lists the vault's connections (ARM's
/// `PrivateEndpointConnectionItem`: `id`, `etag`, `properties`), only when it has some.
pub(super) fn vault_json(s: &State, v: &Vault, network_acls: Option<&Value>) -> Value {
    let p = &v.properties;
    let mut props = json!({
        "sku": {"family": p.sku_family, "name": p.sku_name},
        "tenantId": p.tenant_id,
        "accessPolicies": p.access_policies.iter().map(policy_json).collect::<Vec<_>>(),
        "enabledForDeployment": false,
        "enabledForDiskEncryption": false,
        "enabledForTemplateDeployment": false,
        "enableSoftDelete": p.enable_soft_delete,
        "softDeleteRetentionInDays": p.soft_delete_retention_in_days,
        "enableRbacAuthorization": p.enable_rbac_authorization,
        "vaultUri": v.vault_uri(),
        "provisioningState": "Succeeded",
        "publicNetworkAccess": p.public_network_access,
    });
    if let Some(pp) = p.enable_purge_protection {
        props["enablePurgeProtection"] = json!(pp);
    }
    if let Some(acls) = network_acls {
        props["networkAcls"] = acls.clone();
    }
    let connections: Vec<Value> = vault_connections(s, v)
        .into_iter()
        .map(|(pe, c)| {
            let full = connection_json(v, pe, c);
            json!({"id": full["id"], "etag": "", "properties": full["properties"]})
        })
        .collect();
    if !connections.is_empty() {
        props["privateEndpointConnections"] = json!(connections);
    }
    json!({
        "id": v.resource_id(),
        "name": v.name,
        "type": "Microsoft.KeyVault/vaults",
        "location": v.location,
        "tags": v.tags,
        "properties": props,
    })
}

/// Check one permission list against the valid names; keeps the caller's spelling and drops
/// case-insensitive duplicates.
fn permission_list(given: Option<Vec<String>>, valid: &[&str], index: usize, category: &str) -> ArmResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (j, perm) in given.unwrap_or_default().into_iter().enumerate() {
        if !valid.iter().any(|v| v.eq_ignore_ascii_case(&perm)) {
            return Err(bad_request(format!(
                "An invalid value was provided for 'accessPolicies'. The permission '{perm}' at accessPolicies[{index}].permissions.{category}[{j}] is not a valid {category} permission; valid values are: {}.",
                valid.join(", ")
            )));
        }
        if !out.iter().any(|p| p.eq_ignore_ascii_case(&perm)) {
            out.push(perm);
        }
    }
    Ok(out)
}

fn guid_field(value: Option<&str>, index: usize, field: &str) -> ArmResult<Uuid> {
    value.and_then(|v| v.trim().parse::<Uuid>().ok()).ok_or_else(|| {
        bad_request(format!("Invalid value found at accessPolicies[{index}].{field}: {}", value.unwrap_or("")))
    })
}

/// Validate and convert access policies from a request body.
fn parse_policies(list: Vec<PolicyBody>) -> ArmResult<Vec<AccessPolicy>> {
    if list.len() > MAX_ACCESS_POLICIES {
        return Err(access_policy_limit());
    }
    list.into_iter()
        .enumerate()
        .map(|(i, p)| {
            let tenant_id = guid_field(p.tenant_id.as_deref(), i, "TenantId")?;
            let object_id = guid_field(p.object_id.as_deref(), i, "ObjectId")?;
            let application_id = match p.application_id.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
                Some(a) => Some(guid_field(Some(a), i, "ApplicationId")?.to_string()),
                None => None,
            };
            let perms = p.permissions.unwrap_or_default();
            Ok(AccessPolicy {
                tenant_id,
                object_id: object_id.to_string(),
                application_id,
                permissions: Permissions {
                    keys: permission_list(perms.keys, KEY_PERMISSIONS, i, "keys")?,
                    secrets: permission_list(perms.secrets, SECRET_PERMISSIONS, i, "secrets")?,
                    certificates: permission_list(perms.certificates, CERTIFICATE_PERMISSIONS, i, "certificates")?,
                    storage: permission_list(perms.storage, STORAGE_PERMISSIONS, i, "storage")?,
                },
            })
        })
        .collect()
}

fn access_policy_limit() -> ArmError {
    bad_request(format!(
        "An invalid value was provided for 'accessPolicies'. A vault can have at most {MAX_ACCESS_POLICIES} access policies."
    ))
}

/// Merge `b` over `existing` (none when creating) into validated properties. Fields the body
/// omits keep their current value, or take ARM's default on create.
fn merge_properties(
    existing: Option<&VaultProperties>,
    b: PropsBody,
    subscription_tenant: Uuid,
) -> ArmResult<VaultProperties> {
    let tenant_id = match b.tenant_id.as_deref() {
        Some(t) => t
            .trim()
            .parse::<Uuid>()
            .map_err(|_| bad_request(format!("Invalid value found at properties.tenantId: {t}")))?,
        None => existing
            .map(|e| e.tenant_id)
            .ok_or_else(|| bad_request("The property 'properties.tenantId' is required to create a vault."))?,
    };
    if tenant_id != subscription_tenant {
        return Err(bad_request(format!(
            "The tenantId '{tenant_id}' is not the tenant '{subscription_tenant}' of the vault's subscription. A vault must use the tenant of its subscription."
        )));
    }
    let (sku_family, sku_name) = match b.sku {
        Some(sku) => {
            let family = sku.family.unwrap_or_else(|| "A".into());
            if !family.eq_ignore_ascii_case("A") {
                return Err(bad_request(format!("The SKU family '{family}' is not valid; the only family is 'A'.")));
            }
            let name = sku.name.unwrap_or_default().to_ascii_lowercase();
            if name != "standard" && name != "premium" {
                return Err(bad_request(format!("The SKU name '{name}' is not valid; use 'standard' or 'premium'.")));
            }
            ("A".to_string(), name)
        }
        None => match existing {
            Some(e) => (e.sku_family.clone(), e.sku_name.clone()),
            None => return Err(bad_request("The property 'properties.sku' is required to create a vault.")),
        },
    };
    let enable_rbac_authorization =
        b.enable_rbac_authorization.or(existing.map(|e| e.enable_rbac_authorization)).unwrap_or(false);
    let access_policies = match b.access_policies {
        Some(list) => parse_policies(list)?,
        None => existing.map(|e| e.access_policies.clone()).unwrap_or_default(),
    };

    let soft_delete_before = existing.map(|e| e.enable_soft_delete);
    let enable_soft_delete = b.enable_soft_delete.or(soft_delete_before).unwrap_or(true);
    if soft_delete_before == Some(true) && !enable_soft_delete {
        return Err(bad_request(
            "The property \"enableSoftDelete\" cannot be set to false. Enabling the soft delete for a vault is an irreversible action.",
        ));
    }
    let soft_delete_retention_in_days = match b.soft_delete_retention_in_days {
        Some(d) if (7..=90).contains(&d) => d as u32,
        Some(d) => {
            return Err(bad_request(format!(
                "The property \"softDeleteRetentionInDays\" has an invalid value {d}. Value should be between 7 and 90."
            )));
        }
        None => existing.map(|e| e.soft_delete_retention_in_days).unwrap_or(90),
    };
    let purge_before = existing.and_then(|e| e.enable_purge_protection);
    let enable_purge_protection = match b.enable_purge_protection {
        Some(true) => Some(true),
        Some(false) if purge_before == Some(true) => {
            return Err(bad_request(
                "The property \"enablePurgeProtection\" cannot be set to false. Enabling the purge protection for a vault is an irreversible action.",
            ));
        }
        // `false` on a vault without purge protection means "not set", which ARM omits.
        Some(false) => None,
        None => purge_before,
    };
    if enable_purge_protection == Some(true) && !enable_soft_delete {
        return Err(bad_request(
            "The property \"enablePurgeProtection\" cannot be set to true when soft delete is disabled. Purge protection requires soft delete.",
        ));
    }
    let public_network_access = match b.public_network_access.as_deref() {
        Some(p) if p.eq_ignore_ascii_case("enabled") => "Enabled".to_string(),
        Some(p) if p.eq_ignore_ascii_case("disabled") => "Disabled".to_string(),
        Some(p) => {
            return Err(bad_request(format!(
                "The property \"publicNetworkAccess\" has an invalid value '{p}'. Use 'Enabled' or 'Disabled'."
            )));
        }
        None => existing.map(|e| e.public_network_access.clone()).unwrap_or_else(|| "Enabled".into()),
    };
    Ok(VaultProperties {
        tenant_id,
        sku_family,
        sku_name,
        enable_rbac_authorization,
        access_policies,
        enable_soft_delete,
        soft_delete_retention_in_days,
        enable_purge_protection,
        public_network_access,
    })
}

fn validate_vault_name(name: &str) -> ArmResult<()> {
    name.parse::<VaultName>().map(|_| ()).map_err(|_| {
        ArmError::new(
            StatusCode::BAD_REQUEST,
            "VaultNameNotValid",
            format!(
                "The vault name '{name}' is invalid. A vault's name must be between 3-24 alphanumeric characters. The name must begin with a letter, end with a letter or digit, and not contain consecutive hyphens. Follow this link for more information: https://go.microsoft.com/fwlink/?linkid=2147742"
            ),
        )
    })
}

/// `PUT`: create, or update an existing vault in the same resource group.
pub(super) fn put(call: &Call, sub: Uuid, rg: &str, name: &str) -> ArmResult<Response> {
    let body: VaultBody = call.parse_body()?;
    let scope = vault_id(sub, rg, name);
    let now = call.now();
    let mut props_body = body.properties;
    let network_acls = props_body.as_mut().and_then(|p| p.network_acls.take()).filter(|v| !v.is_null());
    let vault = call.ctx.mutate(|s| -> ArmResult<Value> {
        let subscription = call.subscription(s, sub)?;
        call.authorize(s, &scope, VAULT_WRITE)?;
        validate_vault_name(name)?;
        let group = s.resource_groups.get(&ResourceGroup::key(sub, rg)).ok_or_else(|| rg_not_found(rg))?.clone();
        let key = Vault::key(call.cloud, name);
        let existing = s.vaults.get(&key).cloned();
        if let Some(e) = &existing
            && !(e.subscription_id == sub && e.resource_group.eq_ignore_ascii_case(rg))
        {
            return Err(ArmError::new(
                StatusCode::CONFLICT,
                "VaultAlreadyExists",
                format!(
                    "The vault name '{name}' is already in use. Vault names are globally unique so it is possible that the name is already taken. If you are sure that the vault name was not taken then it is possible that a vault with the same name was recently deleted but not purged after being placed in a recoverable state. If the vault is in a recoverable state then the vault will need to be purged before reusing the name. For more information about VaultAlreadyExists, soft delete and purging a vault follow this link https://go.microsoft.com/fwlink/?linkid=2147740."
                ),
            ));
        }
        let location = normalize_location(body.location.as_deref())?;
        if let Some(e) = &existing
            && e.location != location
        {
            return Err(ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidResourceLocation",
                format!(
                    "The resource '{}' already exists in location '{}' in resource group '{}'. A resource with the same name cannot be created in location '{location}'. Please select a new resource name.",
                    e.name, e.location, e.resource_group
                ),
            ));
        }
        let props_body = props_body.ok_or_else(|| bad_request("The property 'properties' is required for a vault."))?;
        let properties = merge_properties(existing.as_ref().map(|e| &e.properties), props_body, subscription.tenant_id)?;
        let vault = match existing {
            Some(mut e) => {
                e.properties = properties;
                if let Some(tags) = body.tags {
                    e.tags = tags;
                }
                e
            }
            None => Vault {
                cloud: call.cloud,
                subscription_id: sub,
                resource_group: group.name.clone(),
                name: name.to_string(),
                location,
                tags: body.tags.unwrap_or_default(),
                properties,
                keys: Default::default(),
                deleted_keys: Default::default(),
                created: now,
            },
        };
        s.vaults.insert(key, vault.clone());
        Ok(vault_json(s, &vault, network_acls.as_ref()))
    })?;
    // The Key Vault resource provider answers 200 to both create and update.
    Ok(json(StatusCode::OK, vault))
}

#[derive(Deserialize)]
struct PatchBody {
    tags: Option<Map<String, String>>,
    properties: Option<PropsBody>,
}

/// `PATCH`: merge tags and properties into an existing vault.
pub(super) fn patch(call: &Call, sub: Uuid, rg: &str, name: &str) -> ArmResult<Response> {
    let body: PatchBody = call.parse_body()?;
    let scope = vault_id(sub, rg, name);
    let mut props_body = body.properties.unwrap_or_default();
    let network_acls = props_body.network_acls.take().filter(|v| !v.is_null());
    let vault = call.ctx.mutate(|s| -> ArmResult<Value> {
        let subscription = call.subscription(s, sub)?;
        call.authorize(s, &scope, VAULT_WRITE)?;
        let mut vault = find_vault(s, call, sub, rg, name)?.clone();
        vault.properties = merge_properties(Some(&vault.properties), props_body, subscription.tenant_id)?;
        if let Some(tags) = body.tags {
            vault.tags = tags;
        }
        s.vaults.insert(Vault::key(call.cloud, name), vault.clone());
        Ok(vault_json(s, &vault, network_acls.as_ref()))
    })?;
    Ok(json(StatusCode::OK, vault))
}

pub(super) fn get(call: &Call, sub: Uuid, rg: &str, name: &str) -> ArmResult<Response> {
    call.ctx.read(|s| {
        call.subscription(s, sub)?;
        call.authorize(s, &vault_id(sub, rg, name), VAULT_READ)?;
        let vault = find_vault(s, call, sub, rg, name)?;
        Ok(json(StatusCode::OK, vault_json(s, vault, None)))
    })
}

/// `DELETE`: 200 when deleted, 204 when there was no such vault. The vault's keys and the
/// role assignments at and below it go with it.
pub(super) fn delete(call: &Call, sub: Uuid, rg: &str, name: &str) -> ArmResult<Response> {
    let scope = vault_id(sub, rg, name);
    let deleted = call.ctx.mutate(|s| -> ArmResult<bool> {
        call.subscription(s, sub)?;
        call.authorize(s, &scope, VAULT_DELETE)?;
        let resource_id = match find_vault(s, call, sub, rg, name) {
            Ok(v) => v.resource_id(),
            Err(e) if e.status() == StatusCode::NOT_FOUND => return Ok(false),
            Err(e) => return Err(e),
        };
        s.vaults.remove(&Vault::key(call.cloud, name));
        s.role_assignments.retain(|_, ra| !authz::scope_covers(&resource_id, &ra.scope));
        Ok(true)
    })?;
    Ok(empty(if deleted { StatusCode::OK } else { StatusCode::NO_CONTENT }))
}

/// Vaults in a subscription or resource group that the caller can read.
pub(super) fn list(call: &Call, sub: Uuid, rg: Option<&str>) -> ArmResult<Response> {
    call.ctx.read(|s| {
        call.subscription(s, sub)?;
        if let Some(rg) = rg
            && !s.resource_groups.contains_key(&ResourceGroup::key(sub, rg))
        {
            return Err(rg_not_found(rg));
        }
        let value: Vec<Value> = s
            .vaults
            .values()
            .filter(|v| v.cloud == call.cloud && v.subscription_id == sub)
            .filter(|v| rg.is_none_or(|rg| v.resource_group.eq_ignore_ascii_case(rg)))
            .filter(|v| call.can(s, &v.resource_id(), VAULT_READ))
            .map(|v| vault_json(s, v, None))
            .collect();
        Ok(json(StatusCode::OK, json!({"value": value})))
    })
}

#[derive(Deserialize)]
struct AccessPolicyUpdateBody {
    properties: Option<AccessPolicyUpdateProps>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessPolicyUpdateProps {
    access_policies: Option<Vec<PolicyBody>>,
}

fn same_identity(a: &AccessPolicy, b: &AccessPolicy) -> bool {
    a.tenant_id == b.tenant_id
        && a.object_id.eq_ignore_ascii_case(&b.object_id)
        && match (&a.application_id, &b.application_id) {
            (None, None) => true,
            (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
            _ => false,
        }
}

fn union(into: &mut Vec<String>, more: &[String]) {
    for p in more {
        if !into.iter().any(|q| q.eq_ignore_ascii_case(p)) {
            into.push(p.clone());
        }
    }
}

fn subtract(from: &mut Vec<String>, less: &[String]) {
    from.retain(|p| !less.iter().any(|q| q.eq_ignore_ascii_case(p)));
}

fn no_permissions(p: &Permissions) -> bool {
    p.keys.is_empty() && p.secrets.is_empty() && p.certificates.is_empty() && p.storage.is_empty()
}

/// Apply one incremental update to the vault's policies. An entry is the same entry when
/// (tenantId, objectId, applicationId) match, as in Azure and azure-cli.
fn apply_policy_update(policies: &mut Vec<AccessPolicy>, operation: &str, updates: &[AccessPolicy]) {
    for u in updates {
        let pos = policies.iter().position(|p| same_identity(p, u));
        match (operation, pos) {
            ("add", Some(i)) => {
                let p = &mut policies[i].permissions;
                union(&mut p.keys, &u.permissions.keys);
                union(&mut p.secrets, &u.permissions.secrets);
                union(&mut p.certificates, &u.permissions.certificates);
                union(&mut p.storage, &u.permissions.storage);
            }
            ("replace", Some(i)) => policies[i].permissions = u.permissions.clone(),
            ("add" | "replace", None) => policies.push(u.clone()),
            ("remove", Some(i)) => {
                // Removing with no permissions named removes the whole entry.
                let p = &mut policies[i].permissions;
                subtract(&mut p.keys, &u.permissions.keys);
                subtract(&mut p.secrets, &u.permissions.secrets);
                subtract(&mut p.certificates, &u.permissions.certificates);
                subtract(&mut p.storage, &u.permissions.storage);
                if no_permissions(&u.permissions) || no_permissions(p) {
                    policies.remove(i);
                }
            }
            _ => {}
        }
    }
}

/// `PUT .../vaults/{v}/accessPolicies/{add|replace|remove}`.
pub(super) fn update_access_policies(
    call: &Call,
    sub: Uuid,
    rg: &str,
    name: &str,
    operation: &str,
) -> ArmResult<Response> {
    let operation = operation.to_ascii_lowercase();
    if !matches!(operation.as_str(), "add" | "replace" | "remove") {
        return Err(bad_request(format!(
            "The access policy update operation '{operation}' is not valid. Use 'add', 'replace' or 'remove'."
        )));
    }
    let body: AccessPolicyUpdateBody = call.parse_body()?;
    let updates = body
        .properties
        .and_then(|p| p.access_policies)
        .ok_or_else(|| bad_request("The property 'properties.accessPolicies' is required."))?;
    let scope = vault_id(sub, rg, name);
    let (vault, updates) = call.ctx.mutate(|s| -> ArmResult<(Vault, Vec<AccessPolicy>)> {
        call.subscription(s, sub)?;
        call.authorize(s, &scope, POLICIES_WRITE)?;
        let mut vault = find_vault(s, call, sub, rg, name)?.clone();
        let updates = parse_policies(updates)?;
        apply_policy_update(&mut vault.properties.access_policies, &operation, &updates);
        if vault.properties.access_policies.len() > MAX_ACCESS_POLICIES {
            return Err(access_policy_limit());
        }
        s.vaults.insert(Vault::key(call.cloud, name), vault.clone());
        Ok((vault, updates))
    })?;
    // Azure echoes the policies of the request, not the vault's full list.
    Ok(json(
        StatusCode::OK,
        json!({
            "id": format!("{}/accessPolicies/{operation}", vault.resource_id()),
            "type": "Microsoft.KeyVault/vaults/accessPolicies",
            "properties": {"accessPolicies": updates.iter().map(policy_json).collect::<Vec<_>>()},
        }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Private endpoint connections (`Microsoft.KeyVault/vaults/privateEndpointConnections`)
// ---------------------------------------------------------------------------------------------

const CONNECTIONS_READ: &str = "Microsoft.KeyVault/vaults/privateEndpointConnections/read";
const CONNECTIONS_WRITE: &str = "Microsoft.KeyVault/vaults/privateEndpointConnections/write";
const CONNECTIONS_DELETE: &str = "Microsoft.KeyVault/vaults/privateEndpointConnections/delete";

/// The connection's ARM body. The emulator has no `Microsoft.Network`, so
/// `properties.privateEndpoint.id` names the endpoint under a fixed placeholder subscription
/// (documented in docs/emulator.md).
fn connection_json(vault: &Vault, pe: &PrivateEndpoint, c: &PeConnection) -> Value {
    json!({
        "id": format!("{}/privateEndpointConnections/{}", vault.resource_id(), c.name),
        "name": c.name,
        "type": "Microsoft.KeyVault/vaults/privateEndpointConnections",
        "location": vault.location,
        "properties": {
            "privateEndpoint": {"id": format!(
                "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/atrest-emulator/providers/Microsoft.Network/privateEndpoints/{}",
                pe.id
            )},
            "privateLinkServiceConnectionState": {
                "status": c.status.as_str(),
                "description": c.description,
                "actionsRequired": "None",
            },
            "provisioningState": "Succeeded",
        },
    })
}

/// The vault's connections that it still lists (a deleted one is `Disconnected` on the
/// endpoint's side only).
fn vault_connections<'s>(s: &'s State, vault: &Vault) -> Vec<(&'s PrivateEndpoint, &'s PeConnection)> {
    s.settings
        .private_endpoints
        .iter()
        .filter(|p| p.vault.eq_ignore_ascii_case(&vault.name))
        .filter_map(|p| p.connection.as_ref().map(|c| (p, c)))
        .filter(|(_, c)| c.status != PeConnectionStatus::Disconnected)
        .collect()
}

fn connection_not_found(vault: &str, name: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "PrivateEndpointConnectionNotFound",
        format!(
            "Private endpoint connection '{name}' was not found on vault '{vault}'. List them with GET \
             .../vaults/{vault}/privateEndpointConnections."
        ),
    )
}

/// `GET .../vaults/{v}/privateEndpointConnections`.
pub(super) fn list_connections(call: &Call, sub: Uuid, rg: &str, name: &str) -> ArmResult<Response> {
    let s = call.ctx.snapshot();
    call.subscription(&s, sub)?;
    call.authorize(&s, &vault_id(sub, rg, name), CONNECTIONS_READ)?;
    let vault = find_vault(&s, call, sub, rg, name)?;
    let value: Vec<Value> =
        vault_connections(&s, vault).into_iter().map(|(p, c)| connection_json(vault, p, c)).collect();
    Ok(json(StatusCode::OK, json!({"value": value})))
}

#[derive(Deserialize)]
struct ConnectionBody {
    properties: Option<ConnectionProperties>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionProperties {
    private_link_service_connection_state: Option<ConnectionState>,
}

#[derive(Deserialize)]
struct ConnectionState {
    status: Option<String>,
    description: Option<String>,
}

/// `GET/PUT/DELETE .../vaults/{v}/privateEndpointConnections/{name}`: the vault's owner
/// approves (`status: Approved`), rejects (`Rejected`) or deletes a connection. Only an approved
/// connection's endpoint reaches the vault (the Key Vault surface checks it on every request).
pub(super) fn connection(call: &Call, sub: Uuid, rg: &str, vault_name: &str, name: &str) -> ArmResult<Response> {
    let scope = vault_id(sub, rg, vault_name);
    match call.method.as_str() {
        "GET" => {
            let s = call.ctx.snapshot();
            call.subscription(&s, sub)?;
            call.authorize(&s, &scope, CONNECTIONS_READ)?;
            let vault = find_vault(&s, call, sub, rg, vault_name)?;
            let (p, c) = vault_connections(&s, vault)
                .into_iter()
                .find(|(_, c)| c.name.eq_ignore_ascii_case(name))
                .ok_or_else(|| connection_not_found(vault_name, name))?;
            Ok(json(StatusCode::OK, connection_json(vault, p, c)))
        }
        "PUT" => {
            let body: ConnectionBody = call.parse_body()?;
            let wanted = body.properties.and_then(|p| p.private_link_service_connection_state).ok_or_else(|| {
                bad_request("The property 'properties.privateLinkServiceConnectionState' is required.")
            })?;
            let status = match wanted.status.as_deref().map(str::to_ascii_lowercase).as_deref() {
                Some("approved") => PeConnectionStatus::Approved,
                Some("rejected") => PeConnectionStatus::Rejected,
                other => {
                    return Err(bad_request(format!(
                        "privateLinkServiceConnectionState.status {} is not valid: send Approved or Rejected.",
                        other.unwrap_or("(missing)")
                    )));
                }
            };
            let view = call.ctx.mutate(|s| -> ArmResult<Value> {
                call.subscription(s, sub)?;
                call.authorize(s, &scope, CONNECTIONS_WRITE)?;
                let vault = find_vault(s, call, sub, rg, vault_name)?.clone();
                let pe = s
                    .settings
                    .private_endpoints
                    .iter_mut()
                    .filter(|p| p.vault.eq_ignore_ascii_case(&vault.name))
                    .find(|p| {
                        p.connection.as_ref().is_some_and(|c| {
                            c.name.eq_ignore_ascii_case(name) && c.status != PeConnectionStatus::Disconnected
                        })
                    })
                    .ok_or_else(|| connection_not_found(vault_name, name))?;
                {
                    let c = pe.connection.as_mut().expect("filtered on a connection");
                    c.status = status;
                    if let Some(d) = wanted.description {
                        c.description = d;
                    }
                }
                let pe = pe.clone();
                let c = pe.connection.clone().expect("filtered on a connection");
                Ok(connection_json(&vault, &pe, &c))
            })?;
            Ok(json(StatusCode::OK, view))
        }
        "DELETE" => {
            let found = call.ctx.mutate(|s| -> ArmResult<bool> {
                call.subscription(s, sub)?;
                call.authorize(s, &scope, CONNECTIONS_DELETE)?;
                let vault = find_vault(s, call, sub, rg, vault_name)?.clone();
                let pe =
                    s.settings.private_endpoints.iter_mut().filter(|p| p.vault.eq_ignore_ascii_case(&vault.name)).find(
                        |p| {
                            p.connection.as_ref().is_some_and(|c| {
                                c.name.eq_ignore_ascii_case(name) && c.status != PeConnectionStatus::Disconnected
                            })
                        },
                    );
                match pe {
                    Some(pe) => {
                        pe.connection.as_mut().expect("filtered on a connection").status =
                            PeConnectionStatus::Disconnected;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            })?;
            // ARM answers 204 for a resource that is already gone.
            Ok(empty(if found { StatusCode::OK } else { StatusCode::NO_CONTENT }))
        }
        _ => unreachable!("dispatch sends GET, PUT and DELETE only"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(keys: &[&str]) -> AccessPolicy {
        AccessPolicy {
            tenant_id: Uuid::nil(),
            object_id: "00000000-0000-0000-0000-000000000001".into(),
            application_id: None,
            permissions: Permissions { keys: keys.iter().map(|k| k.to_string()).collect(), ..Default::default() },
        }
    }

    #[test]
    fn add_merges_replace_replaces_remove_subtracts() {
        let mut ps = vec![policy(&["get"])];
        apply_policy_update(&mut ps, "add", &[policy(&["wrapKey", "GET"])]);
        assert_eq!(ps[0].permissions.keys, vec!["get", "wrapKey"]);
        apply_policy_update(&mut ps, "replace", &[policy(&["unwrapKey"])]);
        assert_eq!(ps[0].permissions.keys, vec!["unwrapKey"]);
        let mut other = policy(&["list"]);
        other.application_id = Some("00000000-0000-0000-0000-000000000002".into());
        apply_policy_update(&mut ps, "add", &[other]);
        assert_eq!(ps.len(), 2, "a compound identity is a separate entry");
        apply_policy_update(&mut ps, "remove", &[policy(&["UNWRAPKEY"])]);
        assert_eq!(ps.len(), 1, "an entry left with no permissions is removed");
    }

    #[test]
    fn permissions_are_checked_case_insensitively() {
        assert_eq!(
            permission_list(Some(vec!["WrapKey".into(), "wrapkey".into()]), KEY_PERMISSIONS, 0, "keys")
                .map_err(|_| ())
                .unwrap(),
            vec!["WrapKey"]
        );
        assert!(permission_list(Some(vec!["fly".into()]), KEY_PERMISSIONS, 0, "keys").is_err());
        assert!(permission_list(Some(vec![" get".into()]), KEY_PERMISSIONS, 0, "keys").is_err());
    }
}
