//! `Microsoft.Authorization`: built-in role definitions and role assignments (api-version
//! 2022-04-01 shapes) at subscription, resource group, vault and key scope.
//!
//! Role assignments honour the RBAC propagation delay (`settings.rbac_propagation_delay_secs`):
//! a new assignment is visible in ARM at once but grants nothing until `effective_from`; a
//! deleted one disappears from ARM at once but keeps granting until `revoked_at`. With no delay
//! a deletion removes the record outright.

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::filter::{and_terms, eq_term};
use super::path::Scope;
use super::resources::rg_not_found;
use super::vaults::{find_vault, vault_not_found};
use super::{ArmError, ArmResult, Call, arm_time, empty, json};
use crate::authz::{self, BUILTIN_ROLES, RoleDef};
use crate::state::{ResourceGroup, RoleAssignment, State};

const DEFINITIONS_READ: &str = "Microsoft.Authorization/roleDefinitions/read";
const ASSIGNMENTS_READ: &str = "Microsoft.Authorization/roleAssignments/read";
const ASSIGNMENTS_WRITE: &str = "Microsoft.Authorization/roleAssignments/write";
const ASSIGNMENTS_DELETE: &str = "Microsoft.Authorization/roleAssignments/delete";

const PRINCIPAL_TYPES: &[&str] = &["User", "Group", "ServicePrincipal", "ForeignGroup", "Device"];

/// The scope's ARM id with the stored spelling of its resources' names, after checking they
/// exist: 404 `ResourceGroupNotFound` / `ResourceNotFound` otherwise.
fn resolve_scope(state: &State, call: &Call, scope: &Scope) -> ArmResult<String> {
    match scope {
        Scope::Root => Ok(String::new()),
        Scope::Subscription(sub) => Ok(format!("/subscriptions/{sub}")),
        Scope::ResourceGroup { sub, rg } => state
            .resource_groups
            .get(&ResourceGroup::key(*sub, rg))
            .map(|g| super::path::resource_group_id(*sub, &g.name))
            .ok_or_else(|| rg_not_found(rg)),
        Scope::Vault { sub, rg, vault } => Ok(find_vault(state, call, *sub, rg, vault)?.resource_id()),
        Scope::Key { sub, rg, vault, key } => {
            let v = find_vault(state, call, *sub, rg, vault)?;
            let k = v
                .keys
                .iter()
                .find(|(id, k)| id.eq_ignore_ascii_case(key) || k.name.eq_ignore_ascii_case(key))
                .map(|(_, k)| k)
                .ok_or_else(|| vault_not_found(rg, &format!("{vault}/keys/{key}")))?;
            Ok(format!("{}/keys/{}", v.resource_id(), k.name))
        }
    }
}

/// The common checks for a scope: subscription and tenant, the caller's right to `action`
/// there, and that the scope exists. Returns the canonical scope id.
fn open_scope(state: &State, call: &Call, scope: &Scope, action: &str) -> ArmResult<String> {
    if let Some(sub) = scope.subscription() {
        call.subscription(state, sub)?;
    }
    call.authorize(state, &scope.path(), action)?;
    resolve_scope(state, call, scope)
}

fn unsupported_filter(filter: &str, supported: &str) -> ArmError {
    ArmError::new(
        StatusCode::BAD_REQUEST,
        "UnsupportedQuery",
        format!("The filter '{filter}' is not supported. Supported filters are {supported}."),
    )
}

fn subscription_for_definitions(scope: &Scope) -> Option<String> {
    scope.subscription().map(|s| s.to_string())
}

/// Role definitions are readable by any authenticated caller at the root, and with
/// `roleDefinitions/read` elsewhere.
fn open_definitions_scope(call: &Call, scope: &Scope) -> ArmResult<()> {
    if *scope == Scope::Root {
        return Ok(());
    }
    call.ctx.read(|s| open_scope(s, call, scope, DEFINITIONS_READ)).map(|_| ())
}

