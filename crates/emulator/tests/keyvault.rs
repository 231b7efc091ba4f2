//! The Key Vault keys data plane over real TLS: operations and their JSON, key-state rules,
//! the 401 challenge per cloud, RBAC and access-policy enforcement on every request, network
//! restrictions, persistence, and Azure-shaped 4xx answers to bad input.
//!
//! Vaults, service principals and role assignments are written straight into the state
//! (`ctx.mutate`) so these tests depend on nothing but the Key Vault surface and the token signer.

mod support;

use std::net::SocketAddr;

use atrest_domain::AzureEnvironment;
use atrest_emulator::state::{
    AccessPolicy, Application, Permissions, ResourceGroup, RoleAssignment, ServicePrincipal, Vault, VaultProperties,
};
use aws_lc_rs::rsa::{
    OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, Pkcs1PublicEncryptingKey, PublicEncryptingKey,
    PublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::TestEmu;
use uuid::Uuid;

const API: &str = "api-version=7.5";
const CRYPTO_USER: &str = "12338af0-0e69-4776-bea7-57ae8d297424";
const CRYPTO_OFFICER: &str = "14b46e9e-c2b7-41b4-b07b-48a6ebf60603";

// The reference bodies of `shared/reference/azure-examples/kv_errors.json` and the request of
// `kv_create_key_request.json`, copied here because that folder is not part of the repository.
fn reference_error(which: &str) -> Value {
    let all = json!({
        "401_missing_token": {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}},
        "401_bad_audience": {"error": {"code": "Unauthorized", "message": "AKV10022: Invalid audience. Expected https://vault.azure.net, found: https://management.azure.com/."}},
        "401_expired": {"error": {"code": "Unauthorized", "message": "[TokenExpired] Error validating token: 'S2S12086'."}},
        "404_key_not_found": {"error": {"code": "KeyNotFound", "message": "A key with (name/id) mykey was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"}},
        "403_key_disabled_UNVERIFIED": {"error": {"code": "Forbidden", "message": "Operation unwrapKey is not allowed on a disabled key.", "innererror": {"code": "KeyDisabled"}}},
    });
    all[which].clone()
}

fn reference_create_request() -> Value {
    json!({
        "kty": "RSA",
        "key_size": 2048,
        "key_ops": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
        "attributes": {},
        "tags": {"purpose": "unit test", "test name ": "CreateGetDeleteKeyTest"}
    })
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

struct VaultSpec {
    cloud: AzureEnvironment,
    rbac: bool,
    soft_delete: bool,
    purge_protection: bool,
    public_network: bool,
    policies: Vec<AccessPolicy>,
}

impl Default for VaultSpec {
    fn default() -> Self {
        Self {
            cloud: AzureEnvironment::Azure,
            rbac: true,
            soft_delete: true,
            purge_protection: false,
            public_network: true,
            policies: vec![],
        }
    }
}

fn uniq(prefix: &str) -> String {
    format!("{prefix}{}", &Uuid::new_v4().simple().to_string()[..10])
}

/// Create a resource group and vault in the bootstrap subscription; returns the vault name.
fn add_vault(t: &TestEmu, spec: VaultSpec) -> String {
    let b = t.bootstrap().clone();
    let sub: Uuid = b.subscription_id.parse().unwrap();
    let tenant: Uuid = b.tenant_id.parse().unwrap();
    let name = uniq("kv");
    let n = name.clone();
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.resource_groups.insert(
                ResourceGroup::key(sub, "rg"),
                ResourceGroup {
                    subscription_id: sub,
                    name: "rg".into(),
                    location: "eastus".into(),
                    tags: Default::default(),
                },
            );
            s.vaults.insert(
                Vault::key(spec.cloud, &n),
                Vault {
                    cloud: spec.cloud,
                    subscription_id: sub,
                    resource_group: "rg".into(),
                    name: n.clone(),
                    location: "eastus".into(),
                    tags: Default::default(),
                    properties: VaultProperties {
                        tenant_id: tenant,
                        sku_family: "A".into(),
                        sku_name: "standard".into(),
                        enable_rbac_authorization: spec.rbac,
                        access_policies: spec.policies,
                        enable_soft_delete: spec.soft_delete,
                        soft_delete_retention_in_days: 90,
                        enable_purge_protection: spec.purge_protection.then_some(true),
                        public_network_access: if spec.public_network { "Enabled" } else { "Disabled" }.into(),
                    },
                    keys: Default::default(),
                    deleted_keys: Default::default(),
                    created: 0,
                },
            );
            Ok(())
        })
        .unwrap();
    name
}

fn vault_id(t: &TestEmu, vault: &str) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{vault}",
        t.bootstrap().subscription_id
    )
}

/// A new application and its service principal in the bootstrap tenant; returns the SP's object id.
fn add_sp(t: &TestEmu) -> String {
    let tenant: Uuid = t.bootstrap().tenant_id.parse().unwrap();
    let app = Application {
        object_id: Uuid::new_v4(),
        app_id: Uuid::new_v4(),
        home_tenant: tenant,
        display_name: uniq("app"),
        multi_tenant: false,
        secrets: vec![],
        certificates: vec![],
        federated: vec![],
        created: 0,
    };
    let sp = ServicePrincipal {
        object_id: Uuid::new_v4(),
        tenant_id: tenant,
        app_id: app.app_id,
        display_name: app.display_name.clone(),
        account_enabled: true,
        directory_admin: false,
        created: 0,
    };
    let oid = sp.object_id.to_string();
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.applications.insert(app.object_id, app);
            s.service_principals.insert(sp.object_id, sp);
            Ok(())
        })
        .unwrap();
    oid
}

/// Assign `role` to `principal` at `scope`; returns the state key of the assignment.
fn assign(t: &TestEmu, principal: &str, scope: &str, role: &str) -> String {
    let ra = RoleAssignment {
        name: Uuid::new_v4().to_string(),
        scope: scope.to_string(),
        role_definition_id: format!(
            "/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{role}",
            t.bootstrap().subscription_id
        ),
        principal_id: principal.to_string(),
        principal_type: "ServicePrincipal".into(),
        description: None,
        condition: None,
        condition_version: None,
        created_on: 0,
        updated_on: 0,
        created_by: None,
        effective_from: 0,
        revoked_at: None,
    };
    let id = ra.id().to_ascii_lowercase();
    let k = id.clone();
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.role_assignments.insert(k, ra);
            Ok(())
        })
        .unwrap();
    id
}

fn unassign(t: &TestEmu, id: &str) {
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.role_assignments.remove(id);
            Ok(())
        })
        .unwrap();
}

fn policy(t: &TestEmu, oid: &str, keys: &[&str]) -> AccessPolicy {
    AccessPolicy {
        tenant_id: t.bootstrap().tenant_id.parse().unwrap(),
        object_id: oid.to_string(),
        application_id: None,
        permissions: Permissions { keys: keys.iter().map(|s| s.to_string()).collect(), ..Default::default() },
    }
}

fn set_policies(t: &TestEmu, vault: &str, policies: Vec<AccessPolicy>) {
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.vaults.get_mut(&Vault::key(AzureEnvironment::Azure, vault)).unwrap().properties.access_policies =
                policies;
            Ok(())
        })
        .unwrap();
}

fn shift_clock(t: &TestEmu, secs: i64) {
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.settings.clock_shift_secs = secs;
            Ok(())
        })
        .unwrap();
}

fn admin_token(t: &TestEmu) -> String {
    t.bootstrap_token("https://vault.azure.net")
}

