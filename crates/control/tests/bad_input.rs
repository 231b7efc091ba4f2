//! Every bad input to PATCH encryptionAtRest gets a clear 4xx with the exact Atlas error code,
//! and the stored configuration is unchanged afterwards (same body, same version).

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use atrest_emulator::scenario::VaultAuth;
use support::{ACCEPT, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_patches_are_refused_and_change_nothing() {
    let env = Env::start().await;
    let group = env.project("bad-input").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    let (s, v) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let before = env.get_ear(&group).await;
    let version = env.status(&group).await["configVersion"].clone();

    let kid_with = |kid: &str| json!({"azureKeyVault": {"keyIdentifier": kid}}).to_string();
    let other_vault = t.kid.replace(&t.vault, "othervault1");
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("malformed JSON", r#"{"azureKeyVault": {"#.into(), StatusCode::BAD_REQUEST, "INVALID_JSON"),
        ("not an object", "[1,2]".into(), StatusCode::BAD_REQUEST, "INVALID_JSON"),
        ("wrong type: enabled", json!({"azureKeyVault": {"enabled": "yes"}}).to_string(), StatusCode::BAD_REQUEST, "INVALID_JSON_ATTRIBUTE"),
        ("wrong type: block", json!({"azureKeyVault": "on"}).to_string(), StatusCode::BAD_REQUEST, "INVALID_JSON_ATTRIBUTE"),
        ("wrong type: keyIdentifier", json!({"azureKeyVault": {"keyIdentifier": 5}}).to_string(), StatusCode::BAD_REQUEST, "INVALID_JSON_ATTRIBUTE"),
        ("unknown attribute", json!({"azureKeyVault": {"keyVaultNme": "x"}}).to_string(), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        ("unknown top-level attribute", json!({"azureKeyVaults": {}}).to_string(), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        ("bad subscription UUID", json!({"azureKeyVault": {"subscriptionID": "not-a-uuid"}}).to_string(), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        ("bad roleId", json!({"azureKeyVault": {"roleId": "xyz"}}).to_string(), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        // Found by schemathesis: enabled: false used to remove the configuration whatever else
        // the body held.
        ("bad tenantID beside enabled: false", json!({"azureKeyVault": {"enabled": false, "tenantID": "not-a-uuid"}}).to_string(), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        ("bad clientID beside enabled: false", json!({"azureKeyVault": {"enabled": false, "clientID": "x"}}).to_string(), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        ("upper-case roleId beside enabled: false", json!({"azureKeyVault": {"enabled": false, "roleId": "0123456789ABCDEF01234567"}}).to_string(), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        ("unknown roleId", json!({"azureKeyVault": {"roleId": "0123456789abcdef01234567"}}).to_string(), StatusCode::NOT_FOUND, "CLOUD_PROVIDER_ACCESS_ROLE_NOT_FOUND"),
        ("http keyIdentifier", kid_with(&t.kid.replace("https://", "http://")), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        ("suffix of another cloud", kid_with(&t.kid.replace("vault.azure.net", "vault.azure.cn")), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        ("missing key name", kid_with(&format!("https://{}.vault.azure.net/keys/", t.vault)), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        ("vault name mismatch", kid_with(&other_vault), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        ("unknown environment", json!({"azureKeyVault": {"azureEnvironment": "AZURE_MARS"}}).to_string(), StatusCode::BAD_REQUEST, "INVALID_ENUM_VALUE"),
        (
            "both modes",
            json!({"azureKeyVault": {"roleId": role, "clientID": uuid::Uuid::new_v4().to_string(), "tenantID": t.customer.tenant_id(), "secret": "s3cret"}}).to_string(),
            StatusCode::BAD_REQUEST,
            "INVALID_ATTRIBUTE",
        ),
        ("AWS configured", json!({"awsKms": {"enabled": true, "customerMasterKeyID": "k"}}).to_string(), StatusCode::BAD_REQUEST, "CLOUD_PROVIDER_NOT_SUPPORTED"),
        // Found by schemathesis: "" breaks the spec's minLength 16.
        ("empty AWS accessKeyID", json!({"awsKms": {"accessKeyID": ""}, "enabledForSearchNodes": false}).to_string(), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        ("empty GCP roleId", json!({"googleCloudKms": {"enabled": false, "roleId": ""}}).to_string(), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        ("search nodes", json!({"enabledForSearchNodes": true}).to_string(), StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE"),
        (
            "oversized body",
            json!({"azureKeyVault": {"keyVaultName": "x".repeat(200 * 1024)}}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
        ),
    ];
    for (what, body, status, code) in cases {
        let r = env
            .http
            .patch(format!("{}/api/atlas/v2/groups/{group}/encryptionAtRest", env.url()))
            .bearer_auth(&env.token)
            .header("Accept", ACCEPT)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{what}");
        assert_eq!(r.headers()["content-type"], "application/json", "{what}: errors are application/json");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["errorCode"], code, "{what}: {e}");
        assert_eq!(e["error"], status.as_u16(), "{what}");
        assert_eq!(e["reason"], status.canonical_reason().unwrap(), "{what}");
        assert!(e["detail"].as_str().is_some_and(|d| d.len() > 20), "{what}: the detail explains: {e}");
        assert_eq!(env.get_ear(&group).await, before, "{what}: the stored configuration changed");
        assert_eq!(env.status(&group).await["configVersion"], version, "{what}: the version changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_types_and_versions_are_enforced() {
    let env = Env::start().await;
    let group = env.project("media").await;
    let url = format!("{}/api/atlas/v2/groups/{group}/encryptionAtRest", env.url());
    // No Accept, a plain JSON Accept, a date before the first version: 406 INVALID_VERSION_DATE.
    for accept in [None, Some("application/json"), Some("application/vnd.atlas.2022-12-31+json")] {
        let mut rb = env.http.get(&url).bearer_auth(&env.token);
        if let Some(a) = accept {
            rb = rb.header("Accept", a);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE, "{accept:?}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["errorCode"], "INVALID_VERSION_DATE");
    }
    // A later date resolves to 2023-01-01, which the response names.
    let r = env
        .http
        .get(&url)
        .bearer_auth(&env.token)
        .header("Accept", "application/vnd.atlas.2025-03-12+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], ACCEPT);
    // envelope and pretty.
    let r = env
        .http
        .get(format!("{url}?envelope=true&pretty=true"))
        .bearer_auth(&env.token)
        .header("Accept", ACCEPT)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains('\n'), "pretty output is indented: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["content"]["azureKeyVault"]["enabled"], false);
    // Errors keep Atlas's error body under envelope=true (it names the status in `error`), and
    // a flag that is not `true` is false, as JAX-RS parses it: never a 400.
    let missing = format!("{}/api/atlas/v2/groups/{}/encryptionAtRest", env.url(), "0".repeat(24));
    let r = env
        .http
        .get(format!("{missing}?envelope=true&pretty=null"))
        .bearer_auth(&env.token)
        .header("Accept", ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let text = r.text().await.unwrap();
    assert!(!text.contains('\n'), "pretty=null is false: {text}");
    let e: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((e["error"].as_u64(), e["errorCode"].as_str()), (Some(404), Some("GROUP_NOT_FOUND")), "{e}");
    assert!(e.get("content").is_none(), "{e}");
    // A body that is not JSON by its media type: 415.
    let r = env
        .http
        .patch(&url)
        .bearer_auth(&env.token)
        .header("Accept", ACCEPT)
        .header("Content-Type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Unknown routes answer in Atlas's shape.
    let (s, e) = env.atlas(Method::GET, "/api/atlas/v2/nothing-here", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e["errorCode"], "RESOURCE_NOT_FOUND");
}