/// `GET {scope}/providers/Microsoft.Authorization/roleDefinitions[?$filter=roleName eq 'X']`.
pub(super) fn list_role_definitions(call: &Call, scope: &Scope) -> ArmResult<Response> {
    let mut name: Option<&str> = None;
    let mut builtin = true;
    if let Some(filter) = call.filter() {
        for term in and_terms(filter) {
            if let Some(n) = eq_term(term, "roleName") {
                name = Some(n);
            } else if let Some(t) = eq_term(term, "type") {
                builtin = t.eq_ignore_ascii_case("BuiltInRole");
            } else {
                return Err(unsupported_filter(filter, "\"roleName eq '{value}'\" and \"type eq 'BuiltInRole'\""));
            }
        }
    }
    open_definitions_scope(call, scope)?;
    let sub = subscription_for_definitions(scope);
    let value: Vec<Value> = BUILTIN_ROLES
        .iter()
        .filter(|_| builtin)
        .filter(|r| name.is_none_or(|n| r.name.eq_ignore_ascii_case(n)))
        .map(|r| authz::role_definition_json(r, sub.as_deref()))
        .collect();
    Ok(json(StatusCode::OK, json!({"value": value})))
}

/// `GET {scope}/providers/Microsoft.Authorization/roleDefinitions/{guid}`.
pub(super) fn get_role_definition(call: &Call, scope: &Scope, id: &str) -> ArmResult<Response> {
    open_definitions_scope(call, scope)?;
    let role = authz::role_by_guid(id).ok_or_else(|| {
        ArmError::new(
            StatusCode::NOT_FOUND,
            "RoleDefinitionDoesNotExist",
            format!("The specified role definition with ID '{id}' does not exist."),
        )
    })?;
    Ok(json(StatusCode::OK, authz::role_definition_json(role, subscription_for_definitions(scope).as_deref())))
}

/// A role assignment as ARM shows it. `createdBy` is null in the answer to the PUT that
/// created it (as in `azure-examples/arm_role_assignment_put.json`) and set afterwards.
fn assignment_json(ra: &RoleAssignment, just_created: bool) -> Value {
    json!({
        "properties": {
            "roleDefinitionId": ra.role_definition_id,
            "principalId": ra.principal_id,
            "principalType": ra.principal_type,
            "scope": ra.scope,
            "condition": ra.condition,
            "conditionVersion": ra.condition_version,
            "createdOn": arm_time(ra.created_on),
            "updatedOn": arm_time(ra.updated_on),
            "createdBy": if just_created { None } else { ra.created_by.clone() },
            "updatedBy": ra.created_by,
            "delegatedManagedIdentityResourceId": null,
            "description": ra.description,
        },
        "id": ra.id(),
        "type": "Microsoft.Authorization/roleAssignments",
        "name": ra.name,
    })
}

fn assignment_name(name: &str) -> ArmResult<Uuid> {
    name.parse::<Uuid>().map_err(|_| {
        ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRoleAssignmentId",
            format!("The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."),
        )
    })
}

fn assignment_key(scope: &str, name: Uuid) -> String {
    format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}").to_ascii_lowercase()
}

/// Deleted assignments whose propagation delay has passed no longer matter.
fn prune_revoked(state: &mut State, now: i64) {
    state.role_assignments.retain(|_, ra| ra.revoked_at.is_none_or(|t| t > now));
}

#[derive(Deserialize)]
struct AssignmentBody {
    properties: AssignmentProps,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssignmentProps {
    role_definition_id: String,
    principal_id: String,
    principal_type: Option<String>,
    description: Option<String>,
    condition: Option<String>,
}

/// The built-in role a `roleDefinitionId` names: `/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{guid}`
/// or the same without the subscription.
fn role_of(role_definition_id: &str) -> ArmResult<&'static RoleDef> {
    let segs: Vec<&str> = role_definition_id.split('/').filter(|s| !s.is_empty()).collect();
    let tail = match segs.as_slice() {
        [s, sub, rest @ ..] if s.eq_ignore_ascii_case("subscriptions") && sub.parse::<Uuid>().is_ok() => rest,
        rest => rest,
    };
    let guid = match tail {
        [p, ns, ty, guid]
            if p.eq_ignore_ascii_case("providers")
                && ns.eq_ignore_ascii_case("Microsoft.Authorization")
                && ty.eq_ignore_ascii_case("roleDefinitions")
                && role_definition_id.starts_with('/') =>
        {
            guid.parse::<Uuid>().map_err(|_| invalid_role_definition_id(role_definition_id))?
        }
        _ => return Err(invalid_role_definition_id(role_definition_id)),
    };
    authz::role_by_guid(&guid.to_string()).ok_or_else(|| {
        ArmError::new(
            StatusCode::BAD_REQUEST,
            "RoleDefinitionDoesNotExist",
            format!("The specified role definition with ID '{guid}' does not exist."),
        )
    })
}

