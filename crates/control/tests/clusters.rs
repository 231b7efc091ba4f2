//! The clusters resource over real HTTP: create/read/update/delete in the Atlas
//! `ClusterDescription20240805` shape with unknown nested attributes echoed exactly, the
//! per-operation media type versions, the Encryption at Rest rules with their codes, and bad
//! input refused with nothing stored.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use atrest_emulator::scenario::VaultAuth;
use support::Env;

const V20240805: &str = "application/vnd.atlas.2024-08-05+json";

async fn call(env: &Env, method: Method, path: &str, accept: &str, body: Option<String>) -> (StatusCode, Value) {
    let mut rb =
        env.http.request(method, format!("{}{path}", env.url())).bearer_auth(&env.token).header("Accept", accept);
    if let Some(b) = body {
        rb = rb.header("Content-Type", "application/json").body(b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
}

fn body(name: &str, provider: &str) -> Value {
    json!({
        "name": name,
        "clusterType": "REPLICASET",
        "encryptionAtRestProvider": provider,
        "backupEnabled": false,
        "replicationSpecs": [{
            "zoneName": "Zone 1",
            "regionConfigs": [{
                "providerName": "AZURE",
                "regionName": "US_EAST_2",
                "priority": 7,
                "electableSpecs": {"instanceSize": "M10", "nodeCount": 3, "futureKnob": {"deep": [1, "two", null]}}
            }]
        }],
        "tags": [{"key": "team", "value": "db"}],
        "id": "ignored-read-only",
        "stateName": "IGNORED"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_round_trip_and_follow_the_ear_rules() {
    let env = Env::start().await;
    let group = env.project("clusters").await;
    let path = format!("/api/atlas/v2/groups/{group}/clusters");

    // AZURE needs the project's Azure Key Vault configuration.
    let (s, e) = call(&env, Method::POST, &path, V20240805, Some(body("Cluster0", "AZURE").to_string())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["errorCode"], "ENCRYPTION_AT_REST_NOT_ENABLED");

    let t = env.tenant(VaultAuth::Rbac).await;
    let role = env.register(&group, &t).await;
    t.grant_rbac().await;
    let (s, v) = env.patch_ear(&group, t.ear_block(&role)).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let sent = body("Cluster0", "AZURE");
    let (s, c) = call(&env, Method::POST, &path, "application/vnd.atlas.2024-10-23+json", Some(sent.to_string())).await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert_eq!(c["name"], "Cluster0");
    assert_eq!(c["groupId"], group.as_str());
    assert_eq!(c["stateName"], "CREATING");
    assert_eq!(c["encryptionAtRestProvider"], "AZURE");
    assert_eq!(c["paused"], false);
    assert_eq!(c["id"].as_str().unwrap().len(), 24);
    assert!(c["createDate"].as_str().unwrap().ends_with('Z'));
    // Every attribute atrest does not act on comes back exactly, nested unknowns included.
    assert_eq!(c["replicationSpecs"], sent["replicationSpecs"]);
    assert_eq!(c["tags"], sent["tags"]);
    assert_eq!(c["backupEnabled"], false);

    let (s, got) = call(&env, Method::GET, &format!("{path}/Cluster0"), V20240805, None).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got, c);
    // GET resolves to 2024-08-05; the pre-2024 cluster description is not served.
    let (s, e) =
        call(&env, Method::GET, &format!("{path}/Cluster0"), "application/vnd.atlas.2023-01-01+json", None).await;
    assert_eq!(s, StatusCode::NOT_ACCEPTABLE, "{e}");
    let (s, list) = call(&env, Method::GET, &path, V20240805, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["totalCount"], 1);
    assert_eq!(list["results"][0], c);

    let (s, e) = call(&env, Method::POST, &path, V20240805, Some(body("Cluster0", "NONE").to_string())).await;
    assert_eq!((s, e["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("DUPLICATE_CLUSTER_NAME")));

    // The project's EAR cannot be disabled while the cluster uses it.
    let (s, e) = env.patch_ear(&group, json!({"enabled": false})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["errorCode"], "ENCRYPTION_AT_REST_IN_USE_BY_CLUSTERS");
    assert!(e["detail"].as_str().unwrap().contains("Cluster0"));
    assert_eq!(env.get_ear(&group).await["azureKeyVault"]["enabled"], true);

    // AZURE -> NONE is refused with the reason; a name change too; paused is acted on.
    let patch = format!("{path}/Cluster0");
    let (s, e) =
        call(&env, Method::PATCH, &patch, V20240805, Some(json!({"encryptionAtRestProvider": "NONE"}).to_string()))
            .await;
    assert_eq!(
        (s, e["errorCode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("ENCRYPTION_AT_REST_PROVIDER_CHANGE_NOT_SUPPORTED"))
    );
    let (s, e) = call(&env, Method::PATCH, &patch, V20240805, Some(json!({"name": "Other"}).to_string())).await;
    assert_eq!((s, e["errorCode"].as_str()), (StatusCode::BAD_REQUEST, Some("CLUSTER_CANNOT_CHANGE_NAME")));
    let (s, u) = call(
        &env,
        Method::PATCH,
        &patch,
        V20240805,
        Some(json!({"paused": true, "labels": [{"key": "a", "value": "b"}]}).to_string()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(u["paused"], true);
    assert_eq!(u["labels"], json!([{"key": "a", "value": "b"}]));
    assert_eq!(u["replicationSpecs"], sent["replicationSpecs"]);

    // Another organization's caller cannot see the project.
    let other_org = atrest_store::Organization {
        id: atrest_store::OrgId::new_random(),
        name: "other".into(),
        created_at: time::OffsetDateTime::now_utc(),
    };
    let state = env.control.state().clone();
    state.store.create_organization(&other_org).await.unwrap();
    let (sa, secret) = atrest_control::auth::provision::create_service_account(
        &state,
        &other_org.id,
        "stranger",
        atrest_store::Roles::org_owner(),
    )
    .await
    .unwrap();
    let stranger = support::oauth_token(
        &env.http,
        env.url(),
        sa.client_id.as_str(),
        secrecy::ExposeSecret::expose_secret(&secret),
    )
    .await;
    let r = env
        .http
        .get(format!("{}{path}/Cluster0", env.url()))
        .bearer_auth(&stranger)
        .header("Accept", V20240805)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["errorCode"], "GROUP_NOT_FOUND");

    // DELETE with no node joined removes the cluster at once; then EAR may be disabled.
    let (s, _) = call(&env, Method::DELETE, &patch, "application/vnd.atlas.2023-02-01+json", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, e) = call(&env, Method::GET, &patch, V20240805, None).await;
    assert_eq!((s, e["errorCode"].as_str()), (StatusCode::NOT_FOUND, Some("CLUSTER_NOT_FOUND")));
    let (s, v) = env.patch_ear(&group, json!({"enabled": false})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cluster_bodies_are_refused_naming_the_field_and_store_nothing() {
    let env = Env::start().await;
    let group = env.project("bad-clusters").await;
    let path = format!("/api/atlas/v2/groups/{group}/clusters");
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("malformed", "{\"name\":".into(), "INVALID_JSON", ""),
        ("not an object", "[1]".into(), "INVALID_JSON", ""),
        ("no name", json!({"clusterType": "REPLICASET"}).to_string(), "MISSING_ATTRIBUTE", "name"),
        ("name type", json!({"name": 5}).to_string(), "INVALID_JSON_ATTRIBUTE", "name"),
        ("bad name", json!({"name": "bad name!"}).to_string(), "CLUSTER_NAME_INVALID", "bad name!"),
        ("long name", json!({"name": "a".repeat(65)}).to_string(), "CLUSTER_NAME_INVALID", "aaaa"),
        ("paused type", json!({"name": "c1", "paused": "yes"}).to_string(), "INVALID_JSON_ATTRIBUTE", "paused"),
        (
            "provider",
            json!({"name": "c1", "encryptionAtRestProvider": "MARS"}).to_string(),
            "INVALID_ENUM_VALUE",
            "encryptionAtRestProvider",
        ),
        (
            "aws",
            json!({"name": "c1", "encryptionAtRestProvider": "AWS"}).to_string(),
            "CLOUD_PROVIDER_NOT_SUPPORTED",
            "AWS",
        ),
        ("cluster type", json!({"name": "c1", "clusterType": "RING"}).to_string(), "INVALID_ENUM_VALUE", "clusterType"),
        ("unknown top-level", json!({"name": "c1", "shardCount": 2}).to_string(), "INVALID_ATTRIBUTE", "shardCount"),
        ("echoed type", json!({"name": "c1", "tags": "x"}).to_string(), "INVALID_JSON_ATTRIBUTE", "tags"),
        (
            "node count type",
            json!({"name": "c1", "replicationSpecs": [{"regionConfigs": [{"electableSpecs": {"nodeCount": "3"}}]}]})
                .to_string(),
            "INVALID_JSON_ATTRIBUTE",
            "replicationSpecs[0].regionConfigs[0].electableSpecs.nodeCount",
        ),
        (
            "node count",
            json!({"name": "c1", "replicationSpecs": [{"regionConfigs": [{"electableSpecs": {"nodeCount": 4}}]}]})
                .to_string(),
            "CLUSTER_REPLICATION_FACTOR_INVALID",
            "4",
        ),
        (
            "oversized",
            json!({"name": "c1", "tags": [{"key": "x".repeat(2 * 1024 * 1024)}]}).to_string(),
            "PAYLOAD_TOO_LARGE",
            "",
        ),
    ];
    for (what, b, code, names) in cases {
        let (s, e) = call(&env, Method::POST, &path, V20240805, Some(b)).await;
        assert!(s.is_client_error(), "{what}: {s} {e}");
        assert_eq!(e["errorCode"], code, "{what}: {e}");
        assert!(e.to_string().contains(names), "{what}: the error names {names}: {e}");
    }
    let (_, list) = call(&env, Method::GET, &path, V20240805, None).await;
    assert_eq!(list["totalCount"], 0, "nothing was stored: {list}");
}
