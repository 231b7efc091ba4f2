//! Encryption at Rest private endpoints over HTTP, the way Terraform's
//! `mongodbatlas_encryption_at_rest_private_endpoint` drives them: a real control plane on
//! 127.0.0.1:0, a service account's bearer token, Atlas's media type.
//!
//! The background job is parked (a one-hour poll interval) so that each test moves endpoints
//! forward itself with `private_endpoints::advance`, exactly when it wants to.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use atrest_control::api::private_endpoints::{advance, mark_active};
use atrest_control::{Config, ControlPlane};
use atrest_store::{EarPrivateEndpointId, Group, GroupId, OrgId, OrgRole, Organization, Roles};

const ACCEPT: &str = "application/vnd.atlas.2023-01-01+json";

// The error codes are written out here, not imported from the code under test, so that renaming
// one in the code fails these tests. Atlas's spec, docs and error-code list name none of these
// three (docs/control-plane.md, "Private endpoint error codes"): they are atrest's, spelled in
// the pattern of Atlas's `ENCRYPTION_AT_REST_PRIVATE_ENDPOINT_DELETE_BLOCKED_DURING_PROVISIONING`.
const ALREADY_EXISTS: &str = "ENCRYPTION_AT_REST_PRIVATE_ENDPOINT_ALREADY_EXISTS";
const NOT_FOUND: &str = "ENCRYPTION_AT_REST_PRIVATE_ENDPOINT_NOT_FOUND";
const NETWORKING_NOT_ENABLED: &str = "ENCRYPTION_AT_REST_PRIVATE_NETWORKING_NOT_ENABLED";

struct Env {
    _dir: tempfile::TempDir,
    config: Config,
    control: ControlPlane,
    http: reqwest::Client,
    org: OrgId,
    /// An Organization Owner's bearer token (Project Owner on every project of the org).
    owner: String,
}

/// One response: status, `Content-Type`, JSON body (`Null` when empty).
struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    body: Value,
}

fn endpoints(group: &str) -> String {
    format!("/api/atlas/v2/groups/{group}/encryptionAtRest/AZURE/privateEndpoints")
}

fn endpoint(group: &str, id: &str) -> String {
    format!("{}/{id}", endpoints(group))
}

impl Env {
    async fn start() -> Env {
        Env::start_on(None).await
    }

    /// `store_url`: `None` for the embedded store, or a PostgreSQL URL that replicas can share.
    async fn start_on(store_url: Option<String>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("control"),
            store_url,
            bootstrap: false,
            ..Default::default()
        };
        config.validation.poll_interval_ms = 3_600_000;
        let control = ControlPlane::start(config.clone()).await.unwrap();
        let org = Organization {
            id: OrgId::new_random(),
            name: "private endpoints".into(),
            created_at: time::OffsetDateTime::now_utc(),
        };
        control.state().store.create_organization(&org).await.unwrap();
        let mut env =
            Env { _dir: dir, config, control, http: reqwest::Client::new(), org: org.id, owner: String::new() };
        env.owner = env.token_for("owner", Roles::org_owner()).await;
        env
    }

    /// A service account with `roles` and a bearer token for it from `POST /api/oauth/token`.
    async fn token_for(&self, name: &str, roles: Roles) -> String {
        let (sa, secret) =
            atrest_control::auth::provision::create_service_account(self.control.state(), &self.org, name, roles)
                .await
                .unwrap();
        support::oauth_token(
            &self.http,
            self.control.url(),
            sa.client_id.as_str(),
            secrecy::ExposeSecret::expose_secret(&secret),
        )
        .await
    }

    /// A new project of the organization.
    async fn project(&self) -> String {
        let group = Group {
            id: GroupId::new_random(),
            org_id: self.org.clone(),
            name: format!("p-{}", GroupId::new_random()),
            created_at: time::OffsetDateTime::now_utc(),
        };
        self.control.state().store.create_group(&group).await.unwrap();
        group.id.to_string()
    }

    /// A project whose Azure Key Vault configuration requires private networking (static
    /// credentials: with private networking the PATCH does not reach Azure, the data nodes
    /// validate).
    async fn private_project(&self) -> String {
        let group = self.project().await;
        let r = self
            .call(
                Method::PATCH,
                &format!("/api/atlas/v2/groups/{group}/encryptionAtRest"),
                Some(json!({"azureKeyVault": {
                    "enabled": true,
                    "clientID": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                    "tenantID": "4a1f0a2e-1c1d-4c55-9d3e-6f3f2a9b7c10",
                    "secret": "not-a-real-secret",
                    "subscriptionID": "5d3f1c2b-0000-4000-8000-00000000aaaa",
                    "resourceGroupName": "rg-atrest",
                    "keyVaultName": "atrestkv",
                    "keyIdentifier": "https://atrestkv.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef",
                    "azureEnvironment": "AZURE",
                    "requirePrivateNetworking": true,
                }})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        group
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call_as(&self.owner, method, path, body).await
    }

    async fn call_as(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.control.url()))
            .bearer_auth(token)
            .header("Accept", ACCEPT);
        if let Some(b) = body {
            rb = rb.header("Content-Type", ACCEPT).body(b.to_string());
        }
        let r = rb.send().await.unwrap();
        let status = r.status();
        let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = r.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        Reply { status, content_type, body }
    }

    /// `POST` an endpoint for `region`; returns its id after checking the 202.
    async fn create(&self, group: &str, region: &str) -> String {
        let r = self.call(Method::POST, &endpoints(group), Some(json!({"regionName": region}))).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        r.body["id"].as_str().unwrap().to_string()
    }

    async fn status_of(&self, group: &str, id: &str) -> String {
        let r = self.call(Method::GET, &endpoint(group, id), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["status"].as_str().unwrap().to_string()
    }

    async fn advance(&self) {
        advance(self.control.state()).await;
    }
}

