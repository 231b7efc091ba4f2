//! ARM request paths: which resource or collection a path names, and the RBAC scope it sits in.
//!
//! ARM treats the fixed segments of a path (`resourceGroups`, provider namespaces, resource
//! types) case-insensitively and keeps the caller's spelling of names. Scopes nest
//! (subscription → resource group → vault → key) and any of them can carry the
//! `providers/Microsoft.Authorization/...` extension, so a path is parsed segment by segment
//! instead of being matched against a fixed route table.

use axum::http::StatusCode;
use uuid::Uuid;

use super::ArmError;

/// An RBAC scope named in a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `/`, the tenant root: only built-in role definitions are served there.
    Root,
    Subscription(Uuid),
    ResourceGroup {
        sub: Uuid,
        rg: String,
    },
    Vault {
        sub: Uuid,
        rg: String,
        vault: String,
    },
    Key {
        sub: Uuid,
        rg: String,
        vault: String,
        key: String,
    },
}

impl Scope {
    pub fn subscription(&self) -> Option<Uuid> {
        match self {
            Scope::Root => None,
            Scope::Subscription(s)
            | Scope::ResourceGroup { sub: s, .. }
            | Scope::Vault { sub: s, .. }
            | Scope::Key { sub: s, .. } => Some(*s),
        }
    }

    /// The scope as an ARM id with canonical segment names and the caller's names
    /// (`""` for the root, so `{path}/providers/...` stays a valid id).
    pub fn path(&self) -> String {
        match self {
            Scope::Root => String::new(),
            Scope::Subscription(s) => format!("/subscriptions/{s}"),
            Scope::ResourceGroup { sub, rg } => resource_group_id(*sub, rg),
            Scope::Vault { sub, rg, vault } => vault_id(*sub, rg, vault),
            Scope::Key { sub, rg, vault, key } => format!("{}/keys/{key}", vault_id(*sub, rg, vault)),
        }
    }
}

pub fn resource_group_id(sub: Uuid, rg: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{rg}")
}

pub fn vault_id(sub: Uuid, rg: &str, vault: &str) -> String {
    format!("{}/providers/Microsoft.KeyVault/vaults/{vault}", resource_group_id(sub, rg))
}

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArmRoute {
    MetadataEndpoints,
    Subscriptions,
    Tenants,
    Subscription(Uuid),
    ResourceGroups(Uuid),
    ResourceGroup {
        sub: Uuid,
        rg: String,
    },
    /// `/subscriptions/{s}[/resourceGroups/{rg}]/resources`
    Resources {
        sub: Uuid,
        rg: Option<String>,
    },
    /// Vault list in a subscription or a resource group.
    Vaults {
        sub: Uuid,
        rg: Option<String>,
    },
    Vault {
        sub: Uuid,
        rg: String,
        vault: String,
    },
    /// `.../vaults/{v}/accessPolicies/{add|replace|remove}`
    AccessPolicies {
        sub: Uuid,
        rg: String,
        vault: String,
        operation: String,
    },
    /// `.../vaults/{v}/privateEndpointConnections[/{name}]`
    PrivateEndpointConnections {
        sub: Uuid,
        rg: String,
        vault: String,
        name: Option<String>,
    },
    RoleDefinitions(Scope),
    RoleDefinition(Scope, String),
    RoleAssignments(Scope),
    RoleAssignment(Scope, String),
}

impl ArmRoute {
    /// The subscription the path is under, if any (used to name the tenant in a 401 challenge).
    pub fn subscription(&self) -> Option<Uuid> {
        match self {
            ArmRoute::MetadataEndpoints | ArmRoute::Subscriptions | ArmRoute::Tenants => None,
            ArmRoute::Subscription(s) | ArmRoute::ResourceGroups(s) => Some(*s),
            ArmRoute::ResourceGroup { sub, .. }
            | ArmRoute::Resources { sub, .. }
            | ArmRoute::Vaults { sub, .. }
            | ArmRoute::Vault { sub, .. }
            | ArmRoute::AccessPolicies { sub, .. }
            | ArmRoute::PrivateEndpointConnections { sub, .. } => Some(*sub),
            ArmRoute::RoleDefinitions(s)
            | ArmRoute::RoleDefinition(s, _)
            | ArmRoute::RoleAssignments(s)
            | ArmRoute::RoleAssignment(s, _) => s.subscription(),
        }
    }
}

fn is(seg: &str, name: &str) -> bool {
    seg.eq_ignore_ascii_case(name)
}