fn invalid_role_definition_id(id: &str) -> ArmError {
    ArmError::new(
        StatusCode::BAD_REQUEST,
        "InvalidRoleDefinitionId",
        format!(
            "The role definition ID '{id}' is not valid. Use '/subscriptions/{{subscriptionId}}/providers/Microsoft.Authorization/roleDefinitions/{{roleGuid}}'."
        ),
    )
}

/// `PUT {scope}/providers/Microsoft.Authorization/roleAssignments/{guid}`.
pub(super) fn put_role_assignment(call: &Call, scope: &Scope, name: &str) -> ArmResult<Response> {
    let name = assignment_name(name)?;
    let body: AssignmentBody = call.parse_body()?;
    let p = body.properties;
    let now = call.now();
    let (created, ra) = call.ctx.mutate(|s| -> ArmResult<(bool, RoleAssignment)> {
        prune_revoked(s, now);
        let canonical_scope = open_scope(s, call, scope, ASSIGNMENTS_WRITE)?;
        let Some(sub_id) = scope.subscription() else {
            return Err(super::authorization_failed(call.oid(), ASSIGNMENTS_WRITE, "/"));
        };
        let tenant = call.subscription(s, sub_id)?.tenant_id;
        if p.condition.as_deref().is_some_and(|c| !c.trim().is_empty()) {
            // An unevaluated condition would grant more than the caller asked for.
            return Err(ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidRoleAssignmentRequest",
                "Role assignment conditions (ABAC) are not supported by the atrest emulator; assign without 'condition'.",
            ));
        }
        let role = role_of(&p.role_definition_id)?;
        let principal: Uuid = p.principal_id.trim().parse().map_err(|_| {
            ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidPrincipalId",
                format!("A valid principal ID must be provided for role assignment. '{}' is not a GUID.", p.principal_id),
            )
        })?;
        if s.service_principals.get(&principal).is_none_or(|sp| sp.tenant_id != tenant) {
            return Err(ArmError::new(
                StatusCode::BAD_REQUEST,
                "PrincipalNotFound",
                format!(
                    "Principal {} does not exist in the directory {tenant}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay. In this case, set the role assignment principalType property to a value, such as ServicePrincipal, User, or Group.  See https://aka.ms/docs-principaltype",
                    principal.simple()
                ),
            ));
        }
        if let Some(t) = p.principal_type.as_deref() {
            if !PRINCIPAL_TYPES.iter().any(|v| v.eq_ignore_ascii_case(t)) {
                return Err(ArmError::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidPrincipalType",
                    format!("The principal type '{t}' is not valid. Use one of: {}.", PRINCIPAL_TYPES.join(", ")),
                ));
            }
            if !t.eq_ignore_ascii_case("ServicePrincipal") {
                return Err(ArmError::new(
                    StatusCode::BAD_REQUEST,
                    "UnmatchedPrincipalType",
                    format!(
                        "The PrincipalId '{}' has type 'ServicePrincipal' , which is different from specified PrincipalType '{t}'.",
                        principal.simple()
                    ),
                ));
            }
        }
        let principal_id = principal.to_string();
        let role_definition_id =
            format!("/subscriptions/{sub_id}/providers/Microsoft.Authorization/roleDefinitions/{}", role.guid);
        let key = assignment_key(&canonical_scope, name);
        let same = |ra: &RoleAssignment| {
            ra.principal_id.eq_ignore_ascii_case(&principal_id)
                && authz::role_guid_of(&ra.role_definition_id).eq_ignore_ascii_case(role.guid)
                && ra.scope.eq_ignore_ascii_case(&canonical_scope)
        };
        let previous = s.role_assignments.get(&key).cloned();
        if let Some(old) = previous.as_ref().filter(|ra| ra.visible()) {
            // Re-PUT of the same assignment is idempotent; changing who or what is not.
            if !same(old) {
                return Err(ArmError::new(
                    StatusCode::BAD_REQUEST,
                    "RoleAssignmentUpdateNotPermitted",
                    "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
                ));
            }
            let mut ra = old.clone();
            ra.description = p.description;
            ra.updated_on = now;
            s.role_assignments.insert(key, ra.clone());
            return Ok((false, ra));
        }
        if s.role_assignments.iter().any(|(k, ra)| *k != key && ra.visible() && same(ra)) {
            return Err(ArmError::new(StatusCode::CONFLICT, "RoleAssignmentExists", "The role assignment already exists."));
        }
        let delay = s.settings.rbac_propagation_delay_secs.min(i64::MAX as u64) as i64;
        // Re-creating an assignment that is deleted but still propagating keeps it granting.
        let effective_from = match &previous {
            Some(old) if same(old) && old.in_force(now) => old.effective_from,
            _ => now.saturating_add(delay),
        };
        let ra = RoleAssignment {
            name: name.to_string(),
            scope: canonical_scope.clone(),
            role_definition_id,
            principal_id,
            principal_type: "ServicePrincipal".into(),
            description: p.description,
            condition: None,
            condition_version: None,
            created_on: now,
            updated_on: now,
            created_by: Some(call.oid().to_string()),
            effective_from,
            revoked_at: None,
        };
        s.role_assignments.insert(key, ra.clone());
        Ok((true, ra))
    })?;
    Ok(json(if created { StatusCode::CREATED } else { StatusCode::OK }, assignment_json(&ra, created)))
}

