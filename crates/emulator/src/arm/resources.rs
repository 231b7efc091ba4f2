//! `Microsoft.Resources`: the cloud metadata document, subscriptions, tenants, resource groups
//! and the generic resource list (`az keyvault show` without `-g` finds a vault's group there).

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use atrest_domain::AzureEnvironment;

use super::filter::{and_terms, eq_term};
use super::path::{resource_group_id, vault_id};
use super::{ArmError, ArmResult, Call, empty, json};
use crate::authz;
use crate::state::{Map, ResourceGroup, State, Subscription};

const RG_READ: &str = "Microsoft.Resources/subscriptions/resourceGroups/read";
const RG_WRITE: &str = "Microsoft.Resources/subscriptions/resourceGroups/write";
const RG_DELETE: &str = "Microsoft.Resources/subscriptions/resourceGroups/delete";
const VAULT_READ: &str = "Microsoft.KeyVault/vaults/read";

/// The endpoints of one cloud in the `metadata/endpoints?api-version=2022-09-01` shape that
/// `az cloud register` maps through `ARM_METADATA_INDEX`. Host names are Azure's own: the
/// emulator serves them, and identifiers stay exactly as in Azure.
fn cloud_metadata(cloud: AzureEnvironment) -> Value {
    let (portal, aad_graph, storage, sql, acr, mhsm, batch, media, gallery) = match cloud {
        AzureEnvironment::Azure => (
            "https://portal.azure.com",
            "https://graph.windows.net/",
            "core.windows.net",
            "database.windows.net",
            "azurecr.io",
            "managedhsm.azure.net",
            "https://batch.core.windows.net/",
            "https://rest.media.azure.net",
            "https://gallery.azure.com/",
        ),
        AzureEnvironment::AzureChina => (
            "https://portal.azure.cn",
            "https://graph.chinacloudapi.cn/",
            "core.chinacloudapi.cn",
            "database.chinacloudapi.cn",
            "azurecr.cn",
            "managedhsm.azure.cn",
            "https://batch.chinacloudapi.cn/",
            "https://rest.media.chinacloudapi.cn",
            "https://gallery.chinacloudapi.cn/",
        ),
        AzureEnvironment::AzureUsGovernment => (
            "https://portal.azure.us",
            "https://graph.windows.net/",
            "core.usgovcloudapi.net",
            "database.usgovcloudapi.net",
            "azurecr.us",
            "managedhsm.usgovcloudapi.net",
            "https://batch.core.usgovcloudapi.net/",
            "https://rest.media.usgovcloudapi.net",
            "https://gallery.usgovcloudapi.net/",
        ),
    };
    let core = super::management_core(cloud);
    json!({
        "portal": portal,
        "authentication": {
            "loginEndpoint": cloud.authority_url(),
            "audiences": [core, format!("{}/", cloud.arm_resource())],
            "tenant": "common",
            "identityProvider": "AAD",
        },
        "media": media,
        "graphAudience": aad_graph,
        "graph": aad_graph,
        "name": cloud.cli_cloud_name(),
        "suffixes": {
            "keyVaultDns": cloud.vault_dns_suffix(),
            "mhsmDns": mhsm,
            "storage": storage,
            "sqlServerHostname": sql,
            "acrLoginServer": acr,
        },
        "batch": batch,
        "resourceManager": format!("{}/", cloud.arm_resource()),
        "sqlManagement": format!("{}:8443/", core.trim_end_matches('/')),
        "gallery": gallery,
        "microsoftGraphResourceId": format!("{}/", cloud.graph_resource()),
    })
}

/// `GET /metadata/endpoints`: the host's cloud; api-versions before 2022-09-01 get the older
/// list of every cloud.
pub(super) fn metadata(cloud: AzureEnvironment, api_version: &str) -> Response {
    // api-versions are `YYYY-MM-DD[-preview]`, so they order as strings.
    if api_version < "2022-09-01" {
        return json(StatusCode::OK, Value::Array(AzureEnvironment::ALL.iter().map(|c| cloud_metadata(*c)).collect()));
    }
    json(StatusCode::OK, cloud_metadata(cloud))
}