fn no_route(path: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("The path '{path}' does not name an ARM resource or collection that the atrest emulator serves."),
    )
}

fn unknown_keyvault_type(ty: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "InvalidResourceType",
        format!(
            "The resource type '{ty}' could not be found in the namespace 'Microsoft.KeyVault'. The atrest emulator serves 'vaults', 'vaults/accessPolicies' and 'vaults/privateEndpointConnections'."
        ),
    )
}

/// Parse a request path (without the query).
pub fn parse(path: &str) -> Result<ArmRoute, ArmError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(first) = segs.first() else {
        return Err(no_route(path));
    };
    if is(first, "metadata") && segs.len() == 2 && is(segs[1], "endpoints") {
        return Ok(ArmRoute::MetadataEndpoints);
    }
    if is(first, "tenants") && segs.len() == 1 {
        return Ok(ArmRoute::Tenants);
    }
    if is(first, "providers") {
        return provider(path, Scope::Root, &segs[1..]);
    }
    if !is(first, "subscriptions") {
        return Err(no_route(path));
    }
    let Some(sub) = segs.get(1) else {
        return Ok(ArmRoute::Subscriptions);
    };
    let sub: Uuid = sub.parse().map_err(|_| {
        ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidSubscriptionId",
            format!("The provided subscription identifier '{sub}' is malformed or invalid."),
        )
    })?;
    let rest = &segs[2..];
    let Some(next) = rest.first() else {
        return Ok(ArmRoute::Subscription(sub));
    };
    if is(next, "resources") && rest.len() == 1 {
        return Ok(ArmRoute::Resources { sub, rg: None });
    }
    if is(next, "providers") {
        return provider(path, Scope::Subscription(sub), &rest[1..]);
    }
    if !is(next, "resourceGroups") {
        return Err(no_route(path));
    }
    let Some(rg) = rest.get(1) else {
        return Ok(ArmRoute::ResourceGroups(sub));
    };
    let rg = rg.to_string();
    let rest = &rest[2..];
    match rest.first() {
        None => Ok(ArmRoute::ResourceGroup { sub, rg }),
        Some(s) if is(s, "resources") && rest.len() == 1 => Ok(ArmRoute::Resources { sub, rg: Some(rg) }),
        Some(s) if is(s, "providers") => provider(path, Scope::ResourceGroup { sub, rg }, &rest[1..]),
        Some(_) => Err(no_route(path)),
    }
}

/// The part after `{scope}/providers/`.
fn provider(path: &str, scope: Scope, segs: &[&str]) -> Result<ArmRoute, ArmError> {
    let Some(namespace) = segs.first() else {
        return Err(no_route(path));
    };
    let rest = &segs[1..];
    if is(namespace, "Microsoft.Authorization") {
        return authorization(path, scope, rest);
    }
    if !is(namespace, "Microsoft.KeyVault") {
        let ty = rest.first().copied().unwrap_or("");
        return Err(ArmError::new(
            StatusCode::NOT_FOUND,
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for type '{namespace}/{ty}'. The atrest emulator serves the namespaces 'Microsoft.Resources', 'Microsoft.KeyVault' and 'Microsoft.Authorization'."
            ),
        ));
    }
    let Some(ty) = rest.first() else {
        return Err(no_route(path));
    };
    if !is(ty, "vaults") {
        return Err(unknown_keyvault_type(ty));
    }
    match scope {
        Scope::Subscription(sub) if rest.len() == 1 => Ok(ArmRoute::Vaults { sub, rg: None }),
        Scope::ResourceGroup { sub, rg } => {
            let Some(vault) = rest.get(1) else {
                return Ok(ArmRoute::Vaults { sub, rg: Some(rg) });
            };
            let vault = vault.to_string();
            let rest = &rest[2..];
            match rest {
                [] => Ok(ArmRoute::Vault { sub, rg, vault }),
                [child, operation] if is(child, "accessPolicies") => {
                    Ok(ArmRoute::AccessPolicies { sub, rg, vault, operation: operation.to_string() })
                }
                [child] if is(child, "privateEndpointConnections") => {
                    Ok(ArmRoute::PrivateEndpointConnections { sub, rg, vault, name: None })
                }
                [child, name] if is(child, "privateEndpointConnections") => {
                    Ok(ArmRoute::PrivateEndpointConnections { sub, rg, vault, name: Some(name.to_string()) })
                }
                [p, more @ ..] if is(p, "providers") => provider(path, Scope::Vault { sub, rg, vault }, more),
                [keys, key, p, more @ ..] if is(keys, "keys") && is(p, "providers") => {
                    provider(path, Scope::Key { sub, rg, vault, key: key.to_string() }, more)
                }
                [child, ..] => Err(unknown_keyvault_type(&format!("vaults/{child}"))),
            }
        }
        // Microsoft.KeyVault under a vault or key (extension resources) or at the root.
        _ => Err(unknown_keyvault_type(&rest.join("/"))),
    }
}

