//! Every refusal is an Atlas `ApiError` in `application/json`, whatever refused it (a handler,
//! a path or query extractor, the router); a repeated query parameter takes its first value;
//! echoed values are cut to 256 characters; `keyIdentifier: null` is refused and changes
//! nothing.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use atrest_emulator::scenario::VaultAuth;
use support::{ACCEPT, Env};

/// GET `path` (already encoded) with the owner's token; returns status, content type, raw body.
async fn get_raw(env: &Env, path: &str) -> (StatusCode, String, String) {
    let r = env
        .http
        .get(format!("{}{path}", env.url()))
        .bearer_auth(&env.token)
        .header("Accept", ACCEPT)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

fn assert_atlas_error(what: &str, status: StatusCode, ct: &str, body: &str, want: StatusCode, code: &str) -> Value {
    assert_eq!(status, want, "{what}: {body}");
    assert_eq!(ct, "application/json", "{what}: errors are application/json: {body}");
    let e: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: not JSON: {body}"));
    assert_eq!(e["error"], want.as_u16(), "{what}: {e}");
    assert_eq!(e["errorCode"], code, "{what}: {e}");
    assert_eq!(e["reason"], want.canonical_reason().unwrap(), "{what}: {e}");
    assert!(e["detail"].as_str().is_some_and(|d| d.len() > 30), "{what}: the detail explains: {e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_path_rejections_are_atlas_errors_and_repeats_take_the_first_value() {
    let env = Env::start().await;
    let group = env.project("api-errors-a").await;
    env.project("api-errors-b").await;

    // A repeated parameter: the first value wins (JAX-RS), on every paginated list.
    let (s, ct, body) = get_raw(&env, "/api/atlas/v2/groups?itemsPerPage=1&itemsPerPage=50&pageNum=1&pageNum=2").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(ct.starts_with("application/vnd.atlas.2023-01-01+json"), "{ct}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 1, "itemsPerPage=1 (the first) applies: {v}");
    assert_eq!(v["totalCount"], 2, "{v}");
    assert_eq!(v["results"][0]["name"], "api-errors-a", "pageNum=1 (the first) applies: {v}");
    for path in [
        format!("/api/atlas/v2/groups/{group}/events?pageNum=1&pageNum=2"),
        format!("/api/atlas/v2/groups/{group}/encryptionAtRest/AZURE/privateEndpoints?pageNum=1&pageNum=2"),
    ] {
        let (s, _, body) = get_raw(&env, &path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {body}");
    }

    // Bad values: 400 INVALID_ATTRIBUTE naming the parameter and what to send.
    for (q, name) in
        [("pageNum=abc", "pageNum"), ("itemsPerPage=-1", "itemsPerPage"), ("itemsPerPage=501", "itemsPerPage")]
    {
        for path in ["/api/atlas/v2/groups".to_string(), format!("/api/atlas/v2/groups/{group}/events")] {
            let (s, ct, body) = get_raw(&env, &format!("{path}?{q}")).await;
            let e = assert_atlas_error(q, s, &ct, &body, StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE");
            assert_eq!(e["parameters"], json!([name]), "{q}: {e}");
            assert!(e["detail"].as_str().unwrap().contains("whole number"), "{q}: says what to send: {e}");
        }
    }

    // Path parameters that cannot be read (not UTF-8 once decoded).
    let (s, ct, body) = get_raw(&env, "/api/atlas/v2/groups/%FF%FE").await;
    assert_atlas_error("groupId not UTF-8", s, &ct, &body, StatusCode::NOT_FOUND, "INVALID_GROUP_ID");
    let (s, ct, body) = get_raw(&env, &format!("/api/atlas/v2/groups/{group}/cloudProviderAccess/%FF")).await;
    assert_atlas_error("roleId not UTF-8", s, &ct, &body, StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    let (s, ct, body) =
        get_raw(&env, &format!("/api/atlas/v2/groups/{group}/encryptionAtRest/AZURE/privateEndpoints/%FF")).await;
    assert!(s.is_client_error(), "{body}");
    assert_eq!(ct, "application/json", "a handler still on axum's Path is answered as Atlas too: {body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert!(e["errorCode"].is_string() && e["error"] == s.as_u16(), "{e}");
    let (s, ct, body) = get_raw(&env, "/api/atlas/v2/groups/xyz").await;
    assert_atlas_error("groupId malformed", s, &ct, &body, StatusCode::NOT_FOUND, "INVALID_GROUP_ID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_kb_value_is_echoed_at_most_256_characters_long() {
    let env = Env::start().await;
    let group = env.project("api-errors-big").await;
    let big = "z".repeat(60 * 1024);
    let spaced = "z ".repeat(30 * 1024);

    let mut answers: Vec<(String, StatusCode, String)> = Vec::new();
    let send = |method: Method, path: String, body: Option<Value>| {
        let rb =
            env.http.request(method, format!("{}{path}", env.url())).bearer_auth(&env.token).header("Accept", ACCEPT);
        let rb = match body {
            Some(b) => rb.json(&b),
            None => rb,
        };
        async move {
            let r = rb.send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let cases: Vec<(&str, Method, String, Option<Value>)> = vec![
        (
            "cpa tenantId",
            Method::POST,
            format!("/api/atlas/v2/groups/{group}/cloudProviderAccess"),
            Some(json!({"providerName": "AZURE", "servicePrincipalId": big, "tenantId": big})),
        ),
        (
            "cpa provider enum",
            Method::POST,
            format!("/api/atlas/v2/groups/{group}/cloudProviderAccess"),
            Some(json!({"providerName": spaced, "servicePrincipalId": big, "tenantId": big})),
        ),
        (
            "ear roleId",
            Method::PATCH,
            format!("/api/atlas/v2/groups/{group}/encryptionAtRest"),
            Some(json!({"azureKeyVault": {"enabled": true, "roleId": big}})),
        ),
        (
            "ear keyIdentifier",
            Method::PATCH,
            format!("/api/atlas/v2/groups/{group}/encryptionAtRest"),
            Some(json!({"azureKeyVault": {"keyIdentifier": format!("https://{big}")}})),
        ),
        ("query value", Method::GET, format!("/api/atlas/v2/groups?pageNum={big}"), None),
        ("group id in path", Method::GET, format!("/api/atlas/v2/groups/{}", &big[..8000]), None),
        ("unknown path", Method::GET, format!("/api/atlas/v2/{}", &big[..8000]), None),
    ];
    for (what, method, path, body) in cases {
        let (s, text) = send(method, path, body).await;
        answers.push((what.to_string(), s, text));
    }
    for (what, s, text) in answers {
        assert!(s.is_client_error(), "{what}: {s} {}", &text[..text.len().min(300)]);
        assert!(text.len() < 2048, "{what}: a {} byte answer echoes the value whole", text.len());
        let e: Value = serde_json::from_str(&text).unwrap();
        if text.contains("zzzz") {
            assert!(text.contains('…'), "{what}: the cut is marked: {e}");
        }
        assert!(!text.contains(&"z".repeat(257)), "{what}: more than 256 characters echoed: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_identifier_null_is_refused_and_changes_nothing() {
    let env = Env::start().await;
    let group = env.project("api-errors-null").await;
    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    let (s, v) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let before = env.get_ear(&group).await;
    let version = env.status(&group).await["configVersion"].clone();

    let (s, e) = env.patch_ear(&group, json!({"keyIdentifier": null})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["errorCode"], "INVALID_ATTRIBUTE", "{e}");
    assert_eq!(e["parameters"], json!(["azureKeyVault.keyIdentifier"]), "{e}");
    let detail = e["detail"].as_str().unwrap();
    assert!(detail.contains("cannot be null") && detail.contains("leave it out"), "says what to send: {e}");
    assert_eq!(env.get_ear(&group).await, before, "the stored configuration changed");
    assert_eq!(env.status(&group).await["configVersion"], version, "the version changed");
}