fn vault_url(vault: &str) -> String {
    format!("https://{vault}.vault.azure.net")
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    fn inner(&self) -> &str {
        self.body["error"]["innererror"]["code"].as_str().unwrap_or("")
    }
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

async fn send_with(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Reply {
    let mut req = http.request(method, url);
    if let Some(tok) = token {
        req = req.bearer_auth(tok);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    Reply { status, headers, body }
}

async fn call(t: &TestEmu, method: Method, url: &str, token: &str, body: Option<Value>) -> Reply {
    send_with(&t.http, method, url, Some(token), body.map(|b| serde_json::to_vec(&b).unwrap())).await
}

async fn create_key(t: &TestEmu, vault: &str, name: &str, token: &str, body: Value) -> Value {
    let r = call(t, Method::POST, &format!("{}/keys/{name}/create?{API}", vault_url(vault)), token, Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

async fn wrap(t: &TestEmu, url_base: &str, token: &str, alg: &str, plain: &[u8]) -> Reply {
    call(
        t,
        Method::POST,
        &format!("{url_base}/wrapkey?{API}"),
        token,
        Some(json!({"alg": alg, "value": URL_SAFE_NO_PAD.encode(plain)})),
    )
    .await
}

async fn unwrap(t: &TestEmu, url_base: &str, token: &str, alg: &str, wrapped: &str) -> Reply {
    call(t, Method::POST, &format!("{url_base}/unwrapkey?{API}"), token, Some(json!({"alg": alg, "value": wrapped})))
        .await
}

async fn patch(t: &TestEmu, vault: &str, name: &str, token: &str, body: Value) -> Reply {
    call(t, Method::PATCH, &format!("{}/keys/{name}/?{API}", vault_url(vault)), token, Some(body)).await
}

/// A snapshot of the vault's keys as JSON, to prove a request changed nothing.
fn keys_snapshot(t: &TestEmu, vault: &str) -> String {
    t.emu.ctx().read(|s| {
        let v = s.vault(AzureEnvironment::Azure, vault).unwrap();
        serde_json::to_string(&(&v.keys, &v.deleted_keys)).unwrap()
    })
}

// ---------------------------------------------------------------------------------------------
// Operations and shapes.

#[tokio::test]
async fn create_get_list_update_rotate_and_versionless_paths() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    let created = create_key(&t, &vault, "CreateSoftKeyTest", &tok, reference_create_request()).await;
    // The KeyBundle of kv_key_bundle_response.json.
    let kid = created["key"]["kid"].as_str().unwrap().to_string();
    let prefix = format!("https://{vault}.vault.azure.net/keys/CreateSoftKeyTest/");
    assert!(kid.starts_with(&prefix), "{kid}");
    let v1 = kid.rsplit('/').next().unwrap().to_string();
    assert_eq!(v1.len(), 32);
    assert!(v1.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(created["key"]["kty"], "RSA");
    assert_eq!(created["key"]["key_ops"], json!(["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]));
    assert_eq!(created["key"]["e"], "AQAB");
    assert_eq!(URL_SAFE_NO_PAD.decode(created["key"]["n"].as_str().unwrap()).unwrap().len(), 256);
    assert!(created["key"].get("d").is_none(), "private parts never leave the vault");
    let a = &created["attributes"];
    assert_eq!(a["enabled"], true);
    assert_eq!(a["recoveryLevel"], "Recoverable+Purgeable");
    assert_eq!(a["recoverableDays"], 90);
    assert_eq!(a["exportable"], false);
    assert!(a["created"].is_i64() && a["updated"].is_i64());
    assert!(a.get("nbf").is_none() && a.get("exp").is_none());
    assert_eq!(created["tags"], json!({"purpose": "unit test", "test name ": "CreateGetDeleteKeyTest"}));

    // Every spelling of "this key" reaches the same bundle.
    let base = vault_url(&vault);
    for path in ["keys/CreateSoftKeyTest", "keys/createsoftkeytest/", &format!("keys/CreateSoftKeyTest/{v1}")] {
        let r = call(&t, Method::GET, &format!("{base}/{path}?{API}"), &tok, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        assert_eq!(r.body, created, "{path}");
        assert_eq!(r.headers["x-ms-keyvault-region"], "eastus");
        assert!(r.headers["x-ms-keyvault-service-version"].to_str().unwrap().starts_with("1.9."));
        assert!(r.headers["x-ms-keyvault-network-info"].to_str().unwrap().contains("addr=127.0.0.1"));
    }

    // Creating an existing name adds a version; rotation adds another with the same settings.
    let second = create_key(&t, &vault, "CreateSoftKeyTest", &tok, json!({"kty": "RSA-HSM", "key_size": 3072})).await;
    assert_eq!(second["key"]["kty"], "RSA-HSM");
    assert_eq!(URL_SAFE_NO_PAD.decode(second["key"]["n"].as_str().unwrap()).unwrap().len(), 384);
    assert!(second.get("tags").is_none(), "empty tags are left out");
    let r = call(&t, Method::POST, &format!("{base}/keys/CreateSoftKeyTest/rotate?{API}"), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rotated = r.body;
    assert_eq!(rotated["key"]["kty"], "RSA-HSM");
    assert_eq!(URL_SAFE_NO_PAD.decode(rotated["key"]["n"].as_str().unwrap()).unwrap().len(), 384);
    assert_ne!(rotated["key"]["kid"], second["key"]["kid"]);
    let latest = call(&t, Method::GET, &format!("{base}/keys/CreateSoftKeyTest/?{API}"), &tok, None).await;
    assert_eq!(latest.body["key"]["kid"], rotated["key"]["kid"]);

    // Versions, oldest first, with versioned kids.
    let r = call(&t, Method::GET, &format!("{base}/keys/CreateSoftKeyTest/versions?{API}"), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let kids: Vec<&str> = r.body["value"].as_array().unwrap().iter().map(|i| i["kid"].as_str().unwrap()).collect();
    assert_eq!(
        kids,
        vec![kid.as_str(), second["key"]["kid"].as_str().unwrap(), rotated["key"]["kid"].as_str().unwrap()]
    );
    assert!(r.body["nextLink"].is_null());

    // The key list shows versionless kids.
    create_key(&t, &vault, "other", &tok, json!({"kty": "RSA"})).await;
    let r = call(&t, Method::GET, &format!("{base}/keys?{API}"), &tok, None).await;
    let items = r.body["value"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["kid"], format!("https://{vault}.vault.azure.net/keys/CreateSoftKeyTest"));
    assert_eq!(items[1]["kid"], format!("https://{vault}.vault.azure.net/keys/other"));
    assert_eq!(items[0]["attributes"]["enabled"], true);

    // Update the first version by id, and the latest through an empty version segment.
    let r = call(
        &t,
        Method::PATCH,
        &format!("{base}/keys/CreateSoftKeyTest/{v1}?{API}"),
        &tok,
        Some(json!({"key_ops": ["wrapKey", "unwrapkey"], "attributes": {"enabled": false, "exp": 4102444800i64, "nbf": 1000}, "tags": {"a": "b"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["key"]["kid"], kid);
    assert_eq!(r.body["key"]["key_ops"], json!(["wrapKey", "unwrapKey"]));
    assert_eq!(r.body["attributes"]["enabled"], false);
    assert_eq!(r.body["attributes"]["exp"], 4102444800i64);
    assert_eq!(r.body["attributes"]["nbf"], 1000);
    assert_eq!(r.body["tags"], json!({"a": "b"}));
    let r = patch(&t, &vault, "CreateSoftKeyTest", &tok, json!({"tags": {"latest": "yes"}})).await;
    assert_eq!(r.body["key"]["kid"], rotated["key"]["kid"]);
    assert_eq!(r.body["tags"], json!({"latest": "yes"}));
    assert_eq!(r.body["attributes"]["enabled"], true);
    // The other versions kept their own attributes.
    let r = call(&t, Method::GET, &format!("{base}/keys/CreateSoftKeyTest/{v1}?{API}"), &tok, None).await;
    assert_eq!(r.body["attributes"]["enabled"], false);
}

#[tokio::test]
async fn list_pages_with_maxresults_and_skiptoken() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    // Keys are cheap to add straight into the state; the list is what is under test.
    for i in 0..5 {
        create_key(&t, &vault, &format!("k{i}"), &tok, json!({"kty": "RSA"})).await;
    }
    let mut url = format!("{}/keys?{API}&maxresults=2", vault_url(&vault));
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = call(&t, Method::GET, &url, &tok, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.body["value"].as_array().unwrap().len() <= 2);
        seen.extend(r.body["value"].as_array().unwrap().iter().map(|i| i["kid"].as_str().unwrap().to_string()));
        match r.body["nextLink"].as_str() {
            Some(next) => {
                assert!(next.contains("$skiptoken=") && next.contains("maxresults=2"), "{next}");
                url = next.to_string();
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..5).map(|i| format!("https://{vault}.vault.azure.net/keys/k{i}")).collect();
    assert_eq!(seen, expected);
    for bad in ["0", "26", "x"] {
        let r = call(&t, Method::GET, &format!("{}/keys?{API}&maxresults={bad}", vault_url(&vault)), &tok, None).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "BadParameter"), "{bad}");
    }
    let r = call(&t, Method::GET, &format!("{}/keys?{API}&$skiptoken=***", vault_url(&vault)), &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "BadParameter"));
}

/// Encrypt with the public key the service returned, as a client doing local crypto would.
fn local_encrypt(bundle: &Value, alg: &str, plain: &[u8]) -> String {
    let n = URL_SAFE_NO_PAD.decode(bundle["key"]["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(bundle["key"]["e"].as_str().unwrap()).unwrap();
    let public: PublicEncryptingKey = PublicKeyComponents { n: n.as_slice(), e: e.as_slice() }.try_into().unwrap();
    let mut out = vec![0u8; n.len()];
    let len = match alg {
        "RSA-OAEP" => OaepPublicEncryptingKey::new(public)
            .unwrap()
            .encrypt(&OAEP_SHA1_MGF1SHA1, plain, &mut out, None)
            .unwrap()
            .len(),
        "RSA-OAEP-256" => OaepPublicEncryptingKey::new(public)
            .unwrap()
            .encrypt(&OAEP_SHA256_MGF1SHA256, plain, &mut out, None)
            .unwrap()
            .len(),
        _ => Pkcs1PublicEncryptingKey::new(public).unwrap().encrypt(plain, &mut out).unwrap().len(),
    };
    out.truncate(len);
    URL_SAFE_NO_PAD.encode(&out)
}

#[tokio::test]
async fn wrap_unwrap_encrypt_decrypt_round_trip_for_every_algorithm_and_size() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    for bits in [2048, 3072, 4096] {
        let bundle = create_key(&t, &vault, &format!("k{bits}"), &tok, json!({"kty": "RSA", "key_size": bits})).await;
        let kid = bundle["key"]["kid"].as_str().unwrap().to_string();
        let versionless = format!("{}/keys/k{bits}/", vault_url(&vault)); // + "/wrapkey" = empty version
        for alg in ["RSA-OAEP", "RSA-OAEP-256", "RSA1_5"] {
            let secret = [bits as u8; 32];
            // Wrap by version, unwrap through the empty version segment.
            let w = wrap(&t, &kid, &tok, alg, &secret).await;
            assert_eq!(w.status, StatusCode::OK, "{bits} {alg}: {}", w.body);
            assert_eq!(w.body["kid"], kid);
            let wrapped = w.body["value"].as_str().unwrap();
            assert_eq!(URL_SAFE_NO_PAD.decode(wrapped).unwrap().len(), bits / 8);
            let u = unwrap(&t, &versionless, &tok, alg, wrapped).await;
            assert_eq!(u.status, StatusCode::OK, "{bits} {alg}: {}", u.body);
            assert_eq!(u.body["kid"], kid);
            assert_eq!(URL_SAFE_NO_PAD.decode(u.body["value"].as_str().unwrap()).unwrap(), secret);

            // Encrypted locally with the returned n/e, decrypted by the service (padded base64url
            // is accepted too).
            let local = local_encrypt(&bundle, alg, b"hello vault");
            let padded = URL_SAFE.encode(URL_SAFE_NO_PAD.decode(&local).unwrap());
            for ct in [local, padded] {
                let d = call(
                    &t,
                    Method::POST,
                    &format!("{kid}/decrypt?{API}"),
                    &tok,
                    Some(json!({"alg": alg, "value": ct})),
                )
                .await;
                assert_eq!(d.status, StatusCode::OK, "{bits} {alg}: {}", d.body);
                assert_eq!(URL_SAFE_NO_PAD.decode(d.body["value"].as_str().unwrap()).unwrap(), b"hello vault");
            }
            // And the service's encrypt round-trips through its decrypt.
            let e = call(
                &t,
                Method::POST,
                &format!("{kid}/encrypt?{API}"),
                &tok,
                Some(json!({"alg": alg, "value": URL_SAFE_NO_PAD.encode(b"x")})),
            )
            .await;
            assert_eq!(e.status, StatusCode::OK, "{}", e.body);
            let d = call(
                &t,
                Method::POST,
                &format!("{kid}/decrypt?{API}"),
                &tok,
                Some(json!({"alg": alg, "value": e.body["value"]})),
            )
            .await;
            assert_eq!(URL_SAFE_NO_PAD.decode(d.body["value"].as_str().unwrap()).unwrap(), b"x");
        }
    }
}

#[tokio::test]
async fn sign_verify_and_import() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    let bundle = create_key(&t, &vault, "signer", &tok, json!({"kty": "RSA"})).await;
    let kid = bundle["key"]["kid"].as_str().unwrap();
    for (alg, dlen) in [("RS256", 32), ("PS256", 32), ("RS384", 48), ("PS512", 64)] {
        let digest = URL_SAFE_NO_PAD.encode(vec![5u8; dlen]);
        let s = call(&t, Method::POST, &format!("{kid}/sign?{API}"), &tok, Some(json!({"alg": alg, "value": digest})))
            .await;
        assert_eq!(s.status, StatusCode::OK, "{}", s.body);
        let v = call(
            &t,
            Method::POST,
            &format!("{kid}/verify?{API}"),
            &tok,
            Some(json!({"alg": alg, "digest": digest, "value": s.body["value"]})),
        )
        .await;
        assert_eq!(v.body, json!({"value": true}));
        let other = URL_SAFE_NO_PAD.encode(vec![6u8; dlen]);
        let v = call(
            &t,
            Method::POST,
            &format!("{kid}/verify?{API}"),
            &tok,
            Some(json!({"alg": alg, "digest": other, "value": s.body["value"]})),
        )
        .await;
        assert_eq!(v.body, json!({"value": false}));
    }
    let r = call(&t, Method::POST, &format!("{kid}/sign?{API}"), &tok, Some(json!({"alg": "RS256", "value": "AAAA"})))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "BadParameter"));

    // Import a key we hold, then check the vault decrypts what we encrypt to it.
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).unwrap();
    let jwk = jwk_from_pkcs8(der.as_ref());
    let r = call(
        &t,
        Method::PUT,
        &format!("{}/keys/imported?{API}", vault_url(&vault)),
        &tok,
        Some(json!({"key": jwk, "tags": {"src": "import"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["key"]["n"], jwk["n"]);
    assert!(r.body["key"].get("d").is_none());
    let ct = local_encrypt(&r.body, "RSA-OAEP-256", b"imported");
    let d = call(
        &t,
        Method::POST,
        &format!("{}/decrypt?{API}", r.body["key"]["kid"].as_str().unwrap()),
        &tok,
        Some(json!({"alg": "RSA-OAEP-256", "value": ct})),
    )
    .await;
    assert_eq!(URL_SAFE_NO_PAD.decode(d.body["value"].as_str().unwrap()).unwrap(), b"imported");
    let mut broken = jwk.clone();
    broken["d"] = json!(URL_SAFE_NO_PAD.encode([1u8; 256]));
    let r =
        call(&t, Method::PUT, &format!("{}/keys/broken?{API}", vault_url(&vault)), &tok, Some(json!({"key": broken})))
            .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "BadParameter"), "{}", r.body);
}

/// The RSA JWK of a PKCS#8 key, by walking its DER (sequence of integers after the version).
fn jwk_from_pkcs8(der: &[u8]) -> Value {
    fn read_tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = if b[1] & 0x80 == 0 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            (b[2..2 + n].iter().fold(0usize, |a, &x| (a << 8) | x as usize), 2 + n)
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, pkcs8, _) = read_tlv(der);
    let (_, _, rest) = read_tlv(pkcs8); // version
    let (_, _, rest) = read_tlv(rest); // algorithm
    let (_, octets, _) = read_tlv(rest);
    let (_, rsa, _) = read_tlv(octets);
    let mut ints = Vec::new();
    let mut rest = rsa;
    while !rest.is_empty() {
        let (_, v, r) = read_tlv(rest);
        let v = if v.len() > 1 && v[0] == 0 { &v[1..] } else { v };
        ints.push(URL_SAFE_NO_PAD.encode(v));
        rest = r;
    }
    json!({"kty": "RSA", "n": ints[1], "e": ints[2], "d": ints[3], "p": ints[4], "q": ints[5], "dp": ints[6], "dq": ints[7], "qi": ints[8]})
}

// ---------------------------------------------------------------------------------------------
// Soft delete.

#[tokio::test]
async fn soft_delete_then_get_recover_and_purge() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    let base = vault_url(&vault);
    let created = create_key(&t, &vault, "doomed", &tok, json!({"kty": "RSA"})).await;
    let kid = created["key"]["kid"].as_str().unwrap().to_string();
    let w = wrap(&t, &kid, &tok, "RSA-OAEP", b"data key").await;

    let r = call(&t, Method::DELETE, &format!("{base}/keys/doomed?{API}"), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["recoveryId"], format!("https://{vault}.vault.azure.net/deletedkeys/doomed"));
    assert_eq!(r.body["key"]["kid"], kid);
    let deleted = r.body["deletedDate"].as_i64().unwrap();
    assert_eq!(r.body["scheduledPurgeDate"].as_i64().unwrap(), deleted + 90 * 86400);

    // Gone from the live keys, with the reference 404; unwrap fails the same way.
    let r = call(&t, Method::GET, &format!("{base}/keys/doomed?{API}"), &tok, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.body.to_string(),
        reference_error("404_key_not_found").to_string().replace("(name/id) mykey", "(name/id) doomed")
    );
    let r = unwrap(&t, &kid, &tok, "RSA-OAEP", w.body["value"].as_str().unwrap()).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "KeyNotFound"));
    // The name cannot be reused while it is recoverable.
    let r =
        call(&t, Method::POST, &format!("{base}/keys/doomed/create?{API}"), &tok, Some(json!({"kty": "RSA"}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "Conflict"));
    assert!(r.message().contains("deleted but recoverable state"));

    let r = call(&t, Method::GET, &format!("{base}/deletedkeys?{API}"), &tok, None).await;
    assert_eq!(r.body["value"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["value"][0]["kid"], format!("https://{vault}.vault.azure.net/keys/doomed"));
    assert_eq!(r.body["value"][0]["recoveryId"], format!("https://{vault}.vault.azure.net/deletedkeys/doomed"));
    let r = call(&t, Method::GET, &format!("{base}/deletedkeys/doomed?{API}"), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["key"]["kid"], kid);

    // Recover: the same key material is back.
    let r = call(&t, Method::POST, &format!("{base}/deletedkeys/doomed/recover?{API}"), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["key"]["kid"], kid);
    let r = unwrap(&t, &kid, &tok, "RSA-OAEP", w.body["value"].as_str().unwrap()).await;
    assert_eq!(URL_SAFE_NO_PAD.decode(r.body["value"].as_str().unwrap()).unwrap(), b"data key");
    let r = call(&t, Method::GET, &format!("{base}/deletedkeys/doomed?{API}"), &tok, None).await;
    assert_eq!((r.status, r.message()), (StatusCode::NOT_FOUND, "Deleted Key not found: doomed"));

    // Delete again and purge: gone for good, and the name is free.
    call(&t, Method::DELETE, &format!("{base}/keys/doomed?{API}"), &tok, None).await;
    let r = call(&t, Method::DELETE, &format!("{base}/deletedkeys/doomed?{API}"), &tok, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(&t, Method::POST, &format!("{base}/deletedkeys/doomed/recover?{API}"), &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "KeyNotFound"));
    let again = create_key(&t, &vault, "doomed", &tok, json!({"kty": "RSA"})).await;
    assert_ne!(again["key"]["n"], created["key"]["n"]);
}

#[tokio::test]
async fn purge_protection_and_vaults_without_soft_delete() {
    let t = TestEmu::start().await;
    let tok = admin_token(&t);
    let protected = add_vault(&t, VaultSpec { purge_protection: true, ..Default::default() });
    let k = create_key(&t, &protected, "kept", &tok, json!({"kty": "RSA"})).await;
    assert_eq!(k["attributes"]["recoveryLevel"], "Recoverable");
    call(&t, Method::DELETE, &format!("{}/keys/kept?{API}", vault_url(&protected)), &tok, None).await;
    let before = keys_snapshot(&t, &protected);
    let r = call(&t, Method::DELETE, &format!("{}/deletedkeys/kept?{API}", vault_url(&protected)), &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "Forbidden"));
    assert!(r.message().contains("purge protection is enabled for this vault"), "{}", r.message());
    assert_eq!(keys_snapshot(&t, &protected), before);
    // After the retention period the service purges it by itself.
    shift_clock(&t, 91 * 86400);
    let tok = admin_token(&t);
    let r = call(&t, Method::GET, &format!("{}/deletedkeys/kept?{API}", vault_url(&protected)), &tok, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    create_key(&t, &protected, "kept", &tok, json!({"kty": "RSA"})).await;

    let plain = add_vault(&t, VaultSpec { soft_delete: false, ..Default::default() });
    let k = create_key(&t, &plain, "gone", &tok, json!({"kty": "RSA"})).await;
    assert_eq!(k["attributes"]["recoveryLevel"], "Purgeable");
    assert!(k["attributes"].get("recoverableDays").is_none());
    let r = call(&t, Method::DELETE, &format!("{}/keys/gone?{API}", vault_url(&plain)), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.get("recoveryId").is_none());
    let r = call(&t, Method::GET, &format!("{}/deletedkeys/gone?{API}", vault_url(&plain)), &tok, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    create_key(&t, &plain, "gone", &tok, json!({"kty": "RSA"})).await;
}

// ---------------------------------------------------------------------------------------------
// Key-state rules.

#[tokio::test]
async fn disabled_key_still_wraps_but_refuses_unwrap_decrypt_and_sign() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    let k = create_key(&t, &vault, "off", &tok, json!({"kty": "RSA"})).await;
    let kid = k["key"]["kid"].as_str().unwrap();
    let w = wrap(&t, kid, &tok, "RSA-OAEP-256", b"dek").await;
    let r = patch(&t, &vault, "off", &tok, json!({"attributes": {"enabled": false}})).await;
    assert_eq!(r.body["attributes"]["enabled"], false);

    // Wrap, encrypt, verify and GET keep working (as in Azure).
    assert_eq!(wrap(&t, kid, &tok, "RSA-OAEP-256", b"dek2").await.status, StatusCode::OK);
    let e =
        call(&t, Method::POST, &format!("{kid}/encrypt?{API}"), &tok, Some(json!({"alg": "RSA1_5", "value": "AQAB"})))
            .await;
    assert_eq!(e.status, StatusCode::OK);
    assert_eq!(call(&t, Method::GET, &format!("{kid}?{API}"), &tok, None).await.status, StatusCode::OK);

    let r = unwrap(&t, kid, &tok, "RSA-OAEP-256", w.body["value"].as_str().unwrap()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body, reference_error("403_key_disabled_UNVERIFIED"));
    let d = call(
        &t,
        Method::POST,
        &format!("{kid}/decrypt?{API}"),
        &tok,
        Some(json!({"alg": "RSA1_5", "value": e.body["value"]})),
    )
    .await;
    assert_eq!((d.status, d.inner()), (StatusCode::FORBIDDEN, "KeyDisabled"));
    assert_eq!(d.message(), "Operation decrypt is not allowed on a disabled key.");
    let s = call(
        &t,
        Method::POST,
        &format!("{kid}/sign?{API}"),
        &tok,
        Some(json!({"alg": "RS256", "value": URL_SAFE_NO_PAD.encode([0u8; 32])})),
    )
    .await;
    assert_eq!((s.status, s.inner()), (StatusCode::FORBIDDEN, "KeyDisabled"));

    patch(&t, &vault, "off", &tok, json!({"attributes": {"enabled": true}})).await;
    let r = unwrap(&t, kid, &tok, "RSA-OAEP-256", w.body["value"].as_str().unwrap()).await;
    assert_eq!(URL_SAFE_NO_PAD.decode(r.body["value"].as_str().unwrap()).unwrap(), b"dek");
}

#[tokio::test]
async fn key_ops_are_enforced() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    let k = create_key(&t, &vault, "wraponly", &tok, json!({"kty": "RSA", "key_ops": ["wrapKey"]})).await;
    assert_eq!(k["key"]["key_ops"], json!(["wrapKey"]));
    let kid = k["key"]["kid"].as_str().unwrap();
    let w = wrap(&t, kid, &tok, "RSA-OAEP", b"x").await;
    assert_eq!(w.status, StatusCode::OK);
    let r = unwrap(&t, kid, &tok, "RSA-OAEP", w.body["value"].as_str().unwrap()).await;
    assert_eq!((r.status, r.code(), r.inner()), (StatusCode::FORBIDDEN, "Forbidden", "KeyOperationForbidden"));
    assert!(r.message().contains("unwrapKey") && r.message().contains("[wrapKey]"), "{}", r.message());
    let e = call(
        &t,
        Method::POST,
        &format!("{kid}/encrypt?{API}"),
        &tok,
        Some(json!({"alg": "RSA-OAEP", "value": "AQAB"})),
    )
    .await;
    assert_eq!(e.inner(), "KeyOperationForbidden");
    // Allowing it through an update takes effect at once.
    patch(&t, &vault, "wraponly", &tok, json!({"key_ops": ["wrapKey", "unwrapKey"]})).await;
    let r = unwrap(&t, kid, &tok, "RSA-OAEP", w.body["value"].as_str().unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn nbf_and_exp_follow_the_emulator_clock() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    let now = t.emu.ctx().now();
    let k = create_key(
        &t,
        &vault,
        "window",
        &tok,
        json!({"kty": "RSA", "attributes": {"nbf": now + 3600, "exp": now + 7200}}),
    )
    .await;
    assert_eq!(k["attributes"]["nbf"], now + 3600);
    let kid = k["key"]["kid"].as_str().unwrap();
    let r = wrap(&t, kid, &tok, "RSA-OAEP", b"x").await;
    assert_eq!((r.status, r.inner()), (StatusCode::FORBIDDEN, "KeyNotYetValid"));
    // Unwrap works outside the window (Key Vault's documented rule); make a ciphertext locally.
    let ct = local_encrypt(&k, "RSA-OAEP", b"early");
    let r = unwrap(&t, kid, &tok, "RSA-OAEP", &ct).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    shift_clock(&t, 5400);
    let tok = admin_token(&t);
    assert_eq!(wrap(&t, kid, &tok, "RSA-OAEP", b"x").await.status, StatusCode::OK);

    shift_clock(&t, 7300);
    let tok = admin_token(&t);
    let r = wrap(&t, kid, &tok, "RSA-OAEP", b"x").await;
    assert_eq!((r.status, r.inner()), (StatusCode::FORBIDDEN, "KeyExpired"));
    let s = call(
        &t,
        Method::POST,
        &format!("{kid}/sign?{API}"),
        &tok,
        Some(json!({"alg": "RS256", "value": URL_SAFE_NO_PAD.encode([0u8; 32])})),
    )
    .await;
    assert_eq!(s.inner(), "KeyExpired");
    let r = unwrap(&t, kid, &tok, "RSA-OAEP", &ct).await;
    assert_eq!(URL_SAFE_NO_PAD.decode(r.body["value"].as_str().unwrap()).unwrap(), b"early");
}

// ---------------------------------------------------------------------------------------------
// Authentication.

#[tokio::test]
async fn missing_token_gets_the_challenge_of_the_vaults_cloud() {
    let t = TestEmu::start().await;
    let tenant = t.bootstrap().tenant_id.clone();
    for (cloud, suffix, login) in [
        (AzureEnvironment::Azure, "vault.azure.net", "login.microsoftonline.com"),
        (AzureEnvironment::AzureChina, "vault.azure.cn", "login.chinacloudapi.cn"),
        (AzureEnvironment::AzureUsGovernment, "vault.usgovcloudapi.net", "login.microsoftonline.us"),
    ] {
        let vault = add_vault(&t, VaultSpec { cloud, ..Default::default() });
        // The SDKs' first request: no token and no body.
        let r = send_with(&t.http, Method::POST, &format!("https://{vault}.{suffix}/keys/k/create?{API}"), None, None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers["www-authenticate"],
            format!("Bearer authorization=\"https://{login}/{tenant}\", resource=\"https://{suffix}\"").as_str()
        );
        assert_eq!(r.body, reference_error("401_missing_token"));
        // The cloud's own audience works, with or without the trailing slash, and the public
        // cloud's audience does not work on a sovereign vault.
        let sp = t.bootstrap_sp();
        for aud in [format!("https://{suffix}"), format!("https://{suffix}/")] {
            let tok = t.mint(&sp, &aud);
            let r = call(
                &t,
                Method::POST,
                &format!("https://{vault}.{suffix}/keys/k/create?{API}"),
                &tok,
                Some(json!({"kty": "RSA"})),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{aud}: {}", r.body);
            assert!(r.body["key"]["kid"].as_str().unwrap().starts_with(&format!("https://{vault}.{suffix}/keys/k/")));
        }
        if cloud != AzureEnvironment::Azure {
            let tok = t.mint(&sp, "https://vault.azure.net");
            let r = call(&t, Method::GET, &format!("https://{vault}.{suffix}/keys?{API}"), &tok, None).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            assert!(r.message().starts_with("AKV10022: Invalid audience. Expected https://"), "{}", r.message());
        }
    }
}

#[tokio::test]
async fn bad_tokens_get_401_with_the_challenge() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let url = format!("{}/keys?{API}", vault_url(&vault));
    let sp = t.bootstrap_sp();

    let arm = t.mint(&sp, "https://management.azure.com/");
    let r = call(&t, Method::GET, &url, &arm, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body, reference_error("401_bad_audience"));
    assert!(r.headers.contains_key("www-authenticate"));

    // A principal of another tenant: AKV10032, even as that tenant's admin.
    let other = t
        .emu
        .ctx()
        .mutate(|s| -> anyhow::Result<_> { Ok(s.create_tenant_with_admin("Other", AzureEnvironment::Azure, 0)) })
        .unwrap();
    let other_sp = t.emu.ctx().read(|s| {
        s.sp_in_tenant(other.client_id.parse().unwrap(), other.tenant_id.parse().unwrap())
            .unwrap()
            .object_id
            .to_string()
    });
    let r = call(&t, Method::GET, &url, &t.mint(&other_sp, "https://vault.azure.net"), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.message().starts_with("AKV10032: Invalid issuer. Expected one of https://sts.windows.net/"),
        "{}",
        r.message()
    );
    assert!(r.message().ends_with(&format!("found https://sts.windows.net/{}/.", other.tenant_id)), "{}", r.message());

    let good = t.mint(&sp, "https://vault.azure.net");
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[2] = URL_SAFE_NO_PAD.encode([0u8; 256]);
    for (tok, msg) in
        [("not-a-jwt".to_string(), "AKV10020"), (parts.join("."), "AKV10046"), ("a.b.c".to_string(), "AKV10020")]
    {
        let r = call(&t, Method::GET, &url, &tok, None).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "Unauthorized"), "{tok}");
        assert!(r.message().starts_with(msg), "{}", r.message());
        assert!(r.headers.contains_key("www-authenticate"));
    }
    let r = t.http.get(&url).header("authorization", "Basic dXNlcjpwYXNz").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Expired: the same token after the clock moves past its lifetime.
    shift_clock(&t, 2 * 3600);
    let r = call(&t, Method::GET, &url, &good, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body, reference_error("401_expired"));
}

// ---------------------------------------------------------------------------------------------
// Authorization.

#[tokio::test]
async fn rbac_scopes_and_revocation_apply_to_tokens_already_issued() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let admin = admin_token(&t);
    let k1 = create_key(&t, &vault, "k1", &admin, json!({"kty": "RSA"})).await;
    let k2 = create_key(&t, &vault, "k2", &admin, json!({"kty": "RSA"})).await;
    let kid1 = k1["key"]["kid"].as_str().unwrap();
    let kid2 = k2["key"]["kid"].as_str().unwrap();
    let w1 = wrap(&t, kid1, &admin, "RSA-OAEP-256", b"one").await.body["value"].as_str().unwrap().to_string();
    let w2 = wrap(&t, kid2, &admin, "RSA-OAEP-256", b"two").await.body["value"].as_str().unwrap().to_string();

    let sp = add_sp(&t);
    let tok = t.mint(&sp, "https://vault.azure.net");
    let appid = t.emu.ctx().read(|s| s.service_principals[&sp.parse().unwrap()].app_id.to_string());

    // No grant: the exact RBAC body.
    let r = unwrap(&t, kid1, &tok, "RSA-OAEP-256", &w1).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let expected = format!(
        "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid={appid};oid={sp};iss=https://sts.windows.net/{}/\r\nAction: 'Microsoft.KeyVault/vaults/keys/unwrap/action'\r\nResource: '{}/keys/k1'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: null \r\nVault: {vault};location=eastus\r\n",
        t.bootstrap().tenant_id,
        vault_id(&t, &vault).to_ascii_lowercase()
    );
    assert_eq!(
        r.body,
        json!({"error": {"code": "Forbidden", "message": expected, "innererror": {"code": "ForbiddenByRbac"}}})
    );

    // Crypto User on key k2 only: k2 works, k1 does not.
    let on_k2 = assign(&t, &sp, &format!("{}/keys/k2", vault_id(&t, &vault)), CRYPTO_USER);
    assert_eq!(unwrap(&t, kid2, &tok, "RSA-OAEP-256", &w2).await.status, StatusCode::OK);
    assert_eq!(unwrap(&t, kid1, &tok, "RSA-OAEP-256", &w1).await.inner(), "ForbiddenByRbac");
    // Listing needs vault scope.
    let r = call(&t, Method::GET, &format!("{}/keys?{API}", vault_url(&vault)), &tok, None).await;
    assert_eq!(r.inner(), "ForbiddenByRbac");
    unassign(&t, &on_k2);

    // Crypto User at vault scope: every key, but no create or delete.
    let on_vault = assign(&t, &sp, &vault_id(&t, &vault), CRYPTO_USER);
    let r = unwrap(&t, kid1, &tok, "RSA-OAEP-256", &w1).await;
    assert_eq!(URL_SAFE_NO_PAD.decode(r.body["value"].as_str().unwrap()).unwrap(), b"one");
    assert_eq!(
        call(&t, Method::GET, &format!("{}/keys?{API}", vault_url(&vault)), &tok, None).await.status,
        StatusCode::OK
    );
    let before = keys_snapshot(&t, &vault);
    let r = call(
        &t,
        Method::POST,
        &format!("{}/keys/k3/create?{API}", vault_url(&vault)),
        &tok,
        Some(json!({"kty": "RSA"})),
    )
    .await;
    assert_eq!(r.inner(), "ForbiddenByRbac");
    assert!(r.message().contains("Action: 'Microsoft.KeyVault/vaults/keys/create/action'"));
    let r = call(&t, Method::DELETE, &format!("{}/keys/k1?{API}", vault_url(&vault)), &tok, None).await;
    assert_eq!(r.inner(), "ForbiddenByRbac");
    assert_eq!(keys_snapshot(&t, &vault), before);

    // Revocation: the NEXT request with the SAME token is refused.
    unassign(&t, &on_vault);
    let r = unwrap(&t, kid1, &tok, "RSA-OAEP-256", &w1).await;
    assert_eq!((r.status, r.inner()), (StatusCode::FORBIDDEN, "ForbiddenByRbac"));

    // Crypto Officer can run the whole lifecycle, deleted keys included.
    assign(&t, &sp, &vault_id(&t, &vault), CRYPTO_OFFICER);
    let base = vault_url(&vault);
    create_key(&t, &vault, "k3", &tok, json!({"kty": "RSA"})).await;
    for (m, path, status) in [
        (Method::POST, "keys/k3/rotate", StatusCode::OK),
        (Method::DELETE, "keys/k3", StatusCode::OK),
        (Method::GET, "deletedkeys", StatusCode::OK),
        (Method::GET, "deletedkeys/k3", StatusCode::OK),
        (Method::POST, "deletedkeys/k3/recover", StatusCode::OK),
        (Method::DELETE, "keys/k3", StatusCode::OK),
        (Method::DELETE, "deletedkeys/k3", StatusCode::NO_CONTENT),
    ] {
        let r = call(&t, m, &format!("{base}/{path}?{API}"), &tok, None).await;
        assert_eq!(r.status, status, "{path}: {}", r.body);
    }
}

#[tokio::test]
async fn access_policy_grant_then_removal() {
    let t = TestEmu::start().await;
    let admin_sp = t.bootstrap_sp();
    let vault =
        add_vault(&t, VaultSpec { rbac: false, policies: vec![policy(&t, &admin_sp, &["all"])], ..Default::default() });
    let admin = admin_token(&t);
    let k = create_key(&t, &vault, "pk", &admin, json!({"kty": "RSA"})).await;
    let kid = k["key"]["kid"].as_str().unwrap();
    let w = wrap(&t, kid, &admin, "RSA-OAEP", b"pol").await.body["value"].as_str().unwrap().to_string();

    let sp = add_sp(&t);
    let tok = t.mint(&sp, "https://vault.azure.net");
    let appid = t.emu.ctx().read(|s| s.service_principals[&sp.parse().unwrap()].app_id.to_string());
    // The bootstrap principal's RBAC roles do not count on an access-policy vault, and neither
    // do role assignments for the new principal.
    assign(&t, &sp, &vault_id(&t, &vault), CRYPTO_USER);
    let r = unwrap(&t, kid, &tok, "RSA-OAEP", &w).await;
    let expected = format!(
        "The user, group or application 'appid={appid};oid={sp};numgroups=0;iss=https://sts.windows.net/{}/' does not have keys unwrapKey permission on key vault '{vault};location=eastus'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
        t.bootstrap().tenant_id
    );
    assert_eq!(
        r.body,
        json!({"error": {"code": "Forbidden", "message": expected, "innererror": {"code": "ForbiddenByPolicy"}}})
    );

    // Permission names match case-insensitively, as `az` lowercases them.
    set_policies(&t, &vault, vec![policy(&t, &admin_sp, &["all"]), policy(&t, &sp, &["get", "wrapkey", "unwrapKey"])]);
    let r = unwrap(&t, kid, &tok, "RSA-OAEP", &w).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(wrap(&t, kid, &tok, "RSA-OAEP", b"x").await.status, StatusCode::OK);
    let r = call(&t, Method::GET, &format!("{}/keys?{API}", vault_url(&vault)), &tok, None).await;
    assert!(r.message().contains("does not have keys list permission"), "{}", r.message());

    set_policies(&t, &vault, vec![policy(&t, &admin_sp, &["all"]), policy(&t, &sp, &["get", "wrapKey"])]);
    let r = unwrap(&t, kid, &tok, "RSA-OAEP", &w).await;
    assert_eq!((r.status, r.inner()), (StatusCode::FORBIDDEN, "ForbiddenByPolicy"));
}

// ---------------------------------------------------------------------------------------------
// Network.

#[tokio::test]
async fn public_network_disabled_is_refused_except_through_its_private_endpoint() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec { public_network: false, ..Default::default() });
    let open = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    let url = format!("{}/keys?{API}", vault_url(&vault));

    // The challenge still comes first (clients need it to find the tenant).
    let r = send_with(&t.http, Method::GET, &url, None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call(&t, Method::GET, &url, &tok, None).await;
    assert_eq!((r.status, r.code(), r.inner()), (StatusCode::FORBIDDEN, "Forbidden", "ForbiddenByConnection"));
    assert!(r.message().starts_with(
        "Public network access is disabled and request is not from a trusted service nor via an approved private link.\r\nCaller: appid="
    ));
    assert!(r.message().ends_with(&format!("\r\nVault: {vault};location=eastus")), "{}", r.message());

    let ctx = t.emu.ctx();
    let pe_id = Uuid::new_v4();
    let (port, pe) = atrest_emulator::server::spawn_private_listener(ctx, pe_id, &vault, 0).await.unwrap();
    let private = support::client_for(SocketAddr::from(([127, 0, 0, 1], port)), &t.emu.ca_pem());
    // A listener alone is not an endpoint: Key Vault admits it only once the state records it
    // (what POST /_emulator/private-endpoints does; auto-approved, with no connection).
    let r = send_with(&private, Method::GET, &url, Some(&tok), None).await;
    assert_eq!((r.status, r.inner()), (StatusCode::FORBIDDEN, "ForbiddenByConnection"), "{}", r.body);
    ctx.mutate(|s| -> anyhow::Result<()> {
        s.settings.private_endpoints.push(atrest_emulator::state::PrivateEndpoint {
            id: pe_id,
            vault: vault.to_ascii_lowercase(),
            port,
            connection: None,
        });
        Ok(())
    })
    .unwrap();
    let r = send_with(
        &private,
        Method::POST,
        &format!("{}/keys/pk/create?{API}", vault_url(&vault)),
        Some(&tok),
        Some(br#"{"kty":"RSA"}"#.to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = send_with(&private, Method::GET, &url, Some(&tok), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // That endpoint belongs to `vault`; it does not reach another vault, even a public one.
    let r = send_with(&private, Method::GET, &format!("{}/keys?{API}", vault_url(&open)), Some(&tok), None).await;
    assert_eq!((r.status, r.inner()), (StatusCode::FORBIDDEN, "ForbiddenByConnection"));
    pe.abort();
}

// ---------------------------------------------------------------------------------------------
// Persistence and bad input.

#[tokio::test]
async fn keys_survive_a_restart() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    let k = create_key(&t, &vault, "durable", &tok, json!({"kty": "RSA", "tags": {"t": "1"}})).await;
    let kid = k["key"]["kid"].as_str().unwrap().to_string();
    let w = wrap(&t, &kid, &tok, "RSA-OAEP-256", b"survives").await.body["value"].as_str().unwrap().to_string();
    call(&t, Method::POST, &format!("{}/keys/gone/create?{API}", vault_url(&vault)), &tok, Some(json!({"kty": "RSA"})))
        .await;
    call(&t, Method::DELETE, &format!("{}/keys/gone?{API}", vault_url(&vault)), &tok, None).await;

    let t = t.restart().await;
    let tok = admin_token(&t);
    let r = call(&t, Method::GET, &format!("{kid}?{API}"), &tok, None).await;
    assert_eq!(r.body, k);
    let r = unwrap(&t, &kid, &tok, "RSA-OAEP-256", &w).await;
    assert_eq!(URL_SAFE_NO_PAD.decode(r.body["value"].as_str().unwrap()).unwrap(), b"survives");
    let r = call(&t, Method::GET, &format!("{}/deletedkeys/gone?{API}", vault_url(&vault)), &tok, None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn api_versions_and_unknown_vaults() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    let base = vault_url(&vault);
    for v in ["7.0", "7.6", "7.6-preview.2", "2016-10-01", "2025-07-01", "2026-03-01-preview"] {
        let r = call(&t, Method::GET, &format!("{base}/keys?api-version={v}"), &tok, None).await;
        assert_eq!(r.status, StatusCode::OK, "{v}: {}", r.body);
    }
    let r = call(&t, Method::GET, &format!("{base}/keys"), &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "BadParameter"));
    assert!(r.message().contains("api-version"), "{}", r.message());
    let r = call(&t, Method::GET, &format!("{base}/keys?api-version=9.9"), &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "BadParameter"));
    assert!(r.message().contains("(9.9) is not recognized"), "{}", r.message());
    let r = call(&t, Method::GET, &format!("https://nosuchvault.vault.azure.net/keys?{API}"), &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "VaultNotFound"));
    // A vault name exists per cloud: the same name on another cloud's suffix is another vault.
    let r = call(&t, Method::GET, &format!("https://{vault}.vault.azure.cn/keys?{API}"), &tok, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "VaultNotFound"));
}

#[tokio::test]
async fn bad_input_gets_key_vault_shaped_4xx_and_changes_nothing() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    let base = vault_url(&vault);
    let k = create_key(&t, &vault, "victim", &tok, json!({"kty": "RSA"})).await;
    let kid = k["key"]["kid"].as_str().unwrap().to_string();
    let before = keys_snapshot(&t, &vault);

    let cases: Vec<(Method, String, Vec<u8>, StatusCode)> = vec![
        // Create.
        (Method::POST, format!("{base}/keys/victim/create"), b"{".to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), b"".to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), b"[]".to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"key_size":2048}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"kty":"RSA","key_size":"2048"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"kty":"RSA","key_size":1024}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"kty":"RSA","key_size":-1}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"kty":"EC","crv":"P-256"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"kty":"DSA"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"kty":"RSA","key_ops":["fly"]}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"kty":"RSA","key_ops":"wrapKey"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"kty":"RSA","public_exponent":3}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"kty":"RSA","attributes":{"enabled":"yes"}}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"kty":"RSA","attributes":{"exportable":true}}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"kty":"RSA","attributes":{"nbf":20,"exp":10}}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/create"), br#"{"kty":"RSA","tags":{"a":1}}"#.to_vec(), StatusCode::BAD_REQUEST),
        (
            Method::POST,
            format!("{base}/keys/victim/create"),
            serde_json::to_vec(&json!({"kty": "RSA", "tags": (0..16).map(|i| (format!("t{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()})).unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (Method::POST, format!("{base}/keys/bad_name/create"), br#"{"kty":"RSA"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/{}/create", "a".repeat(128)), br#"{"kty":"RSA"}"#.to_vec(), StatusCode::BAD_REQUEST),
        // Update.
        (Method::PATCH, format!("{base}/keys/victim/"), b"nope".to_vec(), StatusCode::BAD_REQUEST),
        (Method::PATCH, format!("{base}/keys/victim/"), br#"{"key_ops":["teleport"]}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::PATCH, format!("{base}/keys/victim/"), br#"{"attributes":{"exp":"soon"}}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::PATCH, format!("{base}/keys/victim/0123456789abcdef0123456789abcdef"), b"{}".to_vec(), StatusCode::NOT_FOUND),
        (Method::PATCH, format!("{base}/keys/nosuchkey"), b"{}".to_vec(), StatusCode::NOT_FOUND),
        // Crypto.
        (Method::POST, format!("{kid}/unwrapkey"), b"{".to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{kid}/unwrapkey"), br#"{"alg":"RSA-OAEP"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{kid}/unwrapkey"), br#"{"alg":"RSA-OAEP","value":42}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{kid}/unwrapkey"), br#"{"alg":"RSA-OAEP","value":"!!!"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{kid}/unwrapkey"), br#"{"alg":"RSA-OAEP","value":"AQAB"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{kid}/unwrapkey"), serde_json::to_vec(&json!({"alg": "RSA-OAEP", "value": URL_SAFE_NO_PAD.encode([9u8; 256])})).unwrap(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{kid}/unwrapkey"), br#"{"alg":"A256KW","value":"AQAB"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{kid}/unwrapkey"), br#"{"alg":"rsa-oaep-512","value":"AQAB"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{kid}/wrapkey"), serde_json::to_vec(&json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode([1u8; 191])})).unwrap(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{kid}/encrypt"), serde_json::to_vec(&json!({"alg": "RSA1_5", "value": URL_SAFE_NO_PAD.encode([1u8; 246])})).unwrap(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{kid}/sign"), br#"{"alg":"ES256","value":"AQAB"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{kid}/verify"), br#"{"alg":"RS256","value":"AQAB"}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/keys/victim/0123456789abcdef0123456789abcdef/wrapkey"), br#"{"alg":"RSA-OAEP","value":"AQAB"}"#.to_vec(), StatusCode::NOT_FOUND),
        (Method::POST, format!("{base}/keys/nosuchkey//wrapkey"), br#"{"alg":"RSA-OAEP","value":"AQAB"}"#.to_vec(), StatusCode::NOT_FOUND),
        // Routes and methods.
        (Method::GET, format!("{kid}/wrapkey"), vec![], StatusCode::METHOD_NOT_ALLOWED),
        (Method::POST, format!("{kid}/teleport"), b"{}".to_vec(), StatusCode::NOT_FOUND),
        (Method::GET, format!("{base}/secrets/s"), vec![], StatusCode::NOT_FOUND),
        (Method::GET, format!("{base}/"), vec![], StatusCode::NOT_FOUND),
        (Method::PUT, format!("{base}/keys"), vec![], StatusCode::METHOD_NOT_ALLOWED),
        (Method::POST, format!("{base}/keys/victim/backup"), vec![], StatusCode::BAD_REQUEST),
        (Method::POST, format!("{base}/deletedkeys/victim/recover"), vec![], StatusCode::NOT_FOUND),
        (Method::DELETE, format!("{base}/deletedkeys/victim"), vec![], StatusCode::NOT_FOUND),
        (Method::PUT, format!("{base}/keys/imp"), br#"{"key":{"kty":"RSA","n":"AQAB","e":"AQAB"}}"#.to_vec(), StatusCode::BAD_REQUEST),
        (Method::PUT, format!("{base}/keys/imp"), br#"{"key":{"kty":"oct","k":"AQAB"}}"#.to_vec(), StatusCode::BAD_REQUEST),
        // Last, because it makes the key not yet valid: then an exp before that nbf is refused.
        (Method::PATCH, format!("{base}/keys/victim/"), br#"{"attributes":{"nbf":4102444800}}"#.to_vec(), StatusCode::OK),
        (Method::PATCH, format!("{base}/keys/victim/"), br#"{"attributes":{"exp":100}}"#.to_vec(), StatusCode::BAD_REQUEST),
        // Oversized body (the server limit is 256 KiB).
        (Method::POST, format!("{kid}/unwrapkey"), vec![b' '; 300 * 1024], StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (method, url, body, status) in cases {
        let full = format!("{url}?{API}");
        let r = send_with(&t.http, method.clone(), &full, Some(&tok), Some(body)).await;
        assert_eq!(r.status, status, "{method} {url}: {}", r.body);
        if !status.is_success() {
            assert!(
                !r.code().is_empty() && !r.message().is_empty(),
                "{method} {url}: not Key Vault shaped: {}",
                r.body
            );
        }
    }
    // Only the one successful PATCH (nbf in 2100) changed the key; undo it and compare.
    let r = patch(&t, &vault, "victim", &tok, json!({"attributes": {"nbf": 1}})).await;
    assert_eq!(r.status, StatusCode::OK);
    let after: Value = serde_json::from_str(&keys_snapshot(&t, &vault)).unwrap();
    let mut before: Value = serde_json::from_str(&before).unwrap();
    let mut after = after;
    for v in [&mut before, &mut after] {
        let rec = &mut v[0]["victim"]["versions"][0];
        rec["updated"] = json!(0);
        rec["nbf"] = json!(null);
    }
    assert_eq!(after, before);
    // The emulator still works after all that.
    let r = wrap(&t, &kid, &tok, "RSA-OAEP", b"fine").await;
    assert_eq!(r.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// Throughput (not part of the normal run: `cargo test --release -p atrest-emulator --test
// keyvault -- --ignored --nocapture unwrap_throughput`). The CLI's `atrest bench
// emulator-unwrap` is the reported benchmark; this one needs no other surface.

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`; `None` off Linux.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "throughput measurement; run in release"]
async fn unwrap_throughput_over_tls() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    let seconds: u64 = std::env::var("KV_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let concurrency: usize = std::env::var("KV_BENCH_CONCURRENCY").ok().and_then(|s| s.parse().ok()).unwrap_or(32);
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    // A realistic caller: a Crypto User at vault scope among a few other assignments.
    let sp = add_sp(&t);
    for _ in 0..20 {
        assign(&t, &add_sp(&t), &vault_id(&t, &vault), CRYPTO_USER);
    }
    assign(&t, &sp, &vault_id(&t, &vault), CRYPTO_USER);
    let user = t.mint(&sp, "https://vault.azure.net");
    let k = create_key(&t, &vault, "bench", &tok, json!({"kty": "RSA", "key_size": 2048})).await;
    let kid = k["key"]["kid"].as_str().unwrap().to_string();
    let w = wrap(&t, &kid, &tok, "RSA-OAEP-256", &[9u8; 32]).await.body["value"].as_str().unwrap().to_string();
    let body = Arc::new(serde_json::to_vec(&json!({"alg": "RSA-OAEP-256", "value": w})).unwrap());
    let url = Arc::new(format!("{kid}/unwrapkey?{API}"));

    // Raw aws-lc RSA-2048 OAEP decryptions on all cores, same process, same run.
    let raw = {
        use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let public = OaepPublicEncryptingKey::new(key.public_key()).unwrap();
        let mut ct = vec![0u8; public.ciphertext_size()];
        let n = public.encrypt(&OAEP_SHA256_MGF1SHA256, &[7u8; 32], &mut ct, None).unwrap().len();
        ct.truncate(n);
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let ops = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let cpu0 = process_cpu_seconds();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let key = OaepPrivateDecryptingKey::new(key.clone()).unwrap();
                let (ops, ct) = (ops.clone(), ct.clone());
                s.spawn(move || {
                    let mut out = vec![0u8; key.min_output_size()];
                    while Instant::now() < deadline {
                        key.decrypt(&OAEP_SHA256_MGF1SHA256, &ct, &mut out, None).unwrap();
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let n = ops.load(Ordering::Relaxed) as f64;
        let cpu = process_cpu_seconds().zip(cpu0).map(|(b, a)| (b - a) / n);
        (n / seconds as f64, cpu)
    };
    let (raw, raw_cpu) = raw;

    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = process_cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, body, user, ops, errors) =
            (t.http.clone(), url.clone(), body.clone(), user.clone(), ops.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = http
                    .post(url.as_str())
                    .bearer_auth(&user)
                    .header("content-type", "application/json")
                    .body(body.as_ref().clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let n = ops.load(Ordering::Relaxed) as f64;
    let rate = n / started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds().zip(cpu0).map(|(b, a)| (b - a) / n);
    println!("emulator unwrapkey RSA-2048 OAEP-256 over TLS, RBAC, {concurrency} in flight: {rate:.0}/s");
    println!("raw aws-lc-rs RSA-2048 OAEP-256 decrypt, all cores:                      {raw:.0}/s");
    println!("ratio {:.2}; errors {}", rate / raw, errors.load(Ordering::Relaxed));
    // Wall-clock rates depend on what else the machine runs; CPU time per operation does not.
    // The emulator figure includes the in-process client (reqwest, TLS, HTTP/2) as well.
    if let (Some(emu), Some(raw)) = (cpu, raw_cpu) {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) as f64;
        println!(
            "CPU per op: emulator+client {:.0} us, raw {:.0} us; projected on {cores} idle cores: {:.0}/s",
            emu * 1e6,
            raw * 1e6,
            cores / emu
        );
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0);
}

// ---------------------------------------------------------------------------------------------
// Backdating a key version (admin), for tests of policies on a key's age.

#[tokio::test]
async fn a_backdated_version_reports_the_older_created_and_still_works() {
    let t = TestEmu::start().await;
    let vault = add_vault(&t, VaultSpec::default());
    let tok = admin_token(&t);
    let arm = t.bootstrap_token("https://management.azure.com/");
    let v1 = create_key(&t, &vault, "aged", &tok, json!({"kty": "RSA"})).await;
    let v2 = create_key(&t, &vault, "aged", &tok, json!({"kty": "RSA"})).await;
    let kid1 = v1["key"]["kid"].as_str().unwrap().to_string();
    let version1 = kid1.rsplit('/').next().unwrap().to_string();
    let created1 = v1["attributes"]["created"].as_i64().unwrap();
    let before = keys_snapshot(&t, &vault);
    let admin_url = |path: &str| format!("https://management.azure.com/_emulator/vaults/{vault}/keys/{path}");

    let r = call(
        &t,
        Method::POST,
        &admin_url(&format!("AGED/versions/{version1}/backdate")),
        &arm,
        Some(json!({"days": 100})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["created"].as_i64().unwrap(), created1 - 100 * 86_400);
    let got = call(&t, Method::GET, &format!("{kid1}?{API}"), &tok, None).await;
    assert_eq!(got.body["attributes"]["created"].as_i64().unwrap(), created1 - 100 * 86_400, "{}", got.body);
    // The other version is untouched, and the backdated one still wraps and unwraps.
    let got = call(&t, Method::GET, &format!("{}?{API}", v2["key"]["kid"].as_str().unwrap()), &tok, None).await;
    assert_eq!(got.body["attributes"]["created"], v2["attributes"]["created"]);
    let w = wrap(&t, &kid1, &tok, "RSA-OAEP-256", b"data key").await;
    let u = unwrap(&t, &kid1, &tok, "RSA-OAEP-256", w.body["value"].as_str().unwrap()).await;
    assert_eq!(u.status, StatusCode::OK, "{}", u.body);
    let after = keys_snapshot(&t, &vault);

    // Bad input: a clear error, and nothing changes.
    for (path, body, status, code) in [
        (
            format!("aged/versions/{version1}/backdate"),
            json!({"days": 0}),
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
        ),
        (
            format!("aged/versions/{version1}/backdate"),
            json!({"days": 9999}),
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
        ),
        (
            format!("aged/versions/{version1}/backdate"),
            json!({"seconds": 5}),
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
        ),
        (format!("nosuchkey/versions/{version1}/backdate"), json!({"days": 1}), StatusCode::NOT_FOUND, "KeyNotFound"),
        (
            "aged/versions/0123456789abcdef/backdate".to_string(),
            json!({"days": 1}),
            StatusCode::NOT_FOUND,
            "KeyNotFound",
        ),
    ] {
        let r = call(&t, Method::POST, &admin_url(&path), &arm, Some(body.clone())).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{}", r.body);
        assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.body);
    }
    let r = call(
        &t,
        Method::POST,
        &format!("https://management.azure.com/_emulator/vaults/nosuchvault/keys/aged/versions/{version1}/backdate"),
        &arm,
        Some(json!({"days": 1})),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("VaultNotFound")),
        "{}",
        r.body
    );
    // Only the bootstrap principal's ARM token may call it.
    let r = call(
        &t,
        Method::POST,
        &admin_url(&format!("aged/versions/{version1}/backdate")),
        &tok,
        Some(json!({"days": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(keys_snapshot(&t, &vault), after);
    assert_ne!(before, after);
}