/// Does `oid` hold any role at or below the subscription now? Azure lists a subscription to
/// anyone with a role anywhere in it.
fn has_any_role_in(state: &State, oid: &str, sub: Uuid, now: i64) -> bool {
    let scope = format!("/subscriptions/{sub}");
    state.role_assignments.values().any(|ra| {
        ra.principal_id.eq_ignore_ascii_case(oid) && ra.in_force(now) && authz::scope_covers(&scope, &ra.scope)
    })
}

fn subscription_json(s: &Subscription) -> Value {
    json!({
        "id": format!("/subscriptions/{}", s.id),
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": s.id,
        "tenantId": s.tenant_id,
        "displayName": s.display_name,
        "state": "Enabled",
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off",
        },
    })
}

/// `GET /subscriptions`: the subscriptions of the token's tenant, in this cloud, where the
/// caller holds a role.
pub(super) fn list_subscriptions(call: &Call) -> ArmResult<Response> {
    let now = call.now();
    let value: Vec<Value> = call.ctx.read(|s| {
        s.subscriptions
            .values()
            .filter(|sub| sub.cloud == call.cloud && sub.tenant_id.to_string().eq_ignore_ascii_case(&call.claims.tid))
            .filter(|sub| has_any_role_in(s, call.oid(), sub.id, now))
            .map(subscription_json)
            .collect()
    });
    Ok(json(StatusCode::OK, json!({"value": value})))
}

pub(super) fn get_subscription(call: &Call, id: Uuid) -> ArmResult<Response> {
    call.ctx.read(|s| {
        let sub = call.subscription(s, id)?;
        if !has_any_role_in(s, call.oid(), id, call.now()) {
            return Err(super::authorization_failed(
                call.oid(),
                "Microsoft.Resources/subscriptions/read",
                &format!("/subscriptions/{id}"),
            ));
        }
        Ok(json(StatusCode::OK, subscription_json(&sub)))
    })
}

/// `GET /tenants`: an application token sees the tenant it was issued in.
pub(super) fn list_tenants(call: &Call) -> ArmResult<Response> {
    let value: Vec<Value> = call.ctx.read(|s| {
        s.find_tenant(&call.claims.tid)
            .map(|t| {
                json!({
                    "id": format!("/tenants/{}", t.id),
                    "tenantId": t.id,
                    "countryCode": "US",
                    "displayName": t.display_name,
                    "domains": [t.default_domain],
                    "tenantCategory": "Home",
                    "defaultDomain": t.default_domain,
                    "tenantType": "AAD",
                })
            })
            .into_iter()
            .collect()
    });
    Ok(json(StatusCode::OK, json!({"value": value})))
}

fn rg_json(rg: &ResourceGroup) -> Value {
    json!({
        "id": resource_group_id(rg.subscription_id, &rg.name),
        "name": rg.name,
        "type": "Microsoft.Resources/resourceGroups",
        "location": rg.location,
        "tags": rg.tags,
        "properties": {"provisioningState": "Succeeded"},
    })
}

pub(super) fn rg_not_found(rg: &str) -> ArmError {
    ArmError::new(StatusCode::NOT_FOUND, "ResourceGroupNotFound", format!("Resource group '{rg}' could not be found."))
}

/// Azure's resource group name rule: 1–90 letters, digits, `-._()`, not ending in a period.
fn validate_rg_name(name: &str) -> ArmResult<()> {
    let bad: String = name.chars().filter(|c| !(c.is_alphanumeric() || "-._()".contains(*c))).collect();
    if !bad.is_empty() {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidResourceGroup",
            format!(
                "The provided resource group name '{name}' has these invalid characters: '{bad}'. The name can only be a letter, digit, '-', '.', '(', ')' or '_'."
            ),
        ));
    }
    if name.chars().count() > 90 || name.ends_with('.') {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidResourceGroup",
            format!(
                "The provided resource group name '{name}' is invalid: resource group names allow up to 90 characters and cannot end in a period."
            ),
        ));
    }
    Ok(())
}