fn assert_error(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["errorCode"], code, "{}", r.body);
    assert_eq!(r.body["error"], status.as_u16(), "{}", r.body);
    assert_eq!(r.content_type.as_deref(), Some("application/json"), "errors stay application/json");
}

#[tokio::test]
async fn create_answers_202_initiating_then_advance_asks_for_acceptance() {
    let env = Env::start().await;
    let group = env.private_project().await;

    // Terraform sends cloudProvider in the body as well.
    let r = env
        .call(Method::POST, &endpoints(&group), Some(json!({"cloudProvider": "AZURE", "regionName": "US_EAST_2"})))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.content_type.as_deref(), Some(ACCEPT));
    let id = r.body["id"].as_str().unwrap().to_string();
    assert!(EarPrivateEndpointId::parse(&id).is_ok(), "{id}");
    assert_eq!(r.body, json!({"id": id, "cloudProvider": "AZURE", "regionName": "US_EAST_2", "status": "INITIATING"}));

    let r = env.call(Method::GET, &endpoint(&group, &id), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.content_type.as_deref(), Some(ACCEPT));
    assert_eq!(r.body["status"], "INITIATING");

    env.advance().await;
    let r = env.call(Method::GET, &endpoint(&group, &id), None).await;
    assert_eq!(
        r.body,
        json!({
            "id": id,
            "cloudProvider": "AZURE",
            "regionName": "US_EAST_2",
            "status": "PENDING_ACCEPTANCE",
            "privateEndpointConnectionName": format!("atrest-{id}"),
        })
    );
    // Advancing again changes nothing.
    env.advance().await;
    assert_eq!(env.status_of(&group, &id).await, "PENDING_ACCEPTANCE");
}

#[tokio::test]
async fn data_nodes_mark_an_accepted_endpoint_active_once() {
    let env = Env::start().await;
    let group = env.private_project().await;
    let id = env.create(&group, "EUROPE_WEST").await;
    let (group_id, endpoint_id) = (GroupId::parse(&group).unwrap(), EarPrivateEndpointId::parse(&id).unwrap());
    let state = env.control.state();

    assert!(!mark_active(state, &group_id, &endpoint_id).await.unwrap(), "not accepted yet");
    assert_eq!(env.status_of(&group, &id).await, "INITIATING");
    env.advance().await;
    assert!(mark_active(state, &group_id, &endpoint_id).await.unwrap());
    assert!(!mark_active(state, &group_id, &endpoint_id).await.unwrap(), "applied once");
    let r = env.call(Method::GET, &endpoint(&group, &id), None).await;
    assert_eq!(r.body["status"], "ACTIVE");
    assert_eq!(r.body["privateEndpointConnectionName"], format!("atrest-{id}"));
    assert!(r.body.get("errorMessage").is_none(), "{}", r.body);
}

