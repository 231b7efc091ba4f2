//! Microsoft Graph surface against a real emulator: the `az ad sp create` flow across tenants
//! (a customer admin creates the platform app's service principal, then the app gets tokens
//! there), filters, getByIds, PATCH/DELETE and their effect on tokens, applications and
//! federated identity credentials, admin-only writes, tenant scoping, and bad input.
//!
//! Admin tokens come from the real token endpoint with the tenant admin's client secret.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use uuid::Uuid;

use atrest_domain::AzureEnvironment;
use atrest_emulator::PrincipalInfo;
use atrest_emulator::state::{Application, SecretCredential};
use support::TestEmu;

const GRAPH: &str = "https://graph.microsoft.com";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
const VAULT_SCOPE: &str = "https://vault.azure.net/.default";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn new_tenant(t: &TestEmu, name: &str) -> PrincipalInfo {
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<PrincipalInfo> {
            Ok(s.create_tenant_with_admin(name, AzureEnvironment::Azure, now()))
        })
        .unwrap()
}

/// Register an app with a client secret directly in the state: (app id, object id, secret).
fn add_app(t: &TestEmu, home: &str, multi_tenant: bool, name: &str) -> (String, String, String) {
    let secret = atrest_emulator::state::new_client_secret();
    let app = Application {
        object_id: Uuid::new_v4(),
        app_id: Uuid::new_v4(),
        home_tenant: home.parse().unwrap(),
        display_name: name.into(),
        multi_tenant,
        secrets: vec![SecretCredential {
            key_id: Uuid::new_v4(),
            hint: secret[..3].to_string(),
            sha256: atrest_emulator::state::sha256_hex(secret.as_bytes()),
            end_date_time: now() + 86400,
            start_date_time: None,
            display_name: None,
        }],
        certificates: vec![],
        federated: vec![],
        created: now(),
    };
    let ids = (app.app_id.to_string(), app.object_id.to_string());
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.applications.insert(app.object_id, app);
            Ok(())
        })
        .unwrap();
    (ids.0, ids.1, secret)
}

async fn token(t: &TestEmu, tenant: &str, client: &str, secret: &str, scope: &str) -> (u16, Value) {
    let r = t
        .http
        .post(format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", secret),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn admin_token(t: &TestEmu, p: &PrincipalInfo) -> String {
    let (s, b) = token(t, &p.tenant_id, &p.client_id, &p.client_secret, GRAPH_SCOPE).await;
    assert_eq!(s, 200, "{b}");
    b["access_token"].as_str().unwrap().to_string()
}

struct Reply {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

async fn graph(t: &TestEmu, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
    let mut rb = t.http.request(method, format!("{GRAPH}{path}"));
    if let Some(tok) = token {
        rb = rb.bearer_auth(tok);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), headers }
}

#[track_caller]
fn assert_graph_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{}", r.body);
    assert!(r.body["error"]["message"].is_string(), "{}", r.body);
    assert!(r.body["error"]["innerError"]["request-id"].is_string(), "{}", r.body);
}

