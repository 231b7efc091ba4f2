//! The request log: how many requests each Azure surface received, by operation and by what
//! the operation was for (the tenant and scope of a token, the vault of a key operation). It is
//! what benchmarks and tests count Azure calls with (`GET /_emulator/requests`), so a figure such
//! as "one decrypt per node per check" is read from what the emulator saw, not from the caller's
//! own bookkeeping. Runtime only; the admin API's own requests are not counted.

use std::collections::HashMap;

use axum::http::Method;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::server::Route;

/// What one counted request was.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RequestKey {
    /// `entra`, `graph`, `arm` or `keyvault`.
    pub service: &'static str,
    /// `token`, `encrypt`, `decrypt`, `get-key`, ... (Key Vault and Entra), or `METHOD type` for
    /// ARM (`DELETE Microsoft.Authorization/roleAssignments`) and Graph (`GET servicePrincipals`).
    pub operation: String,
    /// Entra: the tenant in the token path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Entra: the `scope` (v2) or `resource` (v1) asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Entra: the `client_id` sent, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Key Vault: the vault (lowercase).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    count: u64,
    /// Answered with a status of 400 or more, or with no answer (reset, blackhole).
    errors: u64,
}

struct Log {
    since: OffsetDateTime,
    counts: HashMap<RequestKey, Counts>,
}

/// The emulator's request counters.
pub struct RequestLog {
    inner: Mutex<Log>,
}

impl Default for RequestLog {
    fn default() -> Self {
        Self { inner: Mutex::new(Log { since: OffsetDateTime::now_utc(), counts: HashMap::new() }) }
    }
}

impl RequestLog {
    /// Count one request; `ok` is false when it was answered with 400 or more, or not at all.
    pub fn record(&self, key: RequestKey, ok: bool) {
        let mut log = self.inner.lock();
        let c = log.counts.entry(key).or_default();
        c.count += 1;
        if !ok {
            c.errors += 1;
        }
    }

    /// The counts as the admin API shows them: `{"since", "total", "value": [...]}`, sorted.
    pub fn to_json(&self) -> Value {
        let log = self.inner.lock();
        let mut rows: Vec<(&RequestKey, &Counts)> = log.counts.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let total: u64 = rows.iter().map(|(_, c)| c.count).sum();
        let value: Vec<Value> = rows
            .into_iter()
            .map(|(k, c)| {
                let mut v = serde_json::to_value(k).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("count".into(), json!(c.count));
                    o.insert("errors".into(), json!(c.errors));
                }
                v
            })
            .collect();
        json!({"since": log.since.format(&Rfc3339).unwrap_or_default(), "total": total, "value": value})
    }

    /// Forget every count; returns how many requests had been counted.
    pub fn reset(&self) -> u64 {
        let mut log = self.inner.lock();
        let total = log.counts.values().map(|c| c.count).sum();
        log.counts.clear();
        log.since = OffsetDateTime::now_utc();
        total
    }
}

/// The key of a request, before its body is read (`None`: not counted, i.e. the admin API).
pub(crate) fn classify(route: &Route, method: &Method, path: &str) -> Option<RequestKey> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let key = |service, operation: String| RequestKey {
        service,
        operation,
        tenant: None,
        scope: None,
        client_id: None,
        vault: None,
    };
    match route {
        Route::Admin => None,
        Route::Login => {
            if segs.last() == Some(&"token") && segs.len() >= 3 {
                Some(RequestKey { tenant: Some(segs[0].to_ascii_lowercase()), ..key("entra", "token".into()) })
            } else {
                Some(key("entra", format!("{method} {}", segs.get(1..).map(|s| s.join("/")).unwrap_or_default())))
            }
        }
        Route::Graph => Some(key("graph", format!("{method} {}", segs.get(1).copied().unwrap_or("")))),
        Route::Arm => Some(key("arm", format!("{method} {}", arm_type(&segs)))),
        Route::Vault(v) => {
            Some(RequestKey { vault: Some(v.clone()), ..key("keyvault", vault_operation(method, &segs)) })
        }
    }
}

