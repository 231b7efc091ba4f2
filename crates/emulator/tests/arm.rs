//! The ARM surface over real TLS, driven the way azure-cli drives Azure: role definition
//! lookup by name, role assignment create/list/delete with az's filters, vault create with RBAC
//! or access policies, `az keyvault set-policy`'s GET-then-full-PUT, the incremental access
//! policy updates, ARM's own RBAC enforcement, the propagation delay, restart, and bad input.

mod support;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use atrest_domain::AzureEnvironment;
use atrest_emulator::authz;
use atrest_emulator::state::{Key, ServicePrincipal};
use support::TestEmu;

const ARM: &str = "https://management.azure.com";
const ARM_AUD: &str = "https://management.azure.com/";
const KV_API: &str = "api-version=2023-07-01";
const AUTHZ_API: &str = "api-version=2022-04-01";
const READER: &str = authz::READER;
const CRYPTO_USER: &str = authz::KEY_VAULT_CRYPTO_USER;
const CONTRIBUTOR: &str = authz::CONTRIBUTOR;
const WRAP: &str = "Microsoft.KeyVault/vaults/keys/wrap/action";

struct Reply {
    status: StatusCode,
    body: Value,
    headers: HeaderMap,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

async fn send(t: &TestEmu, method: Method, url: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Reply {
    let mut req = t.http.request(method, url);
    if let Some(tok) = token {
        req = req.bearer_auth(tok);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let r = req.send().await.expect("request reaches the emulator");
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap();
    Reply { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), headers }
}

/// A call to `https://management.azure.com{path}` (`path` carries the query).
async fn arm(t: &TestEmu, method: Method, path: &str, token: &str, body: Option<Value>) -> Reply {
    send(t, method, &format!("{ARM}{path}"), Some(token), body.map(|b| serde_json::to_vec(&b).unwrap())).await
}

fn q(path: &str, api: &str) -> String {
    format!("{path}{}{api}", if path.contains('?') { "&" } else { "?" })
}

/// Add a service principal in `tenant` directly to the state (no Graph needed here).
fn add_sp(t: &TestEmu, tenant: &str) -> String {
    let tenant: Uuid = tenant.parse().unwrap();
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<String> {
            let sp = ServicePrincipal {
                object_id: Uuid::new_v4(),
                tenant_id: tenant,
                app_id: Uuid::new_v4(),
                display_name: "test sp".into(),
                account_enabled: true,
                directory_admin: false,
                created: 0,
            };
            let id = sp.object_id.to_string();
            s.service_principals.insert(sp.object_id, sp);
            Ok(id)
        })
        .unwrap()
}

/// The state as JSON, without the write counter: equal fingerprints mean nothing changed.
fn fingerprint(t: &TestEmu) -> Value {
    let mut s = (*t.emu.ctx().snapshot()).clone();
    s.generation = 0;
    serde_json::to_value(&s).unwrap()
}

fn sub(t: &TestEmu) -> String {
    t.bootstrap().subscription_id.clone()
}

fn tenant(t: &TestEmu) -> String {
    t.bootstrap().tenant_id.clone()
}

fn vault_path(t: &TestEmu, rg: &str, vault: &str) -> String {
    format!("/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{vault}", sub(t))
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &Uuid::new_v4().simple().to_string()[..8])
}

async fn create_rg(t: &TestEmu, token: &str, rg: &str) {
    let r = arm(
        t,
        Method::PUT,
        &format!("/subscriptions/{}/resourcegroups/{rg}?api-version=2022-09-01", sub(t)),
        token,
        Some(json!({"location": "eastus"})),
    )
    .await;
    assert!(r.status == StatusCode::CREATED || r.status == StatusCode::OK, "{:?} {}", r.status, r.body);
}

fn vault_body(t: &TestEmu, rbac: bool, policies: Value) -> Value {
    json!({
        "location": "eastus",
        "properties": {
            "tenantId": tenant(t),
            "sku": {"family": "A", "name": "standard"},
            "enableRbacAuthorization": rbac,
            "accessPolicies": policies,
        }
    })
}

async fn create_vault(t: &TestEmu, token: &str, rg: &str, vault: &str, rbac: bool) -> String {
    let path = vault_path(t, rg, vault);
    let r = arm(t, Method::PUT, &q(&path, KV_API), token, Some(vault_body(t, rbac, json!([])))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    path
}

fn role_id(t: &TestEmu, guid: &str) -> String {
    format!("/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{guid}", sub(t))
}

/// `az role assignment create --assignee-object-id P --role R --scope S`: a PUT under a new GUID.
async fn assign(t: &TestEmu, token: &str, scope: &str, role: &str, principal: &str) -> (String, Reply) {
    let path = format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{}", Uuid::new_v4());
    let body = json!({"properties": {"roleDefinitionId": role_id(t, role), "principalId": principal, "principalType": "ServicePrincipal"}});
    let r = arm(t, Method::PUT, &q(&path, AUTHZ_API), token, Some(body)).await;
    (path, r)
}

fn allowed(t: &TestEmu, principal: &str, scope: &str, action: &str, data: bool) -> bool {
    let ctx = t.emu.ctx();
    ctx.read(|s| authz::rbac_check(s, principal, scope, action, data, ctx.now()).allowed)
}

fn shift_clock(t: &TestEmu, secs: i64) {
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.settings.clock_shift_secs += secs;
            Ok(())
        })
        .unwrap();
}

/// `GET /subscriptions/{s}/resources?$filter=...` as the Key Vault SDK in az sends it.
async fn list_resources(t: &TestEmu, token: &str, filter: String) -> Reply {
    let filter: String = url::form_urlencoded::byte_serialize(filter.as_bytes()).collect();
    let path = format!("/subscriptions/{}/resources?$filter={filter}&api-version=2015-11-01", sub(t));
    arm(t, Method::GET, &path, token, None).await
}

fn ids(list: &Value) -> Vec<String> {
    list["value"].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_ascii_lowercase()).collect()
}

