//! The authorization engine: Azure RBAC (built-in role definitions, scope inheritance) and
//! Key Vault access policies. Both are evaluated on every request against the current state,
//! so removing a grant takes effect for tokens already issued (after the configured
//! propagation delay, see [`crate::state::RoleAssignment::in_force`]).
//!
//! Role GUIDs, actions and dataActions are Azure's built-in definitions
//! (learn.microsoft.com/azure/role-based-access-control/built-in-roles, `general.md` and
//! `security.md`; summarised in `shared/reference/azure-protocols.md` §4.2).

use serde_json::{Value, json};

use crate::state::{State, Vault};

pub struct RoleDef {
    pub guid: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub actions: &'static [&'static str],
    pub not_actions: &'static [&'static str],
    pub data_actions: &'static [&'static str],
    pub not_data_actions: &'static [&'static str],
}

const KV_MGMT_READ: &[&str] = &[
    "Microsoft.Authorization/*/read",
    "Microsoft.Insights/alertRules/*",
    "Microsoft.Resources/deployments/*",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.Support/*",
    "Microsoft.KeyVault/checkNameAvailability/read",
    "Microsoft.KeyVault/deletedVaults/read",
    "Microsoft.KeyVault/locations/*/read",
    "Microsoft.KeyVault/vaults/*/read",
    "Microsoft.KeyVault/operations/read",
];

pub const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
pub const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
pub const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
pub const KEY_VAULT_ADMINISTRATOR: &str = "00482a5a-887f-4fb3-b363-3b7fe8e74483";
pub const KEY_VAULT_CRYPTO_USER: &str = "12338af0-0e69-4776-bea7-57ae8d297424";

pub static BUILTIN_ROLES: &[RoleDef] = &[
    RoleDef {
        guid: OWNER,
        name: "Owner",
        description: "Grants full access to manage all resources, including the ability to assign roles in Azure RBAC.",
        actions: &["*"],
        not_actions: &[],
        data_actions: &[],
        not_data_actions: &[],
    },
    RoleDef {
        guid: CONTRIBUTOR,
        name: "Contributor",
        description: "Grants full access to manage all resources, but does not allow you to assign roles in Azure RBAC.",
        actions: &["*"],
        not_actions: &[
            "Microsoft.Authorization/*/Delete",
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/elevateAccess/Action",
            "Microsoft.Blueprint/blueprintAssignments/write",
            "Microsoft.Blueprint/blueprintAssignments/delete",
            "Microsoft.Compute/galleries/share/action",
            "Microsoft.Purview/consents/write",
            "Microsoft.Purview/consents/delete",
            "Microsoft.Resources/deploymentStacks/manageDenySetting/action",
            "Microsoft.Subscription/cancel/action",
            "Microsoft.Subscription/enable/action",
        ],
        data_actions: &[],
        not_data_actions: &[],
    },
    RoleDef {
        guid: READER,
        name: "Reader",
        description: "View all resources, but does not allow you to make any changes.",
        actions: &["*/read"],
        not_actions: &[],
        data_actions: &[],
        not_data_actions: &[],
    },
    RoleDef {
        guid: "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
        name: "User Access Administrator",
        description: "Lets you manage user access to Azure resources.",
        actions: &["*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"],
        not_actions: &[],
        data_actions: &[],
        not_data_actions: &[],
    },
    RoleDef {
        guid: KEY_VAULT_ADMINISTRATOR,
        name: "Key Vault Administrator",
        description: "Perform all data plane operations on a key vault and all objects in it, including certificates, keys, and secrets. Cannot manage key vault resources or manage role assignments. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        actions: KV_MGMT_READ,
        not_actions: &[],
        data_actions: &["Microsoft.KeyVault/vaults/*"],
        not_data_actions: &[],
    },
    RoleDef {
        guid: "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
        name: "Key Vault Crypto Officer",
        description: "Perform any action on the keys of a key vault, except manage permissions. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        actions: KV_MGMT_READ,
        not_actions: &[],
        data_actions: &["Microsoft.KeyVault/vaults/keys/*", "Microsoft.KeyVault/vaults/keyrotationpolicies/*"],
        not_data_actions: &[],
    },
    RoleDef {
        guid: KEY_VAULT_CRYPTO_USER,
        name: "Key Vault Crypto User",
        description: "Perform cryptographic operations using keys. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        actions: &[],
        not_actions: &[],
        data_actions: &[
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/update/action",
            "Microsoft.KeyVault/vaults/keys/backup/action",
            "Microsoft.KeyVault/vaults/keys/encrypt/action",
            "Microsoft.KeyVault/vaults/keys/decrypt/action",
            "Microsoft.KeyVault/vaults/keys/wrap/action",
            "Microsoft.KeyVault/vaults/keys/unwrap/action",
            "Microsoft.KeyVault/vaults/keys/sign/action",
            "Microsoft.KeyVault/vaults/keys/verify/action",
        ],
        not_data_actions: &[],
    },
    RoleDef {
        guid: "e147488a-f6f5-4113-8e2d-b22465e65bf6",
        name: "Key Vault Crypto Service Encryption User",
        description: "Read metadata of keys and perform wrap/unwrap operations. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        actions: &[
            "Microsoft.EventGrid/eventSubscriptions/write",
            "Microsoft.EventGrid/eventSubscriptions/read",
            "Microsoft.EventGrid/eventSubscriptions/delete",
        ],
        not_actions: &[],
        data_actions: &[
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/wrap/action",
            "Microsoft.KeyVault/vaults/keys/unwrap/action",
        ],
        not_data_actions: &[],
    },
    RoleDef {
        guid: "21090545-7ca7-4776-b22c-e363652d74d2",
        name: "Key Vault Reader",
        description: "Read metadata of key vaults and its certificates, keys, and secrets. Cannot read sensitive values such as secret contents or key material. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        actions: KV_MGMT_READ,
        not_actions: &[],
        data_actions: &["Microsoft.KeyVault/vaults/*/read", "Microsoft.KeyVault/vaults/secrets/readMetadata/action"],
        not_data_actions: &[],
    },
    RoleDef {
        guid: "f25e0fa2-a7c8-4377-a976-54943a77a395",
        name: "Key Vault Contributor",
        description: "Manage key vaults, but does not allow you to assign roles in Azure RBAC, and does not allow you to access secrets, keys, or certificates.",
        actions: &[
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
            "Microsoft.KeyVault/*",
        ],
        not_actions: &[
            "Microsoft.KeyVault/locations/deletedVaults/purge/action",
            "Microsoft.KeyVault/hsmPools/*",
            "Microsoft.KeyVault/managedHsms/*",
        ],
        data_actions: &[],
        not_data_actions: &[],
    },
    RoleDef {
        guid: "4633458b-17de-408a-b874-0445c86b69e6",
        name: "Key Vault Secrets User",
        description: "Read secret contents. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        actions: &[],
        not_actions: &[],
        data_actions: &[
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        ],
        not_data_actions: &[],
    },
    RoleDef {
        guid: "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
        name: "Key Vault Secrets Officer",
        description: "Perform any action on the secrets of a key vault, except manage permissions. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        actions: KV_MGMT_READ,
        not_actions: &[],
        data_actions: &["Microsoft.KeyVault/vaults/secrets/*"],
        not_data_actions: &[],
    },
];