fn assignment_not_found(name: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "RoleAssignmentNotFound",
        format!("The role assignment '{name}' is not found."),
    )
}

pub(super) fn get_role_assignment(call: &Call, scope: &Scope, name: &str) -> ArmResult<Response> {
    let guid = assignment_name(name)?;
    call.ctx.read(|s| {
        let canonical_scope = open_scope(s, call, scope, ASSIGNMENTS_READ)?;
        let ra = s
            .role_assignments
            .get(&assignment_key(&canonical_scope, guid))
            .filter(|ra| ra.visible())
            .ok_or_else(|| assignment_not_found(name))?;
        Ok(json(StatusCode::OK, assignment_json(ra, false)))
    })
}

/// `DELETE`: 200 with the deleted assignment, 204 when there was none.
pub(super) fn delete_role_assignment(call: &Call, scope: &Scope, name: &str) -> ArmResult<Response> {
    let guid = assignment_name(name)?;
    let now = call.now();
    let deleted = call.ctx.mutate(|s| -> ArmResult<Option<RoleAssignment>> {
        prune_revoked(s, now);
        let canonical_scope = match open_scope(s, call, scope, ASSIGNMENTS_DELETE) {
            Ok(c) => c,
            // The scope is gone, and with it every assignment on it.
            Err(e) if e.status() == StatusCode::NOT_FOUND && scope.subscription().is_some() => return Ok(None),
            Err(e) => return Err(e),
        };
        let key = assignment_key(&canonical_scope, guid);
        let Some(ra) = s.role_assignments.get(&key).filter(|ra| ra.visible()).cloned() else {
            return Ok(None);
        };
        let delay = s.settings.rbac_propagation_delay_secs.min(i64::MAX as u64) as i64;
        if delay == 0 {
            s.role_assignments.remove(&key);
        } else if let Some(stored) = s.role_assignments.get_mut(&key) {
            stored.revoked_at = Some(now.saturating_add(delay));
        }
        Ok(Some(ra))
    })?;
    Ok(match deleted {
        Some(ra) => json(StatusCode::OK, assignment_json(&ra, false)),
        None => empty(StatusCode::NO_CONTENT),
    })
}