/// ARM's normal form of a location: `East US` → `eastus`. Empty or odd values are refused.
pub(super) fn normalize_location(location: Option<&str>) -> ArmResult<String> {
    let Some(l) = location.map(str::trim).filter(|l| !l.is_empty()) else {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "LocationRequired",
            "The location property is required for this definition.",
        ));
    };
    let norm: String = l.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    if norm.len() > 64 || !norm.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "LocationNotAvailableForResourceType",
            format!("The provided location '{l}' is not available for this resource type."),
        ));
    }
    Ok(norm)
}

#[derive(Deserialize)]
struct RgBody {
    location: Option<String>,
    tags: Option<Map<String, String>>,
}

pub(super) fn put_resource_group(call: &Call, sub: Uuid, rg: &str) -> ArmResult<Response> {
    let body: RgBody = call.parse_body()?;
    let scope = resource_group_id(sub, rg);
    let (created, rec) = call.ctx.mutate(|s| -> ArmResult<(bool, ResourceGroup)> {
        call.subscription(s, sub)?;
        call.authorize(s, &scope, RG_WRITE)?;
        validate_rg_name(rg)?;
        let location = normalize_location(body.location.as_deref())?;
        let key = ResourceGroup::key(sub, rg);
        if let Some(existing) = s.resource_groups.get_mut(&key) {
            if existing.location != location {
                return Err(ArmError::new(
                    StatusCode::CONFLICT,
                    "InvalidResourceGroupLocation",
                    format!(
                        "Invalid resource group location '{location}'. The Resource group already exists in location '{}'.",
                        existing.location
                    ),
                ));
            }
            existing.tags = body.tags.unwrap_or_default();
            return Ok((false, existing.clone()));
        }
        let rec = ResourceGroup {
            subscription_id: sub,
            name: rg.to_string(),
            location,
            tags: body.tags.unwrap_or_default(),
        };
        s.resource_groups.insert(key, rec.clone());
        Ok((true, rec))
    })?;
    Ok(json(if created { StatusCode::CREATED } else { StatusCode::OK }, rg_json(&rec)))
}

/// `PATCH`: only tags change on a resource group.
pub(super) fn patch_resource_group(call: &Call, sub: Uuid, rg: &str) -> ArmResult<Response> {
    let body: RgBody = call.parse_body()?;
    let scope = resource_group_id(sub, rg);
    let rec = call.ctx.mutate(|s| -> ArmResult<ResourceGroup> {
        call.subscription(s, sub)?;
        call.authorize(s, &scope, RG_WRITE)?;
        let existing = s.resource_groups.get_mut(&ResourceGroup::key(sub, rg)).ok_or_else(|| rg_not_found(rg))?;
        if let Some(tags) = body.tags {
            existing.tags = tags;
        }
        Ok(existing.clone())
    })?;
    Ok(json(StatusCode::OK, rg_json(&rec)))
}

pub(super) fn get_resource_group(call: &Call, sub: Uuid, rg: &str) -> ArmResult<Response> {
    call.ctx.read(|s| {
        call.subscription(s, sub)?;
        call.authorize(s, &resource_group_id(sub, rg), RG_READ)?;
        let rec = s.resource_groups.get(&ResourceGroup::key(sub, rg)).ok_or_else(|| rg_not_found(rg))?;
        Ok(if call.method == axum::http::Method::HEAD {
            empty(StatusCode::NO_CONTENT)
        } else {
            json(StatusCode::OK, rg_json(rec))
        })
    })
}