fn claims(token: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

use reqwest::Method;

#[tokio::test]
async fn az_ad_sp_create_in_a_customer_tenant_then_the_app_gets_tokens_there() {
    let t = TestEmu::start().await;
    let platform = t.bootstrap().clone();
    let customer = new_tenant(&t, "Contoso");
    let (app_id, _, app_secret) = add_app(&t, &platform.tenant_id, true, "atrest platform");
    let c_admin = admin_token(&t, &customer).await;

    // What az does first: the app is not in the customer's directory, so the filter is empty
    // and the object GET is a 404.
    let r =
        graph(&t, Method::GET, &format!("/v1.0/applications?$filter=appId eq '{app_id}'"), Some(&c_admin), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["value"], json!([]));
    assert_eq!(r.body["@odata.context"], "https://graph.microsoft.com/v1.0/$metadata#applications");
    let r = graph(&t, Method::GET, &format!("/v1.0/applications/{app_id}"), Some(&c_admin), None).await;
    assert_graph_error(&r, 404, "Request_ResourceNotFound");
    assert_eq!(
        r.body["error"]["message"],
        format!("Resource '{app_id}' does not exist or one of its queried reference-property objects are not present.")
    );

    // No SP yet: the app cannot sign in to the customer tenant.
    let (s, b) = token(&t, &customer.tenant_id, &app_id, &app_secret, VAULT_SCOPE).await;
    assert_eq!((s, b["error_codes"][0].as_u64()), (400, Some(700016)), "{b}");

    let r = graph(
        &t,
        Method::POST,
        "/v1.0/servicePrincipals",
        Some(&c_admin),
        Some(json!({"appId": app_id, "accountEnabled": true})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let sp = r.body.clone();
    assert_eq!(sp["@odata.context"], "https://graph.microsoft.com/v1.0/$metadata#servicePrincipals/$entity");
    assert_eq!(sp["appId"], app_id);
    assert_eq!(sp["accountEnabled"], true);
    assert_eq!(sp["appOwnerOrganizationId"], platform.tenant_id);
    assert_eq!(sp["displayName"], "atrest platform");
    assert_eq!(sp["servicePrincipalType"], "Application");
    assert_eq!(sp["servicePrincipalNames"], json!([app_id]));
    assert_eq!(sp["signInAudience"], "AzureADMultipleOrgs");
    let sp_id = sp["id"].as_str().unwrap().to_string();
    assert!(sp_id.parse::<Uuid>().is_ok());

    // A second create conflicts.
    let r = graph(&t, Method::POST, "/v1.0/servicePrincipals", Some(&c_admin), Some(json!({"appId": app_id}))).await;
    assert_graph_error(&r, 409, "Request_MultipleObjectsWithSameKeyValue");

    // Now the app gets tokens in the customer tenant, as its SP there.
    let (s, b) = token(&t, &customer.tenant_id, &app_id, &app_secret, VAULT_SCOPE).await;
    assert_eq!(s, 200, "{b}");
    let c = claims(b["access_token"].as_str().unwrap());
    assert_eq!(c["tid"], customer.tenant_id);
    assert_eq!(c["oid"], sp_id);
    assert_eq!(c["iss"], format!("https://sts.windows.net/{}/", customer.tenant_id));
    assert_eq!(c["appid"], app_id);
    assert_eq!(c["idtyp"], "app");

    // Reads: by id, by alternate key, by both filters az uses, and getByIds.
    let r = graph(&t, Method::GET, &format!("/v1.0/servicePrincipals/{sp_id}"), Some(&c_admin), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["id"], sp_id);
    let r = graph(&t, Method::GET, &format!("/v1.0/servicePrincipals(appId='{app_id}')"), Some(&c_admin), None).await;
    assert_eq!((r.status, r.body["id"].clone()), (200, json!(sp_id)));
    for filter in [
        format!("appId eq '{app_id}'"),
        format!("servicePrincipalNames/any(c:c eq '{app_id}')"),
        format!("servicePrincipalNames/any(x: x eq '{}')", app_id.to_uppercase()),
    ] {
        let r =
            graph(&t, Method::GET, &format!("/v1.0/servicePrincipals?$filter={filter}"), Some(&c_admin), None).await;
        assert_eq!(r.status, 200, "{filter}: {}", r.body);
        assert_eq!(r.body["@odata.context"], "https://graph.microsoft.com/v1.0/$metadata#servicePrincipals");
        let ids: Vec<&str> = r.body["value"].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec![sp_id.as_str()], "{filter}");
    }
    // Percent-encoded filter (as requests sends it) and `+` for spaces.
    let r = graph(
        &t,
        Method::GET,
        &format!("/v1.0/servicePrincipals?%24filter=appId+eq+%27{app_id}%27"),
        Some(&c_admin),
        None,
    )
    .await;
    assert_eq!(r.body["value"].as_array().unwrap().len(), 1, "{}", r.body);
    let r = graph(
        &t,
        Method::GET,
        &format!("/v1.0/servicePrincipals?$filter=appId eq '{}'", Uuid::new_v4()),
        Some(&c_admin),
        None,
    )
    .await;
    assert_eq!(r.body["value"], json!([]));
    let r = graph(
        &t,
        Method::POST,
        "/v1.0/directoryObjects/getByIds",
        Some(&c_admin),
        Some(json!({"ids": [sp_id, Uuid::new_v4().to_string(), "junk"], "types": ["user", "group", "servicePrincipal", "directoryObjectPartnerReference"]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["value"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["value"][0]["@odata.type"], "#microsoft.graph.servicePrincipal");
    assert_eq!(r.body["value"][0]["id"], sp_id);
    let r = graph(
        &t,
        Method::POST,
        "/v1.0/directoryObjects/getByIds",
        Some(&c_admin),
        Some(json!({"ids": [sp_id], "types": ["user"]})),
    )
    .await;
    assert_eq!(r.body["value"], json!([]));

    // Disable: no new tokens (7000112); enable again; delete: 700016 and 404.
    let r = graph(
        &t,
        Method::PATCH,
        &format!("/v1.0/servicePrincipals/{sp_id}"),
        Some(&c_admin),
        Some(json!({"accountEnabled": false})),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = graph(&t, Method::GET, &format!("/v1.0/servicePrincipals/{sp_id}"), Some(&c_admin), None).await;
    assert_eq!(r.body["accountEnabled"], false);
    let (s, b) = token(&t, &customer.tenant_id, &app_id, &app_secret, VAULT_SCOPE).await;
    assert_eq!((s, b["error_codes"][0].as_u64()), (400, Some(7000112)), "{b}");
    let r = graph(
        &t,
        Method::PATCH,
        &format!("/v1.0/servicePrincipals/{sp_id}"),
        Some(&c_admin),
        Some(json!({"accountEnabled": true, "displayName": "renamed"})),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let (s, b) = token(&t, &customer.tenant_id, &app_id, &app_secret, VAULT_SCOPE).await;
    assert_eq!(s, 200, "{b}");
    let r = graph(&t, Method::DELETE, &format!("/v1.0/servicePrincipals/{sp_id}"), Some(&c_admin), None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let (s, b) = token(&t, &customer.tenant_id, &app_id, &app_secret, VAULT_SCOPE).await;
    assert_eq!((s, b["error_codes"][0].as_u64()), (400, Some(700016)), "{b}");
    let r = graph(&t, Method::GET, &format!("/v1.0/servicePrincipals/{sp_id}"), Some(&c_admin), None).await;
    assert_graph_error(&r, 404, "Request_ResourceNotFound");
    let r = graph(&t, Method::DELETE, &format!("/v1.0/servicePrincipals/{sp_id}"), Some(&c_admin), None).await;
    assert_graph_error(&r, 404, "Request_ResourceNotFound");
}

#[tokio::test]
async fn writes_need_a_directory_admin_and_everything_is_scoped_to_the_callers_tenant() {
    let t = TestEmu::start().await;
    let platform = t.bootstrap().clone();
    let customer = new_tenant(&t, "Contoso");
    let c_admin = admin_token(&t, &customer).await;
    let p_admin = admin_token(&t, &platform).await;

    // A single-tenant app of the platform cannot be installed in the customer tenant.
    let (single, single_obj, _) = add_app(&t, &platform.tenant_id, false, "single");
    let r = graph(&t, Method::POST, "/v1.0/servicePrincipals", Some(&c_admin), Some(json!({"appId": single}))).await;
    assert_graph_error(&r, 400, "Request_BadRequest");
    assert_eq!(
        r.body["error"]["message"],
        format!("The appId '{single}' of the service principal does not reference a valid application object.")
    );
    for bad in
        [json!({"appId": Uuid::new_v4().to_string()}), json!({"appId": "not-a-guid"}), json!({"appId": 42}), json!({})]
    {
        let r = graph(&t, Method::POST, "/v1.0/servicePrincipals", Some(&c_admin), Some(bad.clone())).await;
        assert_graph_error(&r, 400, "Request_BadRequest");
    }
    // In its home tenant it can.
    let r = graph(&t, Method::POST, "/v1.0/servicePrincipals", Some(&p_admin), Some(json!({"appId": single}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let p_sp = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["appOwnerOrganizationId"], platform.tenant_id);

    // The customer cannot see the platform's objects.
    let r = graph(&t, Method::GET, &format!("/v1.0/servicePrincipals/{p_sp}"), Some(&c_admin), None).await;
    assert_graph_error(&r, 404, "Request_ResourceNotFound");
    let r = graph(&t, Method::DELETE, &format!("/v1.0/servicePrincipals/{p_sp}"), Some(&c_admin), None).await;
    assert_graph_error(&r, 404, "Request_ResourceNotFound");
    let r = graph(&t, Method::GET, &format!("/v1.0/applications/{single_obj}"), Some(&c_admin), None).await;
    assert_graph_error(&r, 404, "Request_ResourceNotFound");
    let r = graph(&t, Method::GET, &format!("/v1.0/applications/{single_obj}"), Some(&p_admin), None).await;
    assert_eq!((r.status, r.body["appId"].clone()), (200, json!(single)));
    let r =
        graph(&t, Method::GET, &format!("/v1.0/applications?$filter=appId eq '{single}'"), Some(&p_admin), None).await;
    assert_eq!(r.body["value"].as_array().unwrap().len(), 1);
    let r = graph(&t, Method::GET, "/v1.0/servicePrincipals", Some(&c_admin), None).await;
    let tenants: Vec<Value> =
        r.body["value"].as_array().unwrap().iter().map(|v| v["appOwnerOrganizationId"].clone()).collect();
    assert!(tenants.iter().all(|t| *t == json!(customer.tenant_id)), "{tenants:?}");

    // A principal that is not a directory admin reads but does not write.
    let (app, _, secret) = add_app(&t, &customer.tenant_id, false, "worker");
    let r = graph(&t, Method::POST, "/v1.0/servicePrincipals", Some(&c_admin), Some(json!({"appId": app}))).await;
    let worker_sp = r.body["id"].as_str().unwrap().to_string();
    let (s, b) = token(&t, &customer.tenant_id, &app, &secret, GRAPH_SCOPE).await;
    assert_eq!(s, 200, "{b}");
    let worker = b["access_token"].as_str().unwrap().to_string();
    let (other, _, _) = add_app(&t, &customer.tenant_id, false, "other");
    let r = graph(&t, Method::POST, "/v1.0/servicePrincipals", Some(&worker), Some(json!({"appId": other}))).await;
    assert_graph_error(&r, 403, "Authorization_RequestDenied");
    assert_eq!(r.body["error"]["message"], "Insufficient privileges to complete the operation.");
    let r = graph(
        &t,
        Method::PATCH,
        &format!("/v1.0/servicePrincipals/{worker_sp}"),
        Some(&worker),
        Some(json!({"accountEnabled": false})),
    )
    .await;
    assert_graph_error(&r, 403, "Authorization_RequestDenied");
    let r = graph(&t, Method::DELETE, &format!("/v1.0/servicePrincipals/{worker_sp}"), Some(&worker), None).await;
    assert_graph_error(&r, 403, "Authorization_RequestDenied");
    let r = graph(&t, Method::POST, "/v1.0/applications", Some(&worker), Some(json!({"displayName": "x"}))).await;
    assert_graph_error(&r, 403, "Authorization_RequestDenied");
    let r = graph(&t, Method::GET, &format!("/v1.0/servicePrincipals/{worker_sp}"), Some(&worker), None).await;
    assert_eq!(r.status, 200);

    // Once the caller's own SP is disabled, its outstanding token stops working.
    let r = graph(
        &t,
        Method::PATCH,
        &format!("/v1.0/servicePrincipals/{worker_sp}"),
        Some(&c_admin),
        Some(json!({"accountEnabled": false})),
    )
    .await;
    assert_eq!(r.status, 204);
    let r = graph(&t, Method::GET, &format!("/v1.0/servicePrincipals/{worker_sp}"), Some(&worker), None).await;
    assert_graph_error(&r, 401, "InvalidAuthenticationToken");
}

#[tokio::test]
async fn graph_bad_input_gets_graph_shaped_4xx() {
    let t = TestEmu::start().await;
    let b = t.bootstrap().clone();
    let admin = admin_token(&t, &b).await;

    // Authentication.
    let r = graph(&t, Method::GET, "/v1.0/servicePrincipals", None, None).await;
    assert_graph_error(&r, 401, "InvalidAuthenticationToken");
    assert!(r.headers.get("www-authenticate").is_some());
    for bad in ["garbage", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"] {
        let r = graph(&t, Method::GET, "/v1.0/servicePrincipals", Some(bad), None).await;
        assert_graph_error(&r, 401, "InvalidAuthenticationToken");
    }
    let (_, v) = token(&t, &b.tenant_id, &b.client_id, &b.client_secret, VAULT_SCOPE).await;
    let r = graph(&t, Method::GET, "/v1.0/servicePrincipals", v["access_token"].as_str(), None).await;
    assert_graph_error(&r, 401, "InvalidAuthenticationToken");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("Invalid audience"));
    // The Graph app id is an accepted audience too.
    let (_, v) =
        token(&t, &b.tenant_id, &b.client_id, &b.client_secret, "00000003-0000-0000-c000-000000000000/.default").await;
    let r = graph(&t, Method::GET, "/v1.0/servicePrincipals", v["access_token"].as_str(), None).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Filters.
    for f in [
        "appId ne 'x'",
        "foo eq 'x'",
        "appId eq",
        "appId eq 'a' or appId eq 'b'",
        "servicePrincipalNames/any(c:d eq 'x')",
        "%%%",
    ] {
        let r = graph(&t, Method::GET, &format!("/v1.0/servicePrincipals?$filter={f}"), Some(&admin), None).await;
        assert_graph_error(&r, 400, "Request_UnsupportedQuery");
    }
    let r =
        graph(&t, Method::GET, "/v1.0/applications?$filter=servicePrincipalNames/any(c:c eq 'x')", Some(&admin), None)
            .await;
    assert_graph_error(&r, 400, "Request_UnsupportedQuery");
    let r =
        graph(&t, Method::GET, "/v1.0/applications?$filter=identifierUris/any(s:s eq 'api://x')", Some(&admin), None)
            .await;
    assert_eq!((r.status, r.body["value"].clone()), (200, json!([])));

    // Bodies.
    let r = t
        .http
        .post(format!("{GRAPH}/v1.0/servicePrincipals"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "Request_BadRequest");
    let r = graph(&t, Method::POST, "/v1.0/directoryObjects/getByIds", Some(&admin), Some(json!({"ids": "x"}))).await;
    assert_graph_error(&r, 400, "Request_BadRequest");
    let r = graph(&t, Method::POST, "/v1.0/directoryObjects/getByIds", Some(&admin), Some(json!({}))).await;
    assert_graph_error(&r, 400, "Request_BadRequest");
    let sp = t.bootstrap_sp();
    for patch in [json!({"accountEnabled": "no"}), json!({"appId": "x"}), json!({"displayName": ""}), json!([1])] {
        let r =
            graph(&t, Method::PATCH, &format!("/v1.0/servicePrincipals/{sp}"), Some(&admin), Some(patch.clone())).await;
        assert_graph_error(&r, 400, "Request_BadRequest");
    }
    let big = "x".repeat(300 * 1024);
    let r = graph(&t, Method::POST, "/v1.0/servicePrincipals", Some(&admin), Some(json!({"appId": big}))).await;
    assert_graph_error(&r, 413, "Request_EntityTooLarge");

    // Routes and identifiers.
    let r = graph(&t, Method::GET, "/v1.0/users", Some(&admin), None).await;
    assert_graph_error(&r, 400, "BadRequest");
    let r = graph(&t, Method::GET, "/v2.0/servicePrincipals", Some(&admin), None).await;
    assert_graph_error(&r, 400, "BadRequest");
    let r = graph(&t, Method::GET, "/v1.0/servicePrincipals/not-a-guid", Some(&admin), None).await;
    assert_graph_error(&r, 400, "Request_BadRequest");
    let r = graph(&t, Method::GET, "/v1.0/servicePrincipals(appId='unterminated)", Some(&admin), None).await;
    assert_graph_error(&r, 400, "Request_BadRequest");
    let r = graph(&t, Method::PUT, "/v1.0/servicePrincipals", Some(&admin), Some(json!({}))).await;
    assert_graph_error(&r, 405, "Request_BadRequest");
    let r = graph(&t, Method::GET, "/v1.0/directoryObjects/getByIds", Some(&admin), None).await;
    assert_graph_error(&r, 405, "Request_BadRequest");

    // Expired token (the emulator's clock moved on).
    t.emu
        .ctx()
        .mutate(|s| -> anyhow::Result<()> {
            s.settings.clock_shift_secs = 7200;
            Ok(())
        })
        .unwrap();
    let r = graph(&t, Method::GET, "/v1.0/servicePrincipals", Some(&admin), None).await;
    assert_graph_error(&r, 401, "InvalidAuthenticationToken");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn applications_and_federated_identity_credentials() {
    let t = TestEmu::start().await;
    let b = t.bootstrap().clone();
    let admin = admin_token(&t, &b).await;
    let customer = new_tenant(&t, "Contoso");
    let c_admin = admin_token(&t, &customer).await;

    let r = graph(
        &t,
        Method::POST,
        "/v1.0/applications",
        Some(&admin),
        Some(json!({"displayName": "platform", "signInAudience": "AzureADMultipleOrgs"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["@odata.context"], "https://graph.microsoft.com/v1.0/$metadata#applications/$entity");
    assert_eq!(r.body["signInAudience"], "AzureADMultipleOrgs");
    let obj = r.body["id"].as_str().unwrap().to_string();
    let app_id = r.body["appId"].as_str().unwrap().to_string();
    for bad in [json!({}), json!({"displayName": "x", "signInAudience": "PersonalMicrosoftAccount"})] {
        let r = graph(&t, Method::POST, "/v1.0/applications", Some(&admin), Some(bad)).await;
        assert_graph_error(&r, 400, "Request_BadRequest");
    }

    let fic = |name: &str, subject: &str| {
        json!({"name": name, "issuer": "https://token.actions.githubusercontent.com", "subject": subject,
               "audiences": ["api://AzureADTokenExchange"], "description": "ci"})
    };
    let r = graph(
        &t,
        Method::POST,
        &format!("/v1.0/applications/{obj}/federatedIdentityCredentials"),
        Some(&admin),
        Some(fic("ci-main", "repo:o/r:ref:refs/heads/main")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["audiences"], json!(["api://AzureADTokenExchange"]));
    assert!(
        r.body["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with(&format!("applications('{obj}')/federatedIdentityCredentials/$entity"))
    );
    let fic_id = r.body["id"].as_str().unwrap().to_string();
    let r = graph(
        &t,
        Method::POST,
        &format!("/v1.0/applications(appId='{app_id}')/federatedIdentityCredentials"),
        Some(&admin),
        Some(fic("ci-prod", "repo:o/r:environment:prod")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // The credential is in the model the token endpoint reads.
    let stored = t.emu.ctx().read(|s| s.applications[&obj.parse().unwrap()].federated.len());
    assert_eq!(stored, 2);

    let r = graph(
        &t,
        Method::POST,
        &format!("/v1.0/applications/{obj}/federatedIdentityCredentials"),
        Some(&admin),
        Some(fic("ci-main", "other")),
    )
    .await;
    assert_graph_error(&r, 409, "Request_MultipleObjectsWithSameKeyValue");
    for bad in [
        json!({"name": "x", "issuer": "https://i", "subject": "s"}),
        json!({"name": "bad name!", "issuer": "https://i", "subject": "s"}),
        json!({"name": "okname", "issuer": "not a url", "subject": "s"}),
        json!({"name": "okname", "issuer": "https://i", "subject": ""}),
        json!({"name": "okname", "issuer": "https://i", "subject": "s", "audiences": ["a", "b"]}),
        json!({"name": "okname", "subject": "s"}),
    ] {
        let r = graph(
            &t,
            Method::POST,
            &format!("/v1.0/applications/{obj}/federatedIdentityCredentials"),
            Some(&admin),
            Some(bad.clone()),
        )
        .await;
        assert_graph_error(&r, 400, "Request_BadRequest");
    }
    // At most 20.
    for i in 2..20 {
        let r = graph(
            &t,
            Method::POST,
            &format!("/v1.0/applications/{obj}/federatedIdentityCredentials"),
            Some(&admin),
            Some(fic(&format!("fic-{i}"), &format!("s{i}"))),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = graph(
        &t,
        Method::POST,
        &format!("/v1.0/applications/{obj}/federatedIdentityCredentials"),
        Some(&admin),
        Some(fic("fic-21", "s21")),
    )
    .await;
    assert_graph_error(&r, 400, "Request_BadRequest");
    let r =
        graph(&t, Method::GET, &format!("/v1.0/applications/{obj}/federatedIdentityCredentials"), Some(&admin), None)
            .await;
    assert_eq!(r.body["value"].as_array().unwrap().len(), 20);
    let r = graph(
        &t,
        Method::GET,
        &format!("/v1.0/applications/{obj}/federatedIdentityCredentials/ci-main"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.body["id"], fic_id);
    let r = graph(
        &t,
        Method::DELETE,
        &format!("/v1.0/applications/{obj}/federatedIdentityCredentials/{fic_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = graph(
        &t,
        Method::GET,
        &format!("/v1.0/applications/{obj}/federatedIdentityCredentials/{fic_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_graph_error(&r, 404, "Request_ResourceNotFound");

    // Another tenant's admin sees none of it.
    let r =
        graph(&t, Method::GET, &format!("/v1.0/applications/{obj}/federatedIdentityCredentials"), Some(&c_admin), None)
            .await;
    assert_graph_error(&r, 404, "Request_ResourceNotFound");
    let r = graph(
        &t,
        Method::POST,
        &format!("/v1.0/applications(appId='{app_id}')/federatedIdentityCredentials"),
        Some(&c_admin),
        Some(fic("x-y", "z")),
    )
    .await;
    assert_graph_error(&r, 404, "Request_ResourceNotFound");
}

#[tokio::test]
async fn me_with_an_app_only_token_is_refused_as_graph_does() {
    let t = TestEmu::start().await;
    let admin = admin_token(&t, &t.bootstrap().clone()).await;
    for path in ["/v1.0/me", "/v1.0/ME", "/beta/me", "/v1.0/me/memberOf", "/v1.0/me?$select=id"] {
        let r = graph(&t, Method::GET, path, Some(&admin), None).await;
        assert_graph_error(&r, 400, "BadRequest");
        assert_eq!(
            r.body["error"]["message"], "/me request is only valid with delegated authentication flow.",
            "{path}"
        );
    }
    // Authentication still comes first.
    let r = graph(&t, Method::GET, "/v1.0/me", None, None).await;
    assert_graph_error(&r, 401, "InvalidAuthenticationToken");
}