#[tokio::test]
async fn discovery_subscriptions_tenants_and_resource_groups() {
    let t = TestEmu::start().await;
    let tok = t.bootstrap_token(ARM_AUD);
    let s = sub(&t);

    // az cloud register reads this anonymously.
    let r = send(&t, Method::GET, &format!("{ARM}/metadata/endpoints?api-version=2022-09-01"), None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["authentication"]["loginEndpoint"], "https://login.microsoftonline.com");
    assert_eq!(r.body["resourceManager"], "https://management.azure.com/");
    assert_eq!(r.body["suffixes"]["keyVaultDns"], "vault.azure.net");
    assert_eq!(r.body["microsoftGraphResourceId"], "https://graph.microsoft.com/");
    assert_eq!(r.body["name"], "AzureCloud");
    let r = send(
        &t,
        Method::GET,
        "https://management.chinacloudapi.cn/metadata/endpoints?api-version=2022-09-01",
        None,
        None,
    )
    .await;
    assert_eq!(r.body["suffixes"]["keyVaultDns"], "vault.azure.cn");
    assert_eq!(r.body["authentication"]["loginEndpoint"], "https://login.chinacloudapi.cn");
    let r = send(&t, Method::GET, &format!("{ARM}/metadata/endpoints?api-version=2019-05-01"), None, None).await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(3));

    let r = arm(&t, Method::GET, "/subscriptions?api-version=2022-12-01", &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let subs = r.body["value"].as_array().unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0]["subscriptionId"], s.as_str());
    assert_eq!(subs[0]["id"], format!("/subscriptions/{s}"));
    assert_eq!(subs[0]["tenantId"], tenant(&t).as_str());
    assert_eq!(subs[0]["state"], "Enabled");
    assert_eq!(subs[0]["authorizationSource"], "RoleBased");
    let r = arm(&t, Method::GET, &format!("/subscriptions/{s}?api-version=2022-12-01"), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = arm(&t, Method::GET, "/tenants?api-version=2022-12-01", &tok, None).await;
    assert_eq!(r.body["value"][0]["tenantId"], tenant(&t).as_str());
    assert_eq!(r.body["value"][0]["tenantCategory"], "Home");

    // Resource groups: case-insensitive segments and names, 201 then 200.
    let rg_url = format!("/subscriptions/{s}/resourcegroups/Demo-RG?api-version=2022-09-01");
    let r = arm(&t, Method::PUT, &rg_url, &tok, Some(json!({"location": "East US"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["id"], format!("/subscriptions/{s}/resourceGroups/Demo-RG"));
    assert_eq!(r.body["type"], "Microsoft.Resources/resourceGroups");
    assert_eq!(r.body["location"], "eastus");
    assert_eq!(r.body["properties"]["provisioningState"], "Succeeded");
    let r = arm(&t, Method::PUT, &rg_url, &tok, Some(json!({"location": "eastus", "tags": {"env": "test"}}))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["tags"]["env"], "test");
    let r = arm(&t, Method::PUT, &rg_url, &tok, Some(json!({"location": "westus"}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "InvalidResourceGroupLocation"));
    let r =
        arm(&t, Method::GET, &format!("/SUBSCRIPTIONS/{s}/resourceGroups/demo-rg?api-version=2022-09-01"), &tok, None)
            .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["name"], "Demo-RG");
    let r = arm(&t, Method::HEAD, &rg_url, &tok, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r =
        arm(&t, Method::HEAD, &format!("/subscriptions/{s}/resourcegroups/nope?api-version=2022-09-01"), &tok, None)
            .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r =
        arm(&t, Method::GET, &format!("/subscriptions/{s}/resourcegroups?api-version=2022-09-01"), &tok, None).await;
    assert_eq!(ids(&r.body), vec![format!("/subscriptions/{s}/resourcegroups/demo-rg")]);

    // `az keyvault show -n V` without -g finds the group through the generic resource list.
    let vault = unique("kv");
    let vid = create_vault(&t, &tok, "Demo-RG", &vault, true).await;
    let r = arm(
        &t,
        Method::GET,
        &format!("/subscriptions/{s}/resources?$filter=resourceType%20eq%20%27Microsoft.KeyVault%2Fvaults%27&api-version=2015-11-01"),
        &tok,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(ids(&r.body), vec![vid.to_ascii_lowercase()]);
    assert_eq!(r.body["value"][0]["type"], "Microsoft.KeyVault/vaults");
    // Current az narrows the list by name (`and name eq 'KV'`), with the name as the user typed
    // it: names compare without regard to case, and each item carries the vault's full id.
    let other = unique("kv");
    create_vault(&t, &tok, "Demo-RG", &other, true).await;
    let r =
        list_resources(&t, &tok, format!("NAME eq '{vault}' AND resourcetype EQ 'microsoft.keyvault/VAULTS'")).await;
    assert_eq!(ids(&r.body), vec![vid.to_ascii_lowercase()], "{}", r.body);
    let r = list_resources(
        &t,
        &tok,
        format!("resourceType eq 'Microsoft.KeyVault/vaults' and resourceGroup eq 'demo-rg' and name eq '{other}'"),
    )
    .await;
    assert_eq!(r.body["value"][0]["name"], other.as_str(), "{}", r.body);
    assert_eq!(r.body["value"].as_array().map(Vec::len), Some(1));
    let r =
        list_resources(&t, &tok, "resourceType eq 'Microsoft.KeyVault/vaults' and name eq 'nosuchvault'".into()).await;
    assert_eq!((r.status, r.body.clone()), (StatusCode::OK, json!({"value": []})));
    let r =
        list_resources(&t, &tok, format!("resourceType eq 'Microsoft.Compute/virtualMachines' and name eq '{vault}'"))
            .await;
    assert_eq!(r.body, json!({"value": []}));

    // Deleting the group deletes its vaults and the role assignments in it.
    let sp = add_sp(&t, &tenant(&t));
    let (_, r) = assign(&t, &tok, &vid, READER, &sp).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = arm(&t, Method::DELETE, &rg_url, &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = arm(&t, Method::GET, &q(&vid, KV_API), &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "ResourceGroupNotFound"));
    assert!(t.emu.ctx().read(|s| s.vaults.is_empty() && !s.role_assignments.values().any(|ra| ra.principal_id == sp)));
    let r = arm(&t, Method::DELETE, &rg_url, &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "ResourceGroupNotFound"));
}

#[tokio::test]
async fn vault_create_with_rbac_and_with_access_policies() {
    let t = TestEmu::start().await;
    let tok = t.bootstrap_token(ARM_AUD);
    create_rg(&t, &tok, "rg1").await;
    let sp = add_sp(&t, &tenant(&t));

    let rbac = unique("rbac");
    let path = vault_path(&t, "rg1", &rbac);
    let mut body = vault_body(&t, true, json!([]));
    body["location"] = json!("East US");
    body["tags"] = json!({"owner": "tests"});
    body["properties"]["networkAcls"] = json!({"defaultAction": "Allow", "bypass": "AzureServices"});
    let r = arm(&t, Method::PUT, &q(&path, KV_API), &tok, Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["id"], path.as_str());
    assert_eq!(r.body["name"], rbac.as_str());
    assert_eq!(r.body["type"], "Microsoft.KeyVault/vaults");
    assert_eq!(r.body["location"], "eastus");
    assert_eq!(r.body["tags"]["owner"], "tests");
    let p = &r.body["properties"];
    assert_eq!(p["vaultUri"], format!("https://{rbac}.vault.azure.net/"));
    assert_eq!(p["tenantId"], tenant(&t).as_str());
    assert_eq!(p["sku"], json!({"family": "A", "name": "standard"}));
    assert_eq!(p["enableRbacAuthorization"], true);
    assert_eq!(p["enableSoftDelete"], true);
    assert_eq!(p["softDeleteRetentionInDays"], 90);
    assert!(p.get("enablePurgeProtection").is_none(), "not set means omitted");
    assert_eq!(p["publicNetworkAccess"], "Enabled");
    assert_eq!(p["provisioningState"], "Succeeded");
    assert_eq!(p["networkAcls"]["defaultAction"], "Allow");

    let policies = unique("pol");
    let ppath = vault_path(&t, "rg1", &policies);
    let policy = json!([{"tenantId": tenant(&t), "objectId": sp,
        "permissions": {"keys": ["get", "wrapKey", "unwrapKey"], "secrets": [], "certificates": []}}]);
    let r = arm(&t, Method::PUT, &q(&ppath, KV_API), &tok, Some(vault_body(&t, false, policy))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = arm(&t, Method::GET, &q(&ppath, KV_API), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let ap = &r.body["properties"]["accessPolicies"][0];
    assert_eq!(ap["objectId"], sp.as_str());
    assert_eq!(ap["tenantId"], tenant(&t).as_str());
    assert_eq!(ap["permissions"]["keys"], json!(["get", "wrapKey", "unwrapKey"]));
    assert_eq!(r.body["properties"]["enableRbacAuthorization"], false);
    let v = t.emu.ctx().read(|s| s.vault(AzureEnvironment::Azure, &policies).cloned()).unwrap();
    assert!(authz::access_policy_allows(&v, &tenant(&t), &sp, "wrapkey"));
    assert!(!authz::access_policy_allows(&v, &tenant(&t), &sp, "decrypt"));

    // Lists in the subscription and in the group.
    let r = arm(
        &t,
        Method::GET,
        &format!("/subscriptions/{}/providers/Microsoft.KeyVault/vaults?{KV_API}", sub(&t)),
        &tok,
        None,
    )
    .await;
    assert_eq!(r.body["value"].as_array().map(Vec::len), Some(2), "{}", r.body);
    let r = arm(
        &t,
        Method::GET,
        &format!("/subscriptions/{}/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults?{KV_API}", sub(&t)),
        &tok,
        None,
    )
    .await;
    assert_eq!(r.body["value"].as_array().map(Vec::len), Some(2));

    // Names are global per cloud, case-insensitively.
    create_rg(&t, &tok, "rg2").await;
    let before = fingerprint(&t);
    let r = arm(
        &t,
        Method::PUT,
        &q(&vault_path(&t, "rg2", &rbac.to_uppercase()), KV_API),
        &tok,
        Some(vault_body(&t, true, json!([]))),
    )
    .await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "VaultAlreadyExists"));
    assert!(r.message().contains("is already in use"));
    assert_eq!(fingerprint(&t), before);

    // Delete: 200, then 204; the vault is gone.
    let r = arm(&t, Method::DELETE, &q(&path, KV_API), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = arm(&t, Method::DELETE, &q(&path, KV_API), &tok, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = arm(&t, Method::GET, &q(&path, KV_API), &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "ResourceNotFound"));
}

#[tokio::test]
async fn set_policy_is_get_then_full_put_of_the_vault() {
    let t = TestEmu::start().await;
    let tok = t.bootstrap_token(ARM_AUD);
    create_rg(&t, &tok, "rg").await;
    let name = unique("kv");
    let path = create_vault(&t, &tok, "rg", &name, false).await;
    let sp = add_sp(&t, &tenant(&t));

    // az keyvault set-policy --object-id SP --key-permissions get wrapkey unwrapkey
    let mut vault = arm(&t, Method::GET, &q(&path, KV_API), &tok, None).await.body;
    vault["properties"]["accessPolicies"].as_array_mut().unwrap().push(json!({
        "tenantId": tenant(&t), "objectId": sp, "applicationId": null,
        "permissions": {"keys": ["get", "wrapkey", "unwrapkey"], "secrets": null, "certificates": null, "storage": null}
    }));
    let r = arm(&t, Method::PUT, &q(&path, KV_API), &tok, Some(vault)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v = t.emu.ctx().read(|s| s.vault(AzureEnvironment::Azure, &name).cloned()).unwrap();
    assert!(authz::access_policy_allows(&v, &tenant(&t), &sp, "unwrapKey"));

    // A second set-policy edits the matching entry in place.
    let mut vault = arm(&t, Method::GET, &q(&path, KV_API), &tok, None).await.body;
    vault["properties"]["accessPolicies"][0]["permissions"]["keys"] = json!(["get"]);
    let r = arm(&t, Method::PUT, &q(&path, KV_API), &tok, Some(vault)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let got = arm(&t, Method::GET, &q(&path, KV_API), &tok, None).await.body;
    assert_eq!(got["properties"]["accessPolicies"].as_array().map(Vec::len), Some(1));
    assert_eq!(got["properties"]["accessPolicies"][0]["permissions"]["keys"], json!(["get"]));
    assert_eq!(got["properties"]["vaultUri"], format!("https://{name}.vault.azure.net/"));
}

#[tokio::test]
async fn access_policies_add_replace_remove() {
    let t = TestEmu::start().await;
    let tok = t.bootstrap_token(ARM_AUD);
    create_rg(&t, &tok, "rg").await;
    let name = unique("kv");
    let path = create_vault(&t, &tok, "rg", &name, false).await;
    let sp = add_sp(&t, &tenant(&t));
    let update = |keys: Value| json!({"properties": {"accessPolicies": [{"tenantId": tenant(&t), "objectId": sp, "permissions": {"keys": keys}}]}});
    let keys_now = |t: &TestEmu| {
        t.emu.ctx().read(|s| {
            s.vault(AzureEnvironment::Azure, &name)
                .unwrap()
                .properties
                .access_policies
                .first()
                .map(|p| p.permissions.keys.clone())
        })
    };

    let r = arm(&t, Method::PUT, &q(&format!("{path}/accessPolicies/add"), KV_API), &tok, Some(update(json!(["get"]))))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["id"], format!("{path}/accessPolicies/add"));
    assert_eq!(r.body["type"], "Microsoft.KeyVault/vaults/accessPolicies");
    assert_eq!(r.body["properties"]["accessPolicies"][0]["objectId"], sp.as_str());
    let r = arm(
        &t,
        Method::PUT,
        &q(&format!("{path}/accessPolicies/add"), KV_API),
        &tok,
        Some(update(json!(["wrapKey", "GET"]))),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(keys_now(&t), Some(vec!["get".to_string(), "wrapKey".to_string()]));
    let r = arm(
        &t,
        Method::PUT,
        &q(&format!("{path}/accessPolicies/replace"), KV_API),
        &tok,
        Some(update(json!(["unwrapKey"]))),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(keys_now(&t), Some(vec!["unwrapKey".to_string()]));

    // Invalid permission names, operations and limits change nothing.
    let before = fingerprint(&t);
    let r = arm(
        &t,
        Method::PUT,
        &q(&format!("{path}/accessPolicies/add"), KV_API),
        &tok,
        Some(update(json!(["get", "fly"]))),
    )
    .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "BadRequest"));
    assert!(r.message().contains("'fly'"), "{}", r.message());
    let r =
        arm(&t, Method::PUT, &q(&format!("{path}/accessPolicies/merge"), KV_API), &tok, Some(update(json!(["get"]))))
            .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let many: Vec<Value> = (0..1025)
        .map(|_| json!({"tenantId": tenant(&t), "objectId": Uuid::new_v4(), "permissions": {"keys": ["get"]}}))
        .collect();
    let r = arm(
        &t,
        Method::PUT,
        &q(&format!("{path}/accessPolicies/add"), KV_API),
        &tok,
        Some(json!({"properties": {"accessPolicies": many}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.message().contains("1024"));
    assert_eq!(fingerprint(&t), before);

    let r = arm(
        &t,
        Method::PUT,
        &q(&format!("{path}/accessPolicies/remove"), KV_API),
        &tok,
        Some(update(json!(["unwrapKey"]))),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(keys_now(&t), None, "an entry left without permissions is removed");
}

#[tokio::test]
async fn purge_protection_and_soft_delete_cannot_be_turned_off() {
    let t = TestEmu::start().await;
    let tok = t.bootstrap_token(ARM_AUD);
    create_rg(&t, &tok, "rg").await;
    let path = vault_path(&t, "rg", &unique("kv"));
    let mut body = vault_body(&t, true, json!([]));
    body["properties"]["enablePurgeProtection"] = json!(true);
    body["properties"]["softDeleteRetentionInDays"] = json!(7);
    let r = arm(&t, Method::PUT, &q(&path, KV_API), &tok, Some(body.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["properties"]["enablePurgeProtection"], true);
    assert_eq!(r.body["properties"]["softDeleteRetentionInDays"], 7);

    let before = fingerprint(&t);
    body["properties"]["enablePurgeProtection"] = json!(false);
    let r = arm(&t, Method::PUT, &q(&path, KV_API), &tok, Some(body)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.message(),
        "The property \"enablePurgeProtection\" cannot be set to false. Enabling the purge protection for a vault is an irreversible action."
    );
    let r =
        arm(&t, Method::PATCH, &q(&path, KV_API), &tok, Some(json!({"properties": {"enablePurgeProtection": false}})))
            .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r =
        arm(&t, Method::PATCH, &q(&path, KV_API), &tok, Some(json!({"properties": {"enableSoftDelete": false}}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("enableSoftDelete"));
    let r =
        arm(&t, Method::PATCH, &q(&path, KV_API), &tok, Some(json!({"properties": {"softDeleteRetentionInDays": 3}})))
            .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(fingerprint(&t), before);

    // PATCH merges: other properties stay as they were.
    let r = arm(
        &t,
        Method::PATCH,
        &q(&path, KV_API),
        &tok,
        Some(json!({"tags": {"a": "b"}, "properties": {"publicNetworkAccess": "disabled"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["properties"]["publicNetworkAccess"], "Disabled");
    assert_eq!(r.body["properties"]["enablePurgeProtection"], true);
    assert_eq!(r.body["properties"]["enableRbacAuthorization"], true);
    assert_eq!(r.body["tags"]["a"], "b");
}

#[tokio::test]
async fn role_definitions_by_name_guid_and_scope() {
    let t = TestEmu::start().await;
    let tok = t.bootstrap_token(ARM_AUD);
    create_rg(&t, &tok, "rg").await;
    let vid = create_vault(&t, &tok, "rg", &unique("kv"), true).await;
    let s = sub(&t);

    // az role assignment create --role "Key Vault Crypto User" --scope VAULT
    let r = arm(
        &t,
        Method::GET,
        &format!("{vid}/providers/Microsoft.Authorization/roleDefinitions?$filter=roleName%20eq%20%27Key%20Vault%20Crypto%20User%27&{AUTHZ_API}"),
        &tok,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let defs = r.body["value"].as_array().unwrap();
    assert_eq!(defs.len(), 1);
    assert_eq!(defs[0]["name"], CRYPTO_USER);
    assert_eq!(defs[0]["id"], role_id(&t, CRYPTO_USER));
    assert_eq!(defs[0]["type"], "Microsoft.Authorization/roleDefinitions");
    assert_eq!(defs[0]["properties"]["roleName"], "Key Vault Crypto User");
    assert_eq!(defs[0]["properties"]["type"], "BuiltInRole");
    assert!(defs[0]["properties"]["permissions"][0]["dataActions"].as_array().unwrap().iter().any(|a| a == WRAP));

    let r = arm(&t, Method::GET, &format!("/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions?$filter=roleName+eq+%27reader%27&{AUTHZ_API}"), &tok, None).await;
    assert_eq!(r.body["value"][0]["name"], READER);
    let r = arm(
        &t,
        Method::GET,
        &format!("/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions?{AUTHZ_API}"),
        &tok,
        None,
    )
    .await;
    let names: Vec<&str> =
        r.body["value"].as_array().unwrap().iter().filter_map(|d| d["properties"]["roleName"].as_str()).collect();
    for want in [
        "Reader",
        "Key Vault Administrator",
        "Key Vault Crypto Officer",
        "Key Vault Crypto User",
        "Key Vault Crypto Service Encryption User",
        "Key Vault Reader",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let r = arm(&t, Method::GET, &format!("/subscriptions/{s}/resourceGroups/rg/providers/Microsoft.Authorization/roleDefinitions/{CRYPTO_USER}?{AUTHZ_API}"), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["properties"]["roleName"], "Key Vault Crypto User");
    let r = arm(
        &t,
        Method::GET,
        &format!("/providers/Microsoft.Authorization/roleDefinitions/{READER}?{AUTHZ_API}"),
        &tok,
        None,
    )
    .await;
    assert_eq!(r.body["id"], format!("/providers/Microsoft.Authorization/roleDefinitions/{READER}"));
    let r = arm(
        &t,
        Method::GET,
        &format!("/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{}?{AUTHZ_API}", Uuid::new_v4()),
        &tok,
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "RoleDefinitionDoesNotExist"));
    let r = arm(
        &t,
        Method::GET,
        &format!("/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions?$filter=foo&{AUTHZ_API}"),
        &tok,
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "UnsupportedQuery"));
}

#[tokio::test]
async fn role_assignments_create_list_duplicate_delete_like_az_cli() {
    let t = TestEmu::start().await;
    let tok = t.bootstrap_token(ARM_AUD);
    let me = t.bootstrap_sp();
    let s = sub(&t);
    create_rg(&t, &tok, "rg").await;
    let vault = unique("kv");
    let vid = create_vault(&t, &tok, "rg", &vault, true).await;
    let sp = add_sp(&t, &tenant(&t));

    let (reader_path, r) = assign(&t, &tok, &vid, READER, &sp).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let name = reader_path.rsplit('/').next().unwrap();
    assert_eq!(r.body["id"], reader_path.as_str());
    assert_eq!(r.body["name"], name);
    assert_eq!(r.body["type"], "Microsoft.Authorization/roleAssignments");
    let p = &r.body["properties"];
    assert_eq!(p["roleDefinitionId"], role_id(&t, READER));
    assert_eq!(p["principalId"], sp.as_str());
    assert_eq!(p["principalType"], "ServicePrincipal");
    assert_eq!(p["scope"], vid.as_str());
    assert_eq!(p["updatedBy"], me.as_str());
    assert!(p["createdBy"].is_null());
    for k in ["condition", "conditionVersion", "delegatedManagedIdentityResourceId", "description"] {
        assert!(p.get(k).is_some_and(Value::is_null), "{k}");
    }
    let created_on = p["createdOn"].as_str().unwrap();
    assert!(created_on.len() == 28 && created_on.ends_with(".0000000Z"), "{created_on}");

    let (crypto_path, r) = assign(&t, &tok, &vid, CRYPTO_USER, &sp).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(allowed(&t, &sp, &format!("{vid}/keys/k1"), WRAP, true));

    // The same PUT again is idempotent; the same grant under another name is a conflict.
    let body = json!({"properties": {"roleDefinitionId": role_id(&t, READER), "principalId": sp}});
    let r = arm(&t, Method::PUT, &q(&reader_path, AUTHZ_API), &tok, Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let before = fingerprint(&t);
    let (_, r) = assign(&t, &tok, &vid, CRYPTO_USER, &sp).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "RoleAssignmentExists"));
    assert!(r.message().contains("role assignment already exists"));
    assert_eq!(fingerprint(&t), before);

    // az role assignment list --scope VAULT: atScope() gives the vault's and the inherited ones.
    let list = |scope: String, filter: String| {
        let t = &t;
        let tok = &tok;
        async move {
            arm(
                t,
                Method::GET,
                &format!("{scope}/providers/Microsoft.Authorization/roleAssignments?$filter={filter}&{AUTHZ_API}"),
                tok,
                None,
            )
            .await
        }
    };
    let r = list(vid.clone(), "atScope()".into()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let got = ids(&r.body);
    assert!(got.contains(&reader_path.to_ascii_lowercase()) && got.contains(&crypto_path.to_ascii_lowercase()));
    let inherited = r.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|ra| ra["properties"]["scope"] == format!("/subscriptions/{s}"))
        .count();
    assert_eq!(inherited, 2, "the bootstrap principal's Owner and Key Vault Administrator");
    // ...and atScope() at the subscription does not reach down to the vault.
    let r = list(format!("/subscriptions/{s}"), "atScope()".into()).await;
    assert!(!ids(&r.body).contains(&reader_path.to_ascii_lowercase()));
    // az role assignment list --assignee SP (no scope): principalId eq at the subscription.
    let r = list(format!("/subscriptions/{s}"), format!("principalId%20eq%20%27{sp}%27")).await;
    let mut got = ids(&r.body);
    got.sort();
    let mut want = vec![reader_path.to_ascii_lowercase(), crypto_path.to_ascii_lowercase()];
    want.sort();
    assert_eq!(got, want);
    let r = list(vid.clone(), format!("atScope()%20and%20assignedTo(%27{sp}%27)")).await;
    assert_eq!(ids(&r.body).len(), 2);
    let r = arm(
        &t,
        Method::GET,
        &format!("/subscriptions/{s}/providers/Microsoft.Authorization/roleAssignments?{AUTHZ_API}"),
        &tok,
        None,
    )
    .await;
    assert_eq!(ids(&r.body).len(), 4);
    let r = list(vid.clone(), "principalId%20eq%20%27x%27%20or%20true".into()).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "UnsupportedQuery"));

    // GET by id, DELETE with the body, then gone.
    let r = arm(&t, Method::GET, &q(&crypto_path, AUTHZ_API), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["properties"]["createdBy"], me.as_str());
    let r = arm(&t, Method::DELETE, &q(&crypto_path, AUTHZ_API), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["id"], crypto_path.as_str());
    let r = arm(&t, Method::GET, &q(&crypto_path, AUTHZ_API), &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "RoleAssignmentNotFound"));
    let r = arm(&t, Method::DELETE, &q(&crypto_path, AUTHZ_API), &tok, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(!allowed(&t, &sp, &format!("{vid}/keys/k1"), WRAP, true));

    // Key scope: the key must exist.
    let (_, r) = assign(&t, &tok, &format!("{vid}/keys/k1"), CRYPTO_USER, &sp).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "ResourceNotFound"));
    t.emu
        .ctx()
        .mutate(|st| -> anyhow::Result<()> {
            let v = st.vaults.values_mut().find(|v| v.name == vault).unwrap();
            v.keys.insert("k1".into(), Key { name: "K1".into(), versions: vec![] });
            Ok(())
        })
        .unwrap();
    let (key_path, r) = assign(&t, &tok, &format!("{vid}/keys/k1"), CRYPTO_USER, &sp).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["properties"]["scope"], format!("{vid}/keys/K1"));
    assert!(allowed(&t, &sp, &format!("{vid}/keys/k1"), WRAP, true));
    assert!(!allowed(&t, &sp, &format!("{vid}/keys/k2"), WRAP, true));
    let r = arm(&t, Method::GET, &q(&key_path, AUTHZ_API), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    // Deleting the vault takes the assignments on it along.
    let r = arm(&t, Method::DELETE, &q(&vid, KV_API), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(t.emu.ctx().read(|st| !st.role_assignments.values().any(|ra| ra.principal_id == sp)));
}

#[tokio::test]
async fn role_assignment_inputs_are_validated() {
    let t = TestEmu::start().await;
    let tok = t.bootstrap_token(ARM_AUD);
    create_rg(&t, &tok, "rg").await;
    let vid = create_vault(&t, &tok, "rg", &unique("kv"), true).await;
    let sp = add_sp(&t, &tenant(&t));
    let foreign = {
        let ctx = t.emu.ctx();
        let other = ctx
            .mutate(|s| -> anyhow::Result<_> { Ok(s.create_tenant_with_admin("Other", AzureEnvironment::Azure, 0)) })
            .unwrap();
        add_sp(&t, &other.tenant_id)
    };
    let before = fingerprint(&t);
    let put = |scope: String, body: Value| {
        let t = &t;
        let tok = &tok;
        async move {
            let path = format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{}", Uuid::new_v4());
            arm(t, Method::PUT, &q(&path, AUTHZ_API), tok, Some(body)).await
        }
    };
    let body =
        |role: String, principal: &str| json!({"properties": {"roleDefinitionId": role, "principalId": principal}});

    let r = put(vid.clone(), body(role_id(&t, &Uuid::new_v4().to_string()), &sp)).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "RoleDefinitionDoesNotExist"));
    let r = put(vid.clone(), body("Reader".into(), &sp)).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "InvalidRoleDefinitionId"));
    let missing = Uuid::new_v4().to_string();
    let r = put(vid.clone(), body(role_id(&t, READER), &missing)).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "PrincipalNotFound"));
    assert!(r.message().contains(&format!("does not exist in the directory {}", tenant(&t))), "{}", r.message());
    let r = put(vid.clone(), body(role_id(&t, READER), &foreign)).await;
    assert_eq!(r.code(), "PrincipalNotFound", "a principal of another tenant is not in this directory");
    let r = put(vid.clone(), body(role_id(&t, READER), "not-a-guid")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = put(
        vid.clone(),
        json!({"properties": {"roleDefinitionId": role_id(&t, READER), "principalId": sp, "principalType": "User"}}),
    )
    .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "UnmatchedPrincipalType"));
    let r = put(vid.clone(), json!({"properties": {"roleDefinitionId": role_id(&t, READER), "principalId": sp, "condition": "true", "conditionVersion": "2.0"}})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = put(vid.clone(), json!({"properties": {"principalId": sp}})).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "InvalidRequestContent"));
    let r = put(vault_path(&t, "rg", "nosuchvault"), body(role_id(&t, READER), &sp)).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "ResourceNotFound"));
    let r = put(format!("/subscriptions/{}/resourceGroups/nosuchrg", sub(&t)), body(role_id(&t, READER), &sp)).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "ResourceGroupNotFound"));
    let r = arm(
        &t,
        Method::PUT,
        &q(&format!("{vid}/providers/Microsoft.Authorization/roleAssignments/not-a-guid"), AUTHZ_API),
        &tok,
        Some(body(role_id(&t, READER), &sp)),
    )
    .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "InvalidRoleAssignmentId"));
    assert_eq!(fingerprint(&t), before);
}