#[tokio::test]
async fn list_is_paginated_with_total_count_and_links() {
    let env = Env::start().await;
    let group = env.private_project().await;
    let empty = env.call(Method::GET, &endpoints(&group), None).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
    assert_eq!(empty.body["results"], json!([]));
    assert_eq!(empty.body["totalCount"], 0);

    let mut ids = Vec::new();
    for region in ["US_EAST_2", "EUROPE_WEST", "UK_SOUTH"] {
        ids.push(env.create(&group, region).await);
    }
    let all = env.call(Method::GET, &endpoints(&group), None).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.content_type.as_deref(), Some(ACCEPT));
    assert_eq!(all.body["totalCount"], 3);
    let listed: Vec<&str> = all.body["results"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>(), "oldest first");
    assert_eq!(all.body["links"], json!([{"href": endpoints(&group), "rel": "self"}]));

    let page2 = env.call(Method::GET, &format!("{}?itemsPerPage=2&pageNum=2", endpoints(&group)), None).await;
    assert_eq!(page2.status, StatusCode::OK, "{}", page2.body);
    assert_eq!(page2.body["totalCount"], 3);
    assert_eq!(page2.body["results"].as_array().unwrap().len(), 1);
    assert_eq!(page2.body["results"][0]["id"], ids[2].as_str());
    let past_the_end = env.call(Method::GET, &format!("{}?itemsPerPage=2&pageNum=3", endpoints(&group)), None).await;
    assert_eq!(past_the_end.body["results"], json!([]), "Terraform pages until an empty page");

    let uncounted = env.call(Method::GET, &format!("{}?includeCount=false", endpoints(&group)), None).await;
    assert_eq!(uncounted.status, StatusCode::OK);
    assert!(uncounted.body.get("totalCount").is_none(), "{}", uncounted.body);
    assert_eq!(uncounted.body["results"].as_array().unwrap().len(), 3);

    let bad = env.call(Method::GET, &format!("{}?itemsPerPage=501", endpoints(&group)), None).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE");
}

#[tokio::test]
async fn a_second_endpoint_in_the_same_region_conflicts() {
    let env = Env::start().await;
    let group = env.private_project().await;
    let first = env.create(&group, "US_EAST_2").await;
    let r = env.call(Method::POST, &endpoints(&group), Some(json!({"regionName": "US_EAST_2"}))).await;
    assert_error(&r, StatusCode::CONFLICT, ALREADY_EXISTS);
    assert!(r.body["detail"].as_str().unwrap().contains(&first), "{}", r.body);
    assert_eq!(r.body["parameters"], json!(["US_EAST_2"]));
    // Other regions, and the same region in another project, are fine.
    env.create(&group, "US_WEST_2").await;
    let other = env.private_project().await;
    env.create(&other, "US_EAST_2").await;
    let listed = env.call(Method::GET, &endpoints(&group), None).await;
    assert_eq!(listed.body["totalCount"], 2);
}