/// For a token request, the scope (or v1 `resource`) and client id from the form body.
pub(crate) fn fill_token_fields(key: &mut RequestKey, body: &[u8]) {
    if key.service != "entra" || key.operation != "token" {
        return;
    }
    let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) else {
        return;
    };
    for (k, v) in pairs {
        match k.as_str() {
            "scope" | "resource" => key.scope = Some(v),
            "client_id" => key.client_id = Some(v.to_ascii_lowercase()),
            _ => {}
        }
    }
}

/// The ARM resource type a path addresses: `Microsoft.KeyVault/vaults`,
/// `Microsoft.Authorization/roleAssignments`, `resourceGroups`, `subscriptions`, ...
fn arm_type(segs: &[&str]) -> String {
    if let Some(p) = segs.iter().rposition(|s| s.eq_ignore_ascii_case("providers"))
        && let Some(ns) = segs.get(p + 1)
    {
        // After the namespace, types and names alternate: type/name/subtype/name...
        let types: Vec<&str> = segs[p + 2..].iter().step_by(2).copied().collect();
        return if types.is_empty() { ns.to_string() } else { format!("{ns}/{}", types.join("/")) };
    }
    match segs {
        [] => String::new(),
        [first] => first.to_string(),
        [_, _, t, ..] => t.to_string(),
        [first, _] => first.to_string(),
    }
}

/// A Key Vault operation's name from its method and path.
fn vault_operation(method: &Method, segs: &[&str]) -> String {
    let lower = |s: &str| s.to_ascii_lowercase();
    match (method, segs) {
        (&Method::POST, ["keys", _, _, op]) => lower(op),
        (&Method::POST, ["keys", _, op]) => lower(op),
        (&Method::GET, ["keys"]) => "list-keys".into(),
        (&Method::GET, ["keys", _, "versions"]) => "list-key-versions".into(),
        (&Method::GET, ["keys", _, "rotationpolicy"]) => "get-rotation-policy".into(),
        (&Method::GET, ["keys", _] | ["keys", _, _]) => "get-key".into(),
        (&Method::PATCH, ["keys", ..]) => "update-key".into(),
        (&Method::PUT, ["keys", _]) => "import-key".into(),
        (&Method::DELETE, ["keys", _]) => "delete-key".into(),
        _ => format!("{method} {}", segs.first().copied().unwrap_or("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_named_from_the_path() {
        let kv = |m: Method, p: &str| classify(&Route::Vault("v".into()), &m, p).unwrap().operation;
        assert_eq!(kv(Method::POST, "/keys/cmk/0123abcd/decrypt"), "decrypt");
        assert_eq!(kv(Method::POST, "/keys/cmk/0123abcd/encrypt"), "encrypt");
        assert_eq!(kv(Method::POST, "/keys/cmk/create"), "create");
        assert_eq!(kv(Method::GET, "/keys/cmk"), "get-key");
        assert_eq!(kv(Method::GET, "/keys/cmk/0123abcd"), "get-key");
        assert_eq!(kv(Method::GET, "/keys/cmk/versions"), "list-key-versions");
        assert_eq!(kv(Method::GET, "/keys"), "list-keys");
        let arm = |m: Method, p: &str| classify(&Route::Arm, &m, p).unwrap().operation;
        assert_eq!(
            arm(
                Method::DELETE,
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v/providers/Microsoft.Authorization/roleAssignments/x"
            ),
            "DELETE Microsoft.Authorization/roleAssignments"
        );
        assert_eq!(
            arm(Method::GET, "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v"),
            "GET Microsoft.KeyVault/vaults"
        );
        assert_eq!(arm(Method::PUT, "/subscriptions/s/resourcegroups/rg"), "PUT resourcegroups");
        let mut t = classify(&Route::Login, &Method::POST, "/TENANT/oauth2/v2.0/token").unwrap();
        assert_eq!((t.operation.as_str(), t.tenant.as_deref()), ("token", Some("tenant")));
        fill_token_fields(
            &mut t,
            b"grant_type=client_credentials&client_id=ABC&scope=https%3A%2F%2Fvault.azure.net%2F.default",
        );
        assert_eq!(t.scope.as_deref(), Some("https://vault.azure.net/.default"));
        assert_eq!(t.client_id.as_deref(), Some("abc"));
        assert!(classify(&Route::Admin, &Method::GET, "/_emulator/requests").is_none());
    }
}