/// The part after `{scope}/providers/Microsoft.Authorization/`.
fn authorization(path: &str, scope: Scope, segs: &[&str]) -> Result<ArmRoute, ArmError> {
    match segs {
        [ty] if is(ty, "roleDefinitions") => Ok(ArmRoute::RoleDefinitions(scope)),
        [ty, id] if is(ty, "roleDefinitions") => Ok(ArmRoute::RoleDefinition(scope, id.to_string())),
        [ty] if is(ty, "roleAssignments") => Ok(ArmRoute::RoleAssignments(scope)),
        [ty, name] if is(ty, "roleAssignments") => Ok(ArmRoute::RoleAssignment(scope, name.to_string())),
        [ty, ..] => Err(ArmError::new(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            format!(
                "The resource type '{ty}' could not be found in the namespace 'Microsoft.Authorization'. The atrest emulator serves 'roleDefinitions' and 'roleAssignments'."
            ),
        )),
        [] => Err(no_route(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "0b1f6471-1bf0-4dda-aec3-cb9272f09590";

    fn sub() -> Uuid {
        S.parse().unwrap()
    }

    #[test]
    fn resource_paths_are_case_insensitive_in_fixed_segments() {
        assert_eq!(
            parse(&format!("/subscriptions/{S}/resourcegroups/MyRG")).unwrap(),
            ArmRoute::ResourceGroup { sub: sub(), rg: "MyRG".into() }
        );
        assert_eq!(
            parse(&format!("/SUBSCRIPTIONS/{S}/resourceGroups/rg/providers/microsoft.keyvault/VAULTS/kv1/")).unwrap(),
            ArmRoute::Vault { sub: sub(), rg: "rg".into(), vault: "kv1".into() }
        );
        assert_eq!(
            parse(&format!(
                "/subscriptions/{S}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv/accessPolicies/add"
            ))
            .unwrap(),
            ArmRoute::AccessPolicies { sub: sub(), rg: "rg".into(), vault: "kv".into(), operation: "add".into() }
        );
        assert_eq!(
            parse(&format!("/subscriptions/{S}/providers/Microsoft.KeyVault/vaults")).unwrap(),
            ArmRoute::Vaults { sub: sub(), rg: None }
        );
    }

    #[test]
    fn authorization_extension_at_every_scope() {
        let key = format!(
            "/subscriptions/{S}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv/keys/k1/providers/Microsoft.Authorization/roleAssignments/abc"
        );
        let want = Scope::Key { sub: sub(), rg: "rg".into(), vault: "kv".into(), key: "k1".into() };
        assert_eq!(parse(&key).unwrap(), ArmRoute::RoleAssignment(want.clone(), "abc".into()));
        assert!(want.path().ends_with("/providers/Microsoft.KeyVault/vaults/kv/keys/k1"));
        assert_eq!(
            parse("/providers/Microsoft.Authorization/roleDefinitions").unwrap(),
            ArmRoute::RoleDefinitions(Scope::Root)
        );
        assert_eq!(
            parse(&format!("/subscriptions/{S}/providers/microsoft.authorization/roleassignments")).unwrap(),
            ArmRoute::RoleAssignments(Scope::Subscription(sub()))
        );
    }

    #[test]
    fn unknown_paths_are_errors_not_panics() {
        for p in [
            "/",
            "//",
            "/subscriptions/not-a-guid",
            &format!("/subscriptions/{S}/resourceGroups/rg/providers"),
            &format!("/subscriptions/{S}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/x"),
            &format!("/subscriptions/{S}/resourceGroups/rg/providers/Microsoft.KeyVault/managedHSMs/x"),
            &format!("/subscriptions/{S}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv/secrets/s"),
            &format!("/subscriptions/{S}/providers/Microsoft.Authorization/denyAssignments"),
            "/providers/Microsoft.KeyVault/vaults",
            "/nothing/here",
        ] {
            assert!(parse(p).is_err(), "{p}");
        }
    }
}