#[tokio::test]
async fn only_azure_endpoints_regions_and_attributes_are_accepted() {
    let env = Env::start().await;
    let group = env.private_project().await;
    let aws = format!("/api/atlas/v2/groups/{group}/encryptionAtRest/AWS/privateEndpoints");
    let r = env.call(Method::POST, &aws, Some(json!({"regionName": "US_EAST_1"}))).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "CLOUD_PROVIDER_NOT_SUPPORTED");
    assert!(r.body["detail"].as_str().unwrap().contains("Azure Key Vault only"), "{}", r.body);
    // Reading AWS answers what is true and documented: there are none.
    let r = env.call(Method::GET, &aws, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!((&r.body["results"], &r.body["totalCount"]), (&json!([]), &json!(0)));
    let azure_id = env.create(&group, "EUROPE_NORTH").await;
    for method in [Method::GET, Method::DELETE] {
        let r = env.call(method, &format!("{aws}/{azure_id}"), None).await;
        assert_error(&r, StatusCode::NOT_FOUND, NOT_FOUND);
    }
    let gcp = format!("/api/atlas/v2/groups/{group}/encryptionAtRest/GCP/privateEndpoints");
    let r = env.call(Method::POST, &gcp, Some(json!({"regionName": "US_EAST_2"}))).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "INVALID_ENUM_VALUE");

    let collection = endpoints(&group);
    let post = |body: Value| env.call(Method::POST, &collection, Some(body));
    let r = post(json!({"regionName": "US_EAST_1"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "INVALID_ENUM_VALUE");
    assert_eq!(r.body["parameters"], json!(["US_EAST_1"]));
    assert_error(&post(json!({"regionName": "us_east_2"})).await, StatusCode::BAD_REQUEST, "INVALID_ENUM_VALUE");
    let r = post(json!({"regionName": "US_EAST_2", "vaultName": "x"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "INVALID_ATTRIBUTE");
    assert_eq!(r.body["parameters"], json!(["vaultName"]));
    assert_error(&post(json!({"regionName": 2})).await, StatusCode::BAD_REQUEST, "INVALID_JSON_ATTRIBUTE");
    assert_error(&post(json!({})).await, StatusCode::BAD_REQUEST, "MISSING_ATTRIBUTE");
    assert_error(
        &post(json!({"regionName": "US_EAST_2", "cloudProvider": "AWS"})).await,
        StatusCode::BAD_REQUEST,
        "INVALID_ATTRIBUTE",
    );
    let r = env
        .http
        .post(format!("{}{}", env.control.url(), endpoints(&group)))
        .bearer_auth(&env.owner)
        .header("Accept", ACCEPT)
        .header("Content-Type", "application/json")
        .body("{\"regionName\":")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["errorCode"], "INVALID_JSON");
    // Read-only attributes sent back are ignored, as Terraform may echo them.
    let r = post(json!({"regionName": "UK_WEST", "id": "5f1d7a2b9c3e4d5f6a7b8c9d", "status": "ACTIVE"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["status"], "INITIATING");
    // Nothing was created by the refused requests.
    assert_eq!(env.call(Method::GET, &endpoints(&group), None).await.body["totalCount"], 2);
}

#[tokio::test]
async fn creating_needs_private_networking_on_the_key_vault_configuration() {
    let env = Env::start().await;
    let group = env.project().await;
    let r = env.call(Method::POST, &endpoints(&group), Some(json!({"regionName": "US_EAST_2"}))).await;
    assert_error(&r, StatusCode::BAD_REQUEST, NETWORKING_NOT_ENABLED);
    assert!(r.body["detail"].as_str().unwrap().contains("requirePrivateNetworking"), "{}", r.body);
    assert_eq!(env.call(Method::GET, &endpoints(&group), None).await.body["totalCount"], 0);
}

#[tokio::test]
async fn deleting_while_initiating_is_refused_with_the_atlas_error() {
    let env = Env::start().await;
    let group = env.private_project().await;
    let id = env.create(&group, "US_EAST_2").await;
    let r = env.call(Method::DELETE, &endpoint(&group, &id), None).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "ENCRYPTION_AT_REST_PRIVATE_ENDPOINT_DELETE_BLOCKED_DURING_PROVISIONING");
    assert_eq!(
        r.body["detail"],
        format!(
            "Failed to delete Encryption at Rest Private endpoint with id [{id}] during IN_PROGRESS state. Please try again later."
        )
    );
    assert_eq!(r.body["parameters"], json!([[id]]));
    assert_eq!(env.status_of(&group, &id).await, "INITIATING", "nothing changed");
}

#[tokio::test]
async fn deleted_endpoints_are_deleting_then_gone_after_advance() {
    let env = Env::start().await;
    let group = env.private_project().await;
    let id = env.create(&group, "US_EAST_2").await;
    env.advance().await;

    let r = env.call(Method::DELETE, &endpoint(&group, &id), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(r.body, Value::Null);
    assert_eq!(env.status_of(&group, &id).await, "DELETING");
    let again = env.call(Method::DELETE, &endpoint(&group, &id), None).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT, "asking again while DELETING is accepted");
    // The region stays taken until the endpoint is gone.
    let r = env.call(Method::POST, &endpoints(&group), Some(json!({"regionName": "US_EAST_2"}))).await;
    assert_error(&r, StatusCode::CONFLICT, ALREADY_EXISTS);

    env.advance().await;
    let gone = env.call(Method::GET, &endpoint(&group, &id), None).await;
    assert_error(&gone, StatusCode::NOT_FOUND, NOT_FOUND);
    assert_error(&env.call(Method::DELETE, &endpoint(&group, &id), None).await, StatusCode::NOT_FOUND, NOT_FOUND);
    assert_eq!(env.call(Method::GET, &endpoints(&group), None).await.body["results"], json!([]));
    env.create(&group, "US_EAST_2").await;
}

#[tokio::test]
async fn unknown_endpoints_and_projects_are_404() {
    let env = Env::start().await;
    let group = env.private_project().await;
    for id in [EarPrivateEndpointId::new_random().to_string(), "not-an-id".into(), "5F1D7A2B9C3E4D5F6A7B8C9D".into()] {
        for method in [Method::GET, Method::DELETE] {
            let r = env.call(method, &endpoint(&group, &id), None).await;
            assert_error(&r, StatusCode::NOT_FOUND, NOT_FOUND);
        }
    }
    // An endpoint is reachable only through its own project.
    let id = env.create(&group, "US_EAST_2").await;
    let other = env.private_project().await;
    assert_error(&env.call(Method::GET, &endpoint(&other, &id), None).await, StatusCode::NOT_FOUND, NOT_FOUND);
    // The project is checked before anything else, whatever the request holds.
    let missing = GroupId::new_random().to_string();
    let r = env.call(Method::POST, &endpoints(&missing), Some(json!({"bogus": true}))).await;
    assert_error(&r, StatusCode::NOT_FOUND, "GROUP_NOT_FOUND");
    let r = env
        .call(Method::GET, &format!("/api/atlas/v2/groups/{missing}/encryptionAtRest/GCP/privateEndpoints"), None)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "GROUP_NOT_FOUND");
}

#[tokio::test]
async fn every_operation_needs_project_owner() {
    let env = Env::start().await;
    let group = env.private_project().await;
    let id = env.create(&group, "US_EAST_2").await;
    env.advance().await;
    let reader =
        env.token_for("reader", Roles { org: [OrgRole::OrgReadOnly].into(), groups: Default::default() }).await;
    for (method, path, body) in [
        (Method::GET, endpoints(&group), None),
        (Method::POST, endpoints(&group), Some(json!({"regionName": "UK_SOUTH"}))),
        (Method::GET, endpoint(&group, &id), None),
        (Method::DELETE, endpoint(&group, &id), None),
    ] {
        let r = env.call_as(&reader, method.clone(), &path, body).await;
        assert_error(&r, StatusCode::FORBIDDEN, "USER_UNAUTHORIZED");
    }
    assert_eq!(env.status_of(&group, &id).await, "PENDING_ACCEPTANCE", "nothing changed");
    assert_eq!(env.call(Method::GET, &endpoints(&group), None).await.body["totalCount"], 1);
    // Without credentials: 401.
    let r = env
        .http
        .get(format!("{}{}", env.control.url(), endpoints(&group)))
        .header("Accept", ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn replicas_advancing_together_apply_each_change_once() {
    // Replicas share a PostgreSQL store (the embedded store's data directory belongs to one
    // process).
    let url = atrest_store::testing::fresh_postgres_database().await.expect("a throwaway PostgreSQL");
    let env = Env::start_on(Some(url)).await;
    let replica = ControlPlane::start(env.config.clone()).await.unwrap();
    let group = env.private_project().await;
    let mut ids = Vec::new();
    for region in ["US_EAST_2", "EUROPE_WEST", "UK_SOUTH", "JAPAN_EAST"] {
        ids.push(env.create(&group, region).await);
    }
    tokio::join!(advance(env.control.state()), advance(replica.state()), advance(env.control.state()));
    for id in &ids {
        assert_eq!(env.status_of(&group, id).await, "PENDING_ACCEPTANCE");
    }
    for id in &ids {
        let r = env.call(Method::DELETE, &endpoint(&group, id), None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }
    tokio::join!(advance(env.control.state()), advance(replica.state()));
    assert_eq!(env.call(Method::GET, &endpoints(&group), None).await.body["totalCount"], 0);
    replica.shutdown().await;
}