#[tokio::test]
async fn arm_itself_is_authorized_by_rbac() {
    let t = TestEmu::start().await;
    let tok = t.bootstrap_token(ARM_AUD);
    let s = sub(&t);
    create_rg(&t, &tok, "rg").await;
    create_rg(&t, &tok, "other").await;
    let vault = unique("kv");
    let vid = create_vault(&t, &tok, "rg", &vault, true).await;
    create_vault(&t, &tok, "other", &unique("kv"), true).await;
    let (reader, contributor, nobody, target) =
        (add_sp(&t, &tenant(&t)), add_sp(&t, &tenant(&t)), add_sp(&t, &tenant(&t)), add_sp(&t, &tenant(&t)));
    assert_eq!(assign(&t, &tok, &format!("/subscriptions/{s}"), READER, &reader).await.1.status, StatusCode::CREATED);
    assert_eq!(
        assign(&t, &tok, &format!("/subscriptions/{s}/resourceGroups/rg"), CONTRIBUTOR, &contributor).await.1.status,
        StatusCode::CREATED
    );

    // Reader reads, and writes nothing.
    let rt = t.mint(&reader, ARM_AUD);
    let r = arm(&t, Method::GET, &q(&vid, KV_API), &rt, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let before = fingerprint(&t);
    let r = arm(&t, Method::PUT, &q(&vid, KV_API), &rt, Some(vault_body(&t, false, json!([])))).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "AuthorizationFailed"));
    assert_eq!(
        r.message(),
        format!(
            "The client '{reader}' with object id '{reader}' does not have authorization to perform action 'Microsoft.KeyVault/vaults/write' over scope '{vid}' or the scope is invalid. If access was recently granted, please refresh your credentials."
        )
    );
    let (_, r) = assign(&t, &rt, &vid, CRYPTO_USER, &target).await;
    assert_eq!(r.code(), "AuthorizationFailed");
    assert!(r.message().contains("'Microsoft.Authorization/roleAssignments/write'"));
    assert_eq!(fingerprint(&t), before);
    let r = arm(
        &t,
        Method::GET,
        &format!("{vid}/providers/Microsoft.Authorization/roleAssignments?$filter=atScope()&{AUTHZ_API}"),
        &rt,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // Contributor manages resources in its group but cannot grant access.
    let ct = t.mint(&contributor, ARM_AUD);
    let r = arm(&t, Method::PUT, &q(&format!("{vid}/accessPolicies/add"), KV_API), &ct, Some(json!({"properties": {"accessPolicies": [{"tenantId": tenant(&t), "objectId": target, "permissions": {"keys": ["get"]}}]}}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let (_, r) = assign(&t, &ct, &vid, CRYPTO_USER, &target).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "AuthorizationFailed"));
    let r =
        arm(&t, Method::GET, &format!("/subscriptions/{s}/providers/Microsoft.KeyVault/vaults?{KV_API}"), &ct, None)
            .await;
    assert_eq!(ids(&r.body), vec![vid.to_ascii_lowercase()], "lists show only what the caller can read");
    let r = arm(&t, Method::GET, "/subscriptions?api-version=2022-12-01", &ct, None).await;
    assert_eq!(r.body["value"].as_array().map(Vec::len), Some(1), "a role in a group makes the subscription visible");
    let r = arm(
        &t,
        Method::PUT,
        &format!("/subscriptions/{s}/resourcegroups/new?api-version=2022-09-01"),
        &ct,
        Some(json!({"location": "eastus"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "the role is on one group, not the subscription");

    // No role at all.
    let nt = t.mint(&nobody, ARM_AUD);
    let r = arm(&t, Method::GET, &q(&vid, KV_API), &nt, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "AuthorizationFailed"));
    let r = arm(&t, Method::GET, "/subscriptions?api-version=2022-12-01", &nt, None).await;
    assert_eq!(r.body["value"], json!([]));
    let r = arm(&t, Method::GET, &format!("/subscriptions/{s}?api-version=2022-12-01"), &nt, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "AuthorizationFailed"));
    let r = arm(&t, Method::GET, &format!("/subscriptions/{}?api-version=2022-12-01", Uuid::new_v4()), &nt, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "SubscriptionNotFound"));
    // Of all these calls, only the contributor's access policy change wrote anything.
    let vault_rec = t.emu.ctx().read(|st| st.vault(AzureEnvironment::Azure, &vault).cloned()).unwrap();
    assert_eq!(vault_rec.properties.access_policies.len(), 1);
    assert!(vault_rec.properties.enable_rbac_authorization);

    // Authentication: missing, malformed, other scheme, wrong audience, expired, other tenant.
    let url = format!("{ARM}{}", q(&vid, KV_API));
    let r = send(&t, Method::GET, &url, None, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "AuthenticationFailed"));
    let challenge = r.headers.get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(
        challenge
            .starts_with(&format!("Bearer authorization_uri=\"https://login.microsoftonline.com/{}\"", tenant(&t))),
        "{challenge}"
    );
    assert!(
        challenge
            .contains("error_description=\"The authentication failed because of missing 'Authorization' header.\"")
    );
    let r = send(&t, Method::GET, &url, Some("not.a.jwt"), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken"));
    let r = t.http.get(&url).header("authorization", "Basic dXNlcjpwYXNz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let kv_token = t.bootstrap_token("https://vault.azure.net");
    let r = arm(&t, Method::GET, &q(&vid, KV_API), &kv_token, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "InvalidAuthenticationTokenAudience"));
    assert!(r.message().contains("'https://vault.azure.net'"));
    for aud in ["https://management.core.windows.net/", "https://management.azure.com"] {
        let r = arm(&t, Method::GET, &q(&vid, KV_API), &t.bootstrap_token(aud), None).await;
        assert_eq!(r.status, StatusCode::OK, "{aud}");
    }
    shift_clock(&t, 7200);
    let r = arm(&t, Method::GET, &q(&vid, KV_API), &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "ExpiredAuthenticationToken"));
    assert!(r.message().starts_with("The access token expiry UTC time '"));
    shift_clock(&t, -7200);
    let other = t
        .emu
        .ctx()
        .mutate(|st| -> anyhow::Result<_> { Ok(st.create_tenant_with_admin("Other", AzureEnvironment::Azure, 0)) })
        .unwrap();
    let other_sp = t.emu.ctx().read(|st| {
        st.sp_in_tenant(other.client_id.parse().unwrap(), other.tenant_id.parse().unwrap())
            .unwrap()
            .object_id
            .to_string()
    });
    let ot = t.mint(&other_sp, ARM_AUD);
    let r = arm(&t, Method::GET, &q(&vid, KV_API), &ot, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "InvalidAuthenticationTokenTenant"));
    let r = arm(&t, Method::GET, "/subscriptions?api-version=2022-12-01", &ot, None).await;
    assert_eq!(r.body["value"][0]["subscriptionId"], other.subscription_id.as_str());
    assert_eq!(r.body["value"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn propagation_delay_applies_to_new_and_removed_grants() {
    let t = TestEmu::start().await;
    let tok = t.bootstrap_token(ARM_AUD);
    create_rg(&t, &tok, "rg").await;
    let vid = create_vault(&t, &tok, "rg", &unique("kv"), true).await;
    let sp = add_sp(&t, &tenant(&t));
    let key_scope = format!("{vid}/keys/k");
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.settings.rbac_propagation_delay_secs = 300;
            Ok(())
        })
        .unwrap();

    let (crypto, r) = assign(&t, &tok, &vid, CRYPTO_USER, &sp).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (_, r) = assign(&t, &tok, &vid, READER, &sp).await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Listed at once, granting nothing yet — on the data plane and on ARM itself.
    let r = arm(
        &t,
        Method::GET,
        &format!(
            "{vid}/providers/Microsoft.Authorization/roleAssignments?$filter=principalId%20eq%20%27{sp}%27&{AUTHZ_API}"
        ),
        &tok,
        None,
    )
    .await;
    assert_eq!(ids(&r.body).len(), 2);
    assert!(!allowed(&t, &sp, &key_scope, WRAP, true));
    let st = t.mint(&sp, ARM_AUD);
    assert_eq!(arm(&t, Method::GET, &q(&vid, KV_API), &st, None).await.status, StatusCode::FORBIDDEN);
    shift_clock(&t, 301);
    assert!(allowed(&t, &sp, &key_scope, WRAP, true));
    assert_eq!(arm(&t, Method::GET, &q(&vid, KV_API), &st, None).await.status, StatusCode::OK);

    // Deleted: gone from ARM at once, still granting until the delay has passed.
    let r = arm(&t, Method::DELETE, &q(&crypto, AUTHZ_API), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(arm(&t, Method::GET, &q(&crypto, AUTHZ_API), &tok, None).await.status, StatusCode::NOT_FOUND);
    let r = arm(
        &t,
        Method::GET,
        &format!(
            "{vid}/providers/Microsoft.Authorization/roleAssignments?$filter=principalId%20eq%20%27{sp}%27&{AUTHZ_API}"
        ),
        &tok,
        None,
    )
    .await;
    assert_eq!(ids(&r.body).len(), 1);
    assert!(allowed(&t, &sp, &key_scope, WRAP, true));
    shift_clock(&t, 301);
    assert!(!allowed(&t, &sp, &key_scope, WRAP, true));
    // Re-granting starts a new delay.
    let (_, r) = assign(&t, &tok, &vid, CRYPTO_USER, &sp).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(!allowed(&t, &sp, &key_scope, WRAP, true));
}

#[tokio::test]
async fn arm_state_survives_restart() {
    let t = TestEmu::start().await;
    let tok = t.bootstrap_token(ARM_AUD);
    create_rg(&t, &tok, "rg").await;
    let name = unique("kv");
    let vid = create_vault(&t, &tok, "rg", &name, false).await;
    let sp = add_sp(&t, &tenant(&t));
    let r = arm(&t, Method::PUT, &q(&format!("{vid}/accessPolicies/add"), KV_API), &tok, Some(json!({"properties": {"accessPolicies": [{"tenantId": tenant(&t), "objectId": sp, "permissions": {"keys": ["get"]}}]}}))).await;
    assert_eq!(r.status, StatusCode::OK);
    let (ra, r) = assign(&t, &tok, &vid, READER, &sp).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let vault_before = arm(&t, Method::GET, &q(&vid, KV_API), &tok, None).await.body;
    let ra_before = arm(&t, Method::GET, &q(&ra, AUTHZ_API), &tok, None).await.body;

    let t = t.restart().await;
    let tok = t.bootstrap_token(ARM_AUD);
    assert_eq!(arm(&t, Method::GET, &q(&vid, KV_API), &tok, None).await.body, vault_before);
    assert_eq!(arm(&t, Method::GET, &q(&ra, AUTHZ_API), &tok, None).await.body, ra_before);
    let r = arm(
        &t,
        Method::GET,
        &format!("/subscriptions/{}/resourcegroups/rg?api-version=2022-09-01", sub(&t)),
        &tok,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_gets_arm_errors_and_changes_nothing() {
    let t = TestEmu::start().await;
    let tok = t.bootstrap_token(ARM_AUD);
    let s = sub(&t);
    create_rg(&t, &tok, "rg").await;
    let vid = create_vault(&t, &tok, "rg", &unique("kv"), true).await;
    let before = fingerprint(&t);
    let raw = |method: Method, path: String, body: &[u8]| {
        let t = &t;
        let tok = &tok;
        let body = body.to_vec();
        async move { send(t, method, &format!("{ARM}{path}"), Some(tok), Some(body)).await }
    };
    let new_vault = |name: &str| q(&vault_path(&t, "rg", name), KV_API);
    let good = vault_body(&t, true, json!([]));
    let with = |pointer: &str, value: Value| {
        let mut b = good.clone();
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        b.pointer_mut(parent).unwrap()[field] = value;
        serde_json::to_vec(&b).unwrap()
    };
    let mut cases: Vec<(Reply, StatusCode, &str)> = vec![
        (raw(Method::PUT, new_vault("fine1"), b"{\"location\":").await, StatusCode::BAD_REQUEST, "InvalidRequestContent"),
        (raw(Method::PUT, new_vault("fine1"), b"[]").await, StatusCode::BAD_REQUEST, "InvalidRequestContent"),
        (raw(Method::PUT, new_vault("fine1"), b"\xff\xfe").await, StatusCode::BAD_REQUEST, "InvalidRequestContent"),
        (raw(Method::PUT, new_vault("fine1"), b"").await, StatusCode::BAD_REQUEST, "InvalidRequestContent"),
        (raw(Method::PUT, new_vault("fine1"), &with("/location", json!(5))).await, StatusCode::BAD_REQUEST, "InvalidRequestContent"),
        (
            raw(Method::PUT, new_vault("fine1"), &with("/properties/enableRbacAuthorization", json!("yes"))).await,
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
        ),
        (raw(Method::PUT, new_vault("fine1"), &with("/properties/accessPolicies", json!({}))).await, StatusCode::BAD_REQUEST, "InvalidRequestContent"),
        (raw(Method::PUT, new_vault("fine1"), &with("/location", json!(null))).await, StatusCode::BAD_REQUEST, "LocationRequired"),
        (raw(Method::PUT, new_vault("fine1"), &with("/properties/tenantId", json!(null))).await, StatusCode::BAD_REQUEST, "BadRequest"),
        (raw(Method::PUT, new_vault("fine1"), &with("/properties/tenantId", json!(Uuid::new_v4()))).await, StatusCode::BAD_REQUEST, "BadRequest"),
        (raw(Method::PUT, new_vault("fine1"), &with("/properties/tenantId", json!("tenant"))).await, StatusCode::BAD_REQUEST, "BadRequest"),
        (raw(Method::PUT, new_vault("fine1"), &with("/properties/sku/name", json!("gold"))).await, StatusCode::BAD_REQUEST, "BadRequest"),
        (raw(Method::PUT, new_vault("fine1"), &with("/properties/sku", json!(null))).await, StatusCode::BAD_REQUEST, "BadRequest"),
        (raw(Method::PUT, new_vault("fine1"), &with("/properties/publicNetworkAccess", json!("Maybe"))).await, StatusCode::BAD_REQUEST, "BadRequest"),
        (raw(Method::PUT, new_vault("fine1"), &with("/properties/accessPolicies", json!([{"tenantId": tenant(&t), "objectId": "bob", "permissions": {}}]))).await, StatusCode::BAD_REQUEST, "BadRequest"),
        (raw(Method::PUT, new_vault("fine1"), &with("/properties/accessPolicies", json!([{"tenantId": tenant(&t), "objectId": Uuid::new_v4(), "permissions": {"secrets": ["fly"]}}]))).await, StatusCode::BAD_REQUEST, "BadRequest"),
        (raw(Method::PUT, new_vault("fine1"), b"{\"location\":\"eastus\"}").await, StatusCode::BAD_REQUEST, "BadRequest"),
        (raw(Method::PUT, q(&vault_path(&t, "nosuchrg", "fine1"), KV_API), &serde_json::to_vec(&good).unwrap()).await, StatusCode::NOT_FOUND, "ResourceGroupNotFound"),
        (raw(Method::PATCH, new_vault("fine1"), b"{}").await, StatusCode::NOT_FOUND, "ResourceNotFound"),
        // Missing or malformed api-version.
        (raw(Method::PUT, vault_path(&t, "rg", "fine1"), &serde_json::to_vec(&good).unwrap()).await, StatusCode::BAD_REQUEST, "MissingApiVersionParameter"),
        (raw(Method::PUT, format!("{}?api-version=latest", vault_path(&t, "rg", "fine1")), &serde_json::to_vec(&good).unwrap()).await, StatusCode::BAD_REQUEST, "InvalidApiVersionParameter"),
        // Resource groups.
        (raw(Method::PUT, format!("/subscriptions/{s}/resourcegroups/bad%20name!?api-version=2022-09-01"), b"{\"location\":\"eastus\"}").await, StatusCode::BAD_REQUEST, "InvalidResourceGroup"),
        (raw(Method::PUT, format!("/subscriptions/{s}/resourcegroups/ok?api-version=2022-09-01"), b"{}").await, StatusCode::BAD_REQUEST, "LocationRequired"),
        (raw(Method::PUT, format!("/subscriptions/{s}/resourcegroups/ok?api-version=2022-09-01"), b"null").await, StatusCode::BAD_REQUEST, "InvalidRequestContent"),
        (raw(Method::PUT, format!("/subscriptions/{s}/resourcegroups/ok?api-version=2022-09-01"), b"{\"location\":\"east/us\"}").await, StatusCode::BAD_REQUEST, "LocationNotAvailableForResourceType"),
        // Unknown routes, types and methods.
        (raw(Method::PUT, format!("/subscriptions/{s}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm?api-version=2024-03-01"), b"{}").await, StatusCode::NOT_FOUND, "NoRegisteredProviderFound"),
        (raw(Method::PUT, format!("/subscriptions/{s}/resourceGroups/rg/providers/Microsoft.KeyVault/managedHSMs/h?{KV_API}"), b"{}").await, StatusCode::NOT_FOUND, "InvalidResourceType"),
        (raw(Method::GET, "/subscriptions/not-a-guid/resourcegroups?api-version=2022-09-01".to_string(), b"").await, StatusCode::BAD_REQUEST, "InvalidSubscriptionId"),
        (raw(Method::GET, "/nothing/here?api-version=2022-09-01".into(), b"").await, StatusCode::NOT_FOUND, "NotFound"),
        (raw(Method::POST, q(&vid, KV_API), b"{}").await, StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        (raw(Method::GET, format!("/subscriptions/{}/resourcegroups?api-version=2022-09-01", Uuid::new_v4()), b"").await, StatusCode::NOT_FOUND, "SubscriptionNotFound"),
        // Filters.
        (raw(Method::GET, format!("/subscriptions/{s}/resources?$filter=tagName%20eq%20%27x%27&api-version=2021-04-01"), b"").await, StatusCode::BAD_REQUEST, "InvalidFilterInQueryString"),
        (raw(Method::GET, format!("/subscriptions/{s}/resources?$filter=name%20eq%20%27x%27%20and%20name%20eq%20%27y%27&api-version=2021-04-01"), b"").await, StatusCode::BAD_REQUEST, "InvalidFilterInQueryString"),
        (raw(Method::GET, format!("/subscriptions/{s}/resources?$filter=name%20ne%20%27x%27&api-version=2021-04-01"), b"").await, StatusCode::BAD_REQUEST, "InvalidFilterInQueryString"),
        (raw(Method::GET, format!("{vid}/providers/Microsoft.Authorization/roleAssignments?$filter=foo&{AUTHZ_API}"), b"").await, StatusCode::BAD_REQUEST, "UnsupportedQuery"),
    ];
    for name in ["1bad", "ab", "a--b", "bad-", "has_underscore", "abcdefghijklmnopqrstuvwxy"] {
        cases.push((
            raw(Method::PUT, new_vault(name), &serde_json::to_vec(&good).unwrap()).await,
            StatusCode::BAD_REQUEST,
            "VaultNameNotValid",
        ));
    }
    for (i, (r, status, code)) in cases.iter().enumerate() {
        assert_eq!((r.status, r.code()), (*status, *code), "case {i}: {}", r.body);
        assert!(!r.message().is_empty(), "case {i}");
    }

    // Oversized bodies get ARM's 413 before any handler runs.
    let big = vec![b' '; 300 * 1024];
    let r = raw(Method::PUT, new_vault("fine1"), &big).await;
    assert_eq!((r.status, r.code()), (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"));

    assert_eq!(fingerprint(&t), before, "no rejected request changed the state");
}

#[tokio::test]
async fn sovereign_cloud_hosts_use_their_own_subscriptions_and_vault_suffix() {
    let t = TestEmu::start().await;
    let china = t
        .emu
        .ctx()
        .mutate(|s| -> anyhow::Result<_> { Ok(s.create_tenant_with_admin("China", AzureEnvironment::AzureChina, 0)) })
        .unwrap();
    let sp = t.emu.ctx().read(|s| {
        s.sp_in_tenant(china.client_id.parse().unwrap(), china.tenant_id.parse().unwrap())
            .unwrap()
            .object_id
            .to_string()
    });
    let tok = t.mint(&sp, "https://management.chinacloudapi.cn");
    let cn = "https://management.chinacloudapi.cn";
    let sub = &china.subscription_id;
    let r = send(
        &t,
        Method::PUT,
        &format!("{cn}/subscriptions/{sub}/resourcegroups/rg?api-version=2022-09-01"),
        Some(&tok),
        Some(br#"{"location":"chinaeast2"}"#.to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let name = unique("kv");
    let body = json!({"location": "chinaeast2", "properties": {"tenantId": china.tenant_id, "sku": {"family": "A", "name": "premium"}, "enableRbacAuthorization": true}});
    let r = send(
        &t,
        Method::PUT,
        &format!("{cn}/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{name}?{KV_API}"),
        Some(&tok),
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["properties"]["vaultUri"], format!("https://{name}.vault.azure.cn/"));
    assert_eq!(r.body["properties"]["sku"]["name"], "premium");
    let r = send(&t, Method::GET, &format!("{cn}/subscriptions?api-version=2022-12-01"), Some(&tok), None).await;
    assert_eq!(r.body["value"][0]["subscriptionId"], sub.as_str());

    // The public cloud's ARM does not know the China subscription, nor take China tokens.
    let public_tok = t.mint(&sp, ARM_AUD);
    let r =
        arm(&t, Method::GET, &format!("/subscriptions/{sub}/resourcegroups?api-version=2022-09-01"), &public_tok, None)
            .await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "SubscriptionNotFound"));
    let r = arm(&t, Method::GET, "/subscriptions?api-version=2022-12-01", &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "InvalidAuthenticationTokenAudience"));

    // Vault names are unique per cloud, not across clouds.
    let b = t.bootstrap_token(ARM_AUD);
    create_rg(&t, &b, "rg").await;
    create_vault(&t, &b, "rg", &name, true).await;
}