pub fn role_by_guid(guid: &str) -> Option<&'static RoleDef> {
    BUILTIN_ROLES.iter().find(|r| r.guid.eq_ignore_ascii_case(guid))
}

pub fn role_by_name(name: &str) -> Option<&'static RoleDef> {
    BUILTIN_ROLES.iter().find(|r| r.name.eq_ignore_ascii_case(name))
}

/// The role GUID at the end of a `roleDefinitionId` (a full id or a bare GUID).
pub fn role_guid_of(role_definition_id: &str) -> &str {
    role_definition_id.trim_end_matches('/').rsplit('/').next().unwrap_or(role_definition_id)
}

/// ARM's JSON for a role definition, as seen from `scope` (`/subscriptions/{s}` or deeper).
pub fn role_definition_json(role: &RoleDef, subscription_id: Option<&str>) -> Value {
    let id = match subscription_id {
        Some(s) => format!("/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{}", role.guid),
        None => format!("/providers/Microsoft.Authorization/roleDefinitions/{}", role.guid),
    };
    json!({
        "id": id,
        "name": role.guid,
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {
            "roleName": role.name,
            "type": "BuiltInRole",
            "description": role.description,
            "assignableScopes": ["/"],
            "permissions": [{
                "actions": role.actions,
                "notActions": role.not_actions,
                "dataActions": role.data_actions,
                "notDataActions": role.not_data_actions,
            }],
            "createdOn": "2015-02-02T21:55:09.8806423Z",
            "updatedOn": "2024-01-01T00:00:00.0000000Z",
            "createdBy": null,
            "updatedBy": null,
        }
    })
}

/// Azure's action pattern match: case-insensitive, `*` matches any run of characters.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    // Hand-written because it is ten lines and a glob crate would treat `/` specially,
    // which Azure's action wildcards do not.
    let p = pattern.to_ascii_lowercase();
    let a = action.to_ascii_lowercase();
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == a;
    }
    let mut rest = a.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Does `role` permit `action` (a management action when `data` is false, a dataAction when true)?