/// What a role assignment `$filter` asks for.
#[derive(Debug, Default, PartialEq)]
struct AssignmentFilter {
    /// Only assignments at or above the scope (otherwise also below it).
    at_scope: bool,
    principal: Option<String>,
}

fn parse_assignment_filter(filter: Option<&str>) -> ArmResult<AssignmentFilter> {
    let mut out = AssignmentFilter::default();
    let Some(filter) = filter else { return Ok(out) };
    let unsupported = || {
        unsupported_filter(
            filter,
            "'atScope()', \"principalId eq '{value}'\", \"assignedTo('{value}')\" and their combinations with 'and'",
        )
    };
    for term in and_terms(filter) {
        let principal = if term.eq_ignore_ascii_case("atScope()") {
            out.at_scope = true;
            continue;
        } else if let Some(p) = eq_term(term, "principalId") {
            p
        } else if let Some(p) = term
            .get(..12)
            .filter(|head| head.eq_ignore_ascii_case("assignedTo('"))
            .and_then(|_| term.get(12..))
            .and_then(|rest| rest.strip_suffix("')"))
        {
            p
        } else {
            return Err(unsupported());
        };
        // Groups are not modelled, so assignedTo() is principalId eq.
        if out.principal.as_deref().is_some_and(|p| !p.eq_ignore_ascii_case(principal)) {
            return Err(unsupported());
        }
        out.principal = Some(principal.to_string());
    }
    Ok(out)
}

/// `GET {scope}/providers/Microsoft.Authorization/roleAssignments[?$filter=...]`: assignments
/// at, above and below the scope (`atScope()`: at and above only).
pub(super) fn list_role_assignments(call: &Call, scope: &Scope) -> ArmResult<Response> {
    let filter = parse_assignment_filter(call.filter())?;
    call.ctx.read(|s| {
        let canonical_scope = open_scope(s, call, scope, ASSIGNMENTS_READ)?;
        let value: Vec<Value> = s
            .role_assignments
            .values()
            .filter(|ra| ra.visible())
            .filter(|ra| {
                authz::scope_covers(&ra.scope, &canonical_scope)
                    || (!filter.at_scope && authz::scope_covers(&canonical_scope, &ra.scope))
            })
            .filter(|ra| filter.principal.as_deref().is_none_or(|p| ra.principal_id.eq_ignore_ascii_case(p)))
            .map(|ra| assignment_json(ra, false))
            .collect();
        Ok(json(StatusCode::OK, json!({"value": value})))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_filters() {
        let p = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
        assert_eq!(parse_assignment_filter(None).ok(), Some(AssignmentFilter::default()));
        assert_eq!(
            parse_assignment_filter(Some("atScope()")).ok(),
            Some(AssignmentFilter { at_scope: true, principal: None })
        );
        let both = AssignmentFilter { at_scope: true, principal: Some(p.into()) };
        assert_eq!(parse_assignment_filter(Some(&format!("principalId eq '{p}' and atScope()"))).ok(), Some(both));
        assert_eq!(
            parse_assignment_filter(Some(&format!("atScope() AND assignedTo('{p}')"))).ok().and_then(|f| f.principal),
            Some(p.to_string())
        );
        for bad in ["roleName eq 'Reader'", "principalId eq x", "atScope", "principalId eq 'a' and principalId eq 'b'"]
        {
            assert!(parse_assignment_filter(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn role_definition_ids() {
        let g = authz::KEY_VAULT_CRYPTO_USER;
        assert!(
            role_of(&format!("/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{g}", Uuid::nil()))
                .is_ok()
        );
        assert!(role_of(&format!("/providers/microsoft.authorization/roledefinitions/{g}")).is_ok());
        assert_eq!(role_of(g).err().map(|e| e.status()), Some(StatusCode::BAD_REQUEST));
        let unknown = format!("/providers/Microsoft.Authorization/roleDefinitions/{}", Uuid::nil());
        assert!(role_of(&unknown).is_err());
    }
}