/// `DELETE`: like Azure, deleting a group deletes what is in it (here: vaults with their keys)
/// and the role assignments at and below it.
pub(super) fn delete_resource_group(call: &Call, sub: Uuid, rg: &str) -> ArmResult<Response> {
    let scope = resource_group_id(sub, rg);
    call.ctx.mutate(|s| -> ArmResult<()> {
        call.subscription(s, sub)?;
        call.authorize(s, &scope, RG_DELETE)?;
        if s.resource_groups.remove(&ResourceGroup::key(sub, rg)).is_none() {
            return Err(rg_not_found(rg));
        }
        s.vaults.retain(|_, v| !(v.subscription_id == sub && v.resource_group.eq_ignore_ascii_case(rg)));
        s.role_assignments.retain(|_, ra| !authz::scope_covers(&scope, &ra.scope));
        Ok(())
    })?;
    Ok(empty(StatusCode::OK))
}

/// `GET /subscriptions/{s}/resourcegroups`: the groups the caller can read.
pub(super) fn list_resource_groups(call: &Call, sub: Uuid) -> ArmResult<Response> {
    call.ctx.read(|s| {
        call.subscription(s, sub)?;
        let value: Vec<Value> = s
            .resource_groups
            .values()
            .filter(|rg| rg.subscription_id == sub)
            .filter(|rg| call.can(s, &resource_group_id(sub, &rg.name), RG_READ))
            .map(rg_json)
            .collect();
        Ok(json(StatusCode::OK, json!({"value": value})))
    })
}

/// What a generic resource list's `$filter` asks for: `eq` terms on `resourceType`, `name`,
/// `resourceGroup` joined by `and`, each compared without regard to case (ARM
/// names are case-insensitive). `az keyvault show --name KV` without `--resource-group` sends
/// `resourceType eq 'Microsoft.KeyVault/vaults' and name eq 'KV'` to find the vault's group.
#[derive(Debug, Default, PartialEq)]
struct ResourceFilter {
    resource_type: Option<String>,
    name: Option<String>,
    resource_group: Option<String>,
}

impl ResourceFilter {
    fn parse(filter: Option<&str>) -> ArmResult<Self> {
        let mut out = Self::default();
        let Some(f) = filter else { return Ok(out) };
        let unsupported = || {
            ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidFilterInQueryString",
                format!(
                    "The $filter '{f}' is not supported. The atrest emulator supports \"resourceType eq '<type>'\", \"name eq '<name>'\" and \"resourceGroup eq '<group>'\", each at most once, joined by 'and'."
                ),
            )
        };
        for term in and_terms(f) {
            let (slot, value) = if let Some(v) = eq_term(term, "resourceType") {
                (&mut out.resource_type, v)
            } else if let Some(v) = eq_term(term, "name") {
                (&mut out.name, v)
            } else if let Some(v) = eq_term(term, "resourceGroup") {
                (&mut out.resource_group, v)
            } else {
                return Err(unsupported());
            };
            if slot.replace(value.to_ascii_lowercase()).is_some() {
                return Err(unsupported());
            }
        }
        Ok(out)
    }

    fn matches_vault(&self, v: &crate::state::Vault) -> bool {
        self.resource_type.as_deref().is_none_or(|t| t == "microsoft.keyvault/vaults")
            && self.name.as_deref().is_none_or(|n| v.name.eq_ignore_ascii_case(n))
            && self.resource_group.as_deref().is_none_or(|g| v.resource_group.eq_ignore_ascii_case(g))
    }
}

/// `GET /subscriptions/{s}[/resourceGroups/{rg}]/resources`: generic resources the caller can read.
pub(super) fn list_resources(call: &Call, sub: Uuid, rg: Option<&str>) -> ArmResult<Response> {
    let filter = ResourceFilter::parse(call.filter())?;
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
            .filter(|v| filter.matches_vault(v))
            .filter(|v| rg.is_none_or(|rg| v.resource_group.eq_ignore_ascii_case(rg)))
            .filter(|v| call.can(s, &vault_id(sub, &v.resource_group, &v.name), VAULT_READ))
            .map(|v| {
                json!({
                    "id": v.resource_id(),
                    "name": v.name,
                    "type": "Microsoft.KeyVault/vaults",
                    "location": v.location,
                    "tags": v.tags,
                })
            })
            .collect();
        Ok(json(StatusCode::OK, json!({"value": value})))
    })
}