pub fn role_permits(role: &RoleDef, action: &str, data: bool) -> bool {
    let (allow, deny) =
        if data { (role.data_actions, role.not_data_actions) } else { (role.actions, role.not_actions) };
    allow.iter().any(|p| action_matches(p, action)) && !deny.iter().any(|p| action_matches(p, action))
}

/// Is `ancestor` the same scope as `scope`, or above it?
pub fn scope_covers(ancestor: &str, scope: &str) -> bool {
    let a = ancestor.trim_end_matches('/').to_ascii_lowercase();
    let s = scope.trim_end_matches('/').to_ascii_lowercase();
    a.is_empty() || s == a || s.starts_with(&format!("{a}/"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacDecision {
    pub allowed: bool,
    /// The id of an assignment that granted the action.
    pub assignment: Option<String>,
}

/// Walk every role assignment in force for `principal_id` at `scope` or above it and decide
/// whether one of them grants `action`.
pub fn rbac_check(state: &State, principal_id: &str, scope: &str, action: &str, data: bool, now: i64) -> RbacDecision {
    for ra in state.role_assignments.values() {
        if !ra.principal_id.eq_ignore_ascii_case(principal_id) || !ra.in_force(now) || !scope_covers(&ra.scope, scope) {
            continue;
        }
        if let Some(role) = role_by_guid(role_guid_of(&ra.role_definition_id))
            && role_permits(role, action, data)
        {
            return RbacDecision { allowed: true, assignment: Some(ra.id()) };
        }
    }
    RbacDecision { allowed: false, assignment: None }
}

/// Does an access policy on `vault` give (tenant, object) the key permission `perm`
/// (`get`, `wrapKey`, ...)? Matching is case-insensitive, as `az` lowercases permissions.
pub fn access_policy_allows(vault: &Vault, tenant_id: &str, object_id: &str, perm: &str) -> bool {
    vault.properties.access_policies.iter().any(|p| {
        p.tenant_id.to_string().eq_ignore_ascii_case(tenant_id)
            && p.object_id.eq_ignore_ascii_case(object_id)
            && p.application_id.is_none()
            && p.permissions.keys.iter().any(|k| k.eq_ignore_ascii_case(perm) || k.eq_ignore_ascii_case("all"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(action_matches("*/read", "Microsoft.KeyVault/vaults/read"));
        assert!(!action_matches("*/read", "Microsoft.KeyVault/vaults/write"));
        assert!(action_matches("Microsoft.KeyVault/vaults/*", "Microsoft.KeyVault/vaults/keys/unwrap/action"));
        assert!(action_matches("Microsoft.Authorization/*/Write", "microsoft.authorization/roleAssignments/write"));
        assert!(action_matches("Microsoft.KeyVault/vaults/*/read", "Microsoft.KeyVault/vaults/keys/read"));
        assert!(!action_matches("Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keys/readx"));
    }

    #[test]
    fn builtin_role_semantics() {
        let reader = role_by_name("reader").unwrap();
        assert!(role_permits(reader, "Microsoft.KeyVault/vaults/read", false));
        assert!(!role_permits(reader, "Microsoft.KeyVault/vaults/keys/read", true));
        let contributor = role_by_guid(CONTRIBUTOR).unwrap();
        assert!(role_permits(contributor, "Microsoft.KeyVault/vaults/write", false));
        assert!(!role_permits(contributor, "Microsoft.Authorization/roleAssignments/write", false));
        let user = role_by_guid(KEY_VAULT_CRYPTO_USER).unwrap();
        assert!(role_permits(user, "Microsoft.KeyVault/vaults/keys/unwrap/action", true));
        assert!(!role_permits(user, "Microsoft.KeyVault/vaults/keys/create/action", true));
        let reader_kv = role_by_name("Key Vault Reader").unwrap();
        assert!(!role_permits(reader_kv, "Microsoft.KeyVault/vaults/keys/unwrap/action", true));
    }

    #[test]
    fn scopes_inherit_downward_only() {
        let v = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v";
        assert!(scope_covers("/subscriptions/s", &format!("{v}/keys/k")));
        assert!(scope_covers("/subscriptions/S/resourcegroups/RG", v));
        assert!(!scope_covers(&format!("{v}/keys/k"), v));
        assert!(!scope_covers("/subscriptions/s/resourceGroups/rg2", v));
        assert!(!scope_covers("/subscriptions/s/resourceGroups/r", v));
    }
}
