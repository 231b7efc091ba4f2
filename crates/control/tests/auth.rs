//! Authentication and authorization over real HTTP: a control plane on 127.0.0.1:0 (no platform
//! app or emulator needed), organizations, projects, API keys and service accounts created with
//! `atrest_control::auth::provision`, and requests made the way Digest and OAuth clients make
//! them. The Digest client side is written here by hand (independently of the server's code), and
//! `curl --digest` is run as a real third-party client.

use std::collections::BTreeSet;
use std::time::Duration;

use atrest_control::{Config, ControlPlane};
use atrest_store::{GroupId, GroupRole, OrgId, Organization, Roles};
use md5::{Digest, Md5};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde_json::Value;

const ACCEPT: &str = "application/vnd.atlas.2023-01-01+json";
const REALM: &str = "MMS Public API";

struct World {
    _dir: tempfile::TempDir,
    cp: ControlPlane,
    http: reqwest::Client,
    org: OrgId,
    /// Two projects of `org`.
    a: GroupId,
    b: GroupId,
}

impl World {
    async fn start() -> World {
        World::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut Config)) -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("control"),
            bootstrap: false,
            ..Default::default()
        };
        tweak(&mut config);
        let cp = ControlPlane::start(config).await.unwrap();
        let org = new_org(&cp, "org").await;
        let a = new_group(&cp, &org, "a").await;
        let b = new_group(&cp, &org, "b").await;
        World { _dir: dir, cp, http: reqwest::Client::new(), org, a, b }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cp.url())
    }

    /// An API key of `org` with `roles`: (public key, private key).
    async fn key(&self, org: &OrgId, roles: Roles) -> (String, String) {
        let (key, private) =
            atrest_control::auth::provision::create_api_key(self.cp.state(), org, "test key", roles).await.unwrap();
        (key.public_key, private.expose_secret().to_owned())
    }

    /// A service account of `org` with `roles`: (client id, secret).
    async fn service_account(&self, org: &OrgId, roles: Roles) -> (String, String) {
        let (sa, secret) =
            atrest_control::auth::provision::create_service_account(self.cp.state(), org, "test sa", roles)
                .await
                .unwrap();
        (sa.client_id.as_str().to_owned(), secret.expose_secret().to_owned())
    }

    /// `GET path` with an optional `Authorization` header.
    async fn get(&self, path: &str, authorization: Option<&str>) -> Reply {
        let mut rb = self.http.get(self.url(path)).header("Accept", ACCEPT);
        if let Some(a) = authorization {
            rb = rb.header("Authorization", a);
        }
        Reply::from(rb.send().await.unwrap()).await
    }

    /// A fresh nonce: the challenge of an unauthenticated request to `path`.
    async fn nonce(&self, path: &str) -> String {
        let r = self.get(path, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        challenge_param(&r.www_authenticate(), "nonce")
    }

    /// A whole Digest exchange for `GET path`: challenge, then the request with nc=1.
    async fn digest_get(&self, user: &str, pass: &str, path: &str) -> Reply {
        let nonce = self.nonce(path).await;
        self.get(path, Some(&authorization(user, pass, "GET", path, &nonce, 1, "c0ffee"))).await
    }

    async fn bearer_get(&self, token: &str, path: &str) -> Reply {
        self.get(path, Some(&format!("Bearer {token}"))).await
    }

    /// `POST /api/oauth/token` with Basic credentials and a form.
    async fn oauth(&self, endpoint: &str, basic: Option<(&str, &str)>, form: &[(&str, &str)]) -> Reply {
        let mut rb = self.http.post(self.url(endpoint)).form(form);
        if let Some((id, secret)) = basic {
            rb = rb.basic_auth(id, Some(secret));
        }
        Reply::from(rb.send().await.unwrap()).await
    }

    async fn token(&self, id: &str, secret: &str) -> String {
        let r = self.oauth("/api/oauth/token", Some((id, secret)), &[("grant_type", "client_credentials")]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["access_token"].as_str().unwrap().to_owned()
    }

    fn group_path(&self, g: &GroupId) -> String {
        format!("/api/atlas/v2/groups/{g}")
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    async fn from(r: reqwest::Response) -> Reply {
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        Reply { status, headers, body }
    }

    fn www_authenticate(&self) -> String {
        let all: Vec<_> = self.headers.get_all("www-authenticate").iter().collect();
        assert_eq!(all.len(), 1, "one challenge: {all:?}");
        all[0].to_str().unwrap().to_owned()
    }

    fn detail(&self) -> &str {
        self.body["detail"].as_str().unwrap_or_default()
    }
}

async fn new_org(cp: &ControlPlane, name: &str) -> OrgId {
    let org = Organization { id: OrgId::new_random(), name: name.into(), created_at: time::OffsetDateTime::now_utc() };
    cp.state().store.create_organization(&org).await.unwrap();
    org.id
}

async fn new_group(cp: &ControlPlane, org: &OrgId, name: &str) -> GroupId {
    let g = atrest_store::Group {
        id: GroupId::new_random(),
        org_id: org.clone(),
        name: name.into(),
        created_at: time::OffsetDateTime::now_utc(),
    };
    cp.state().store.create_group(&g).await.unwrap();
    g.id
}

fn on_group(g: &GroupId, role: GroupRole) -> Roles {
    let mut roles = Roles::default();
    roles.groups.insert(g.clone(), BTreeSet::from([role]));
    roles
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// The client side of RFC 7616 with MD5 and qop=auth.
fn digest_response(user: &str, pass: &str, method: &str, uri: &str, nonce: &str, nc: u32, cnonce: &str) -> String {
    let ha1 = md5_hex(&format!("{user}:{REALM}:{pass}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    md5_hex(&format!("{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}"))
}

fn authorization(user: &str, pass: &str, method: &str, uri: &str, nonce: &str, nc: u32, cnonce: &str) -> String {
    let response = digest_response(user, pass, method, uri, nonce, nc, cnonce);
    format!(
        "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm=MD5, \
         qop=auth, nc={nc:08x}, cnonce=\"{cnonce}\", response=\"{response}\""
    )
}

/// A quoted or bare parameter of a challenge (enough for the server's own simple challenges).
fn challenge_param(challenge: &str, name: &str) -> String {
    let rest = challenge.strip_prefix("Digest ").expect("a Digest challenge");
    for part in rest.split(", ") {
        if let Some((k, v)) = part.split_once('=')
            && k == name
        {
            return v.trim_matches('"').to_owned();
        }
    }
    panic!("no {name} in {challenge}")
}

fn assert_fresh_challenge(r: &Reply, stale: bool) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let c = r.www_authenticate();
    assert!(c.starts_with("Digest realm=\"MMS Public API\", domain=\"\", nonce=\""), "{c}");
    assert!(c.ends_with(&format!("\", algorithm=MD5, qop=\"auth\", stale={stale}")), "{c}");
    assert_eq!(r.body["error"], 401, "{}", r.body);
    assert_eq!(r.body["errorCode"], "UNAUTHORIZED", "{}", r.body);
    assert_eq!(r.body["reason"], "Unauthorized", "{}", r.body);
}

#[tokio::test]
async fn no_credentials_get_one_digest_challenge_and_instructions() {
    let w = World::start().await;
    let r = w.get(&w.group_path(&w.a), None).await;
    assert_fresh_challenge(&r, false);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("application/json"));
    let detail = r.detail();
    assert!(detail.contains("Digest") && detail.contains("POST /api/oauth/token"), "{detail}");
    assert!(detail.contains("Bearer"), "{detail}");
    let nonce = challenge_param(&r.www_authenticate(), "nonce");
    assert!(nonce.len() >= 32, "{nonce}");
    // Every challenge carries a new nonce.
    assert_ne!(w.nonce("/api/atlas/v2/groups").await, nonce);
    // Another scheme is answered the same way.
    let r = w.get("/api/atlas/v2/groups", Some("Basic dXNlcjpwYXNz")).await;
    assert_fresh_challenge(&r, false);
    assert!(r.detail().contains("not supported"), "{}", r.body);
    // So is a Digest header that does not parse.
    let r = w.get("/api/atlas/v2/groups", Some("Digest username=\"abc")).await;
    assert_fresh_challenge(&r, false);
    assert!(r.detail().contains("not valid HTTP Digest"), "{}", r.body);
}

#[tokio::test]
async fn digest_key_reads_its_project_and_nonce_counts_must_increase() {
    let w = World::start().await;
    let (user, pass) = w.key(&w.org, on_group(&w.a, GroupRole::GroupReadOnly)).await;
    let path = w.group_path(&w.a);
    let nonce = w.nonce(&path).await;
    let auth = |nc| authorization(&user, &pass, "GET", &path, &nonce, nc, "0a4f113b");

    let r = w.get(&path, Some(&auth(1))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["id"], w.a.as_str());
    // The same nonce with an increasing count: accepted.
    let r = w.get(&path, Some(&auth(2))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A replayed count, or an older one: refused with a new challenge.
    for nc in [2, 1] {
        let r = w.get(&path, Some(&auth(nc))).await;
        assert_fresh_challenge(&r, false);
        assert!(r.detail().contains("Replayed nonce count"), "{}", r.body);
    }
    // A replay does not spoil the nonce for the honest client.
    let r = w.get(&path, Some(&auth(7))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // The digest-uri is the path with its query, as curl and python-requests send it.
    let list = "/api/atlas/v2/groups?pageNum=1&itemsPerPage=10";
    let r = w.digest_get(&user, &pass, list).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["totalCount"], 1, "{}", r.body);
}

#[tokio::test]
async fn wrong_private_key_and_unknown_public_key_get_the_same_answer() {
    let w = World::start().await;
    let (user, pass) = w.key(&w.org, Roles::org_owner()).await;
    let path = w.group_path(&w.a);

    let wrong_pass = w.digest_get(&user, "00000000-0000-4000-8000-000000000000", &path).await;
    assert_fresh_challenge(&wrong_pass, false);
    let unknown_user = w.digest_get("zzzzzzzz", &pass, &path).await;
    assert_fresh_challenge(&unknown_user, false);
    assert_eq!(wrong_pass.detail(), unknown_user.detail(), "never tell which of the two was wrong");
    assert!(wrong_pass.detail().contains("Invalid API key credentials"), "{}", wrong_pass.body);
    assert!(!wrong_pass.body.to_string().contains(&pass) && !unknown_user.body.to_string().contains(&pass));
    // A wrong password does not use up the nonce count: the right one still works with nc=1.
    let nonce = w.nonce(&path).await;
    let r = w.get(&path, Some(&authorization(&user, "wrong", "GET", &path, &nonce, 1, "c"))).await;
    assert_fresh_challenge(&r, false);
    let r = w.get(&path, Some(&authorization(&user, &pass, "GET", &path, &nonce, 1, "c"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn digest_uri_must_be_the_request_target() {
    let w = World::start().await;
    let (user, pass) = w.key(&w.org, Roles::org_owner()).await;
    let path = w.group_path(&w.a);
    // Signed for another path.
    let nonce = w.nonce(&path).await;
    let r = w.get(&path, Some(&authorization(&user, &pass, "GET", "/api/atlas/v2/groups", &nonce, 1, "c"))).await;
    assert_fresh_challenge(&r, false);
    assert!(r.detail().contains("uri"), "{}", r.body);
    // Signed without the query the request carries.
    let nonce = w.nonce(&path).await;
    let with_query = format!("{path}?pretty=true");
    let r = w.get(&with_query, Some(&authorization(&user, &pass, "GET", &path, &nonce, 1, "c"))).await;
    assert_fresh_challenge(&r, false);
    // Signed for another method.
    let nonce = w.nonce(&path).await;
    let r = w.get(&path, Some(&authorization(&user, &pass, "POST", &path, &nonce, 1, "c"))).await;
    assert_fresh_challenge(&r, false);
    // And right: accepted.
    let r = w.get(&path, Some(&authorization(&user, &pass, "GET", &path, &nonce, 1, "c"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn expired_nonce_is_answered_with_stale_true_and_unknown_nonce_with_a_fresh_challenge() {
    let w = World::start_with(|c| c.auth.nonce_lifetime_secs = 1).await;
    let (user, pass) = w.key(&w.org, Roles::org_owner()).await;
    let path = w.group_path(&w.a);
    let nonce = w.nonce(&path).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = w.get(&path, Some(&authorization(&user, &pass, "GET", &path, &nonce, 1, "c"))).await;
    assert_fresh_challenge(&r, true);
    assert!(r.detail().contains("expired"), "{}", r.body);
    // stale=true is only for right credentials.
    let r = w.get(&path, Some(&authorization(&user, "wrong", "GET", &path, &nonce, 2, "c"))).await;
    assert_fresh_challenge(&r, false);
    // A nonce this service never issued.
    let r = w.get(&path, Some(&authorization(&user, &pass, "GET", &path, "0123456789abcdef", 1, "c"))).await;
    assert_fresh_challenge(&r, false);
    assert!(r.detail().contains("not issued"), "{}", r.body);
    // The nonce of the stale challenge works at once.
    let r = w.digest_get(&user, &pass, &path).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn digest_parameters_in_any_order_case_and_quoting() {
    let w = World::start().await;
    let (user, pass) = w.key(&w.org, Roles::org_owner()).await;
    let path = w.group_path(&w.b);
    let nonce = w.nonce(&path).await;
    // A cnonce with a quote and a backslash, sent escaped; upper-case names; no algorithm; any order.
    let cnonce = r#"a"b\c"#;
    let response = digest_response(&user, &pass, "GET", &path, &nonce, 1, cnonce);
    let header = format!(
        "Digest RESPONSE=\"{response}\",NC=00000001 , QOP=\"auth\", CNonce=\"a\\\"b\\\\c\", Uri=\"{path}\", \
         Nonce=\"{nonce}\", Realm=\"{REALM}\", UserName=\"{user}\", opaque=\"\""
    );
    let r = w.get(&path, Some(&header)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The scheme name is case-insensitive too, and the response hash may be upper-case hex.
    let header = authorization(&user, &pass, "GET", &path, &nonce, 2, "c");
    let resp = challenge_param(&header, "response");
    let upper = header.replace("Digest ", "dIgEsT ").replace(&resp, &resp.to_ascii_uppercase());
    assert_ne!(upper, header);
    let r = w.get(&path, Some(&upper)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // qop other than auth, another realm, another algorithm, a missing parameter: refused.
    for (from, to) in [
        ("qop=auth", "qop=auth-int"),
        ("realm=\"MMS Public API\"", "realm=\"other\""),
        ("algorithm=MD5", "algorithm=SHA-256"),
        (", cnonce=\"c\"", ""),
    ] {
        let h = authorization(&user, &pass, "GET", &path, &nonce, 3, "c").replace(from, to);
        let r = w.get(&path, Some(&h)).await;
        assert_fresh_challenge(&r, false);
    }
}

#[tokio::test]
async fn roles_decide_what_a_key_sees() {
    let w = World::start().await;
    let other_org = new_org(&w.cp, "other").await;
    let c = new_group(&w.cp, &other_org, "c").await;
    let (reader, reader_pass) = w.key(&w.org, on_group(&w.a, GroupRole::GroupReadOnly)).await;
    let (nobody, nobody_pass) = w.key(&w.org, Roles::default()).await;
    let (owner, owner_pass) = w.key(&w.org, Roles::org_owner()).await;
    let (stranger, stranger_pass) = w.key(&other_org, Roles::org_owner()).await;

    // GROUP_READ_ONLY on A: reads A, not B (401: no role there).
    assert_eq!(w.digest_get(&reader, &reader_pass, &w.group_path(&w.a)).await.status, StatusCode::OK);
    let r = w.digest_get(&reader, &reader_pass, &w.group_path(&w.b)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    // No role at all: 401 on the project.
    let r = w.digest_get(&nobody, &nobody_pass, &w.group_path(&w.a)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.detail().contains("no role on project"), "{}", r.body);
    // Another organization's owner: the project does not exist for it.
    let r = w.digest_get(&stranger, &stranger_pass, &w.group_path(&w.a)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(r.body["errorCode"], "GROUP_NOT_FOUND");

    // ORG_OWNER lists every project of its organization and none of another's.
    let ids = |r: &Reply| -> BTreeSet<String> {
        r.body["results"].as_array().unwrap().iter().map(|g| g["id"].as_str().unwrap().to_owned()).collect()
    };
    let r = w.digest_get(&owner, &owner_pass, "/api/atlas/v2/groups").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(ids(&r), BTreeSet::from([w.a.to_string(), w.b.to_string()]));
    let r = w.digest_get(&reader, &reader_pass, "/api/atlas/v2/groups").await;
    assert_eq!(ids(&r), BTreeSet::from([w.a.to_string()]));
    let r = w.digest_get(&stranger, &stranger_pass, "/api/atlas/v2/groups").await;
    assert_eq!(ids(&r), BTreeSet::from([c.to_string()]));

    // Service accounts carry their roles the same way.
    let (id, secret) = w.service_account(&w.org, on_group(&w.b, GroupRole::GroupReadOnly)).await;
    let token = w.token(&id, &secret).await;
    assert_eq!(w.bearer_get(&token, &w.group_path(&w.b)).await.status, StatusCode::OK);
    assert_eq!(w.bearer_get(&token, &w.group_path(&w.a)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(w.bearer_get(&token, &format!("/api/atlas/v2/groups/{c}")).await.status, StatusCode::NOT_FOUND);

    // A role can only be given on a project of the key's own organization.
    let err = atrest_control::auth::provision::create_api_key(
        w.cp.state(),
        &w.org,
        "bad",
        on_group(&c, GroupRole::GroupOwner),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("organization"), "{err:#}");
}

#[tokio::test]
async fn service_account_token_issue_use_and_revoke() {
    let w = World::start().await;
    let (id, secret) = w.service_account(&w.org, Roles::org_owner()).await;
    let r = w.oauth("/api/oauth/token", Some((&id, &secret)), &[("grant_type", "client_credentials")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 3600);
    assert_eq!(r.headers["cache-control"], "no-store");
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 43 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    // Stored only by digest.
    let state = w.cp.state();
    let digest = atrest_control::auth::provision::sha256(token.as_bytes());
    assert!(state.store.get_access_token(&digest).await.unwrap().revoked_at.is_none());

    let r = w.bearer_get(&token, "/api/atlas/v2/groups").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["totalCount"], 2);
    let r = w.get("/api/atrest/v1/whoami", Some(&format!("Bearer {token}"))).await;
    assert_eq!(r.body["principal"], id.as_str(), "{}", r.body);

    // Another service account cannot revoke it (but is told 200, as RFC 7009 says).
    let (other, other_secret) = w.service_account(&w.org, Roles::org_owner()).await;
    let form = [("token", token.as_str()), ("token_type_hint", "access_token")];
    let r = w.oauth("/api/oauth/revoke", Some((&other, &other_secret)), &form).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(w.bearer_get(&token, "/api/atlas/v2/groups").await.status, StatusCode::OK);
    // An unknown token: 200 too.
    let r = w.oauth("/api/oauth/revoke", Some((&id, &secret)), &[("token", "never-issued")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Its own: revoked, then refused.
    let r = w.oauth("/api/oauth/revoke", Some((&id, &secret)), &form).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = w.bearer_get(&token, "/api/atlas/v2/groups").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(r.headers["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert_eq!(r.body["errorCode"], "UNAUTHORIZED");
    assert!(r.detail().contains("POST /api/oauth/token"), "{}", r.body);
    // Revoking with wrong credentials is refused.
    let r = w.oauth("/api/oauth/revoke", Some((&id, "mdb_sa_sk_wrong")), &form).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(r.body["error"], "invalid_client");
    // A made-up token, and an empty one.
    for t in ["Bearer abc", "Bearer "] {
        let r = w.get("/api/atlas/v2/groups", Some(t)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
        assert_eq!(r.headers["www-authenticate"], "Bearer error=\"invalid_token\"");
    }
}

#[tokio::test]
async fn token_endpoint_errors_have_the_oauth_shape() {
    let w = World::start().await;
    let (id, secret) = w.service_account(&w.org, Roles::org_owner()).await;
    let grant = [("grant_type", "client_credentials")];
    let invalid_client =
        serde_json::json!({"error": "invalid_client", "error_description": "Invalid credentials provided."});
    for (who, pass) in [
        (id.as_str(), "mdb_sa_sk_wrongwrongwrongwrongwrongwrongwrongw"),
        ("mdb_sa_id_0123456789abcdef01234567", secret.as_str()),
        ("not-a-client-id", secret.as_str()),
        (id.as_str(), ""),
    ] {
        let r = w.oauth("/api/oauth/token", Some((who, pass)), &grant).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
        assert_eq!(r.body, invalid_client);
        assert!(r.headers["www-authenticate"].to_str().unwrap().starts_with("Basic realm="));
    }
    // No grant_type, no Basic header: invalid_request.
    let r = w.oauth("/api/oauth/token", Some((&id, &secret)), &[("scope", "x")]).await;
    assert_eq!((r.status, r.body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{}", r.body);
    let r = w.oauth("/api/oauth/token", None, &grant).await;
    assert_eq!((r.status, r.body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{}", r.body);
    let r = w.oauth("/api/oauth/token", Some((&id, &secret)), &[("grant_type", "password")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["error"], "unsupported_grant_type");
    assert!(r.body["error_description"].is_string());
    // Not a form, or a parameter twice.
    let r = Reply::from(
        w.http
            .post(w.url("/api/oauth/token"))
            .basic_auth(&id, Some(&secret))
            .json(&serde_json::json!({"grant_type": "client_credentials"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, r.body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{}", r.body);
    let r = w
        .oauth("/api/oauth/token", Some((&id, &secret)), &[("grant_type", "client_credentials"), ("grant_type", "x")])
        .await;
    assert_eq!((r.status, r.body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{}", r.body);
    // A malformed Basic header.
    let r = Reply::from(
        w.http.post(w.url("/api/oauth/token")).header("Authorization", "Basic !!!").form(&grant).send().await.unwrap(),
    )
    .await;
    assert_eq!((r.status, r.body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{}", r.body);
    // Revocation without a token.
    let r = w.oauth("/api/oauth/revoke", Some((&id, &secret)), &[("token_type_hint", "access_token")]).await;
    assert_eq!((r.status, r.body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{}", r.body);
    // None of it echoes the secret.
    assert!(!r.body.to_string().contains(&secret));
}

#[tokio::test]
async fn expired_token_is_refused() {
    let w = World::start_with(|c| c.auth.access_token_lifetime_secs = 1).await;
    let (id, secret) = w.service_account(&w.org, Roles::org_owner()).await;
    let r = w.oauth("/api/oauth/token", Some((&id, &secret)), &[("grant_type", "client_credentials")]).await;
    assert_eq!(r.body["expires_in"], 1, "{}", r.body);
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    // The expiry the server decides by, as the store holds it (found by the token's SHA-256).
    let digest: [u8; 32] =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref().try_into().unwrap();
    let record = w.cp.state().store.get_access_token(&digest).await.unwrap();
    assert_eq!(record.expires_at - record.issued_at, time::Duration::seconds(1));

    // Use the token until it is refused, instead of racing a 1 s lifetime with a sleep. Every
    // answer is checked against the stored expiry, which needs no timing luck: the server
    // decides between sending and receiving, so a request sent at or after the expiry must be
    // refused, and one answered before it must be accepted.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let sent = time::OffsetDateTime::now_utc();
        let r = w.bearer_get(&token, "/api/atlas/v2/groups").await;
        let received = time::OffsetDateTime::now_utc();
        match r.status {
            StatusCode::OK => assert!(sent < record.expires_at, "accepted after its expiry: {}", r.body),
            StatusCode::UNAUTHORIZED => {
                assert!(received >= record.expires_at, "refused before its expiry: {}", r.body);
                break r;
            }
            other => panic!("{other}: {}", r.body),
        }
        assert!(std::time::Instant::now() < deadline, "the 1 s token was still accepted after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.headers["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert!(refused.detail().contains("POST /api/oauth/token"), "{}", refused.body);
}

#[tokio::test]
async fn a_nonce_issued_by_one_replica_is_accepted_by_another() {
    // Replicas share a PostgreSQL store (the embedded store's data directory belongs to one
    // process); both use this data directory's KEK file.
    let url = atrest_store::testing::fresh_postgres_database().await.expect("a throwaway PostgreSQL");
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        store_url: Some(url),
        bootstrap: false,
        ..Default::default()
    };
    let a = ControlPlane::start(config.clone()).await.unwrap();
    let b = ControlPlane::start(config).await.unwrap();
    let org = new_org(&a, "org").await;
    let g = new_group(&a, &org, "g").await;
    let (key, private) =
        atrest_control::auth::provision::create_api_key(a.state(), &org, "k", Roles::org_owner()).await.unwrap();
    let path = format!("/api/atlas/v2/groups/{g}");
    let http = reqwest::Client::new();
    let r = http.get(format!("{}{path}", a.url())).header("Accept", ACCEPT).send().await.unwrap();
    let nonce = challenge_param(r.headers()["www-authenticate"].to_str().unwrap(), "nonce");
    let send = |url: &str, nc| {
        http.get(format!("{url}{path}"))
            .header("Accept", ACCEPT)
            .header(
                "Authorization",
                authorization(&key.public_key, private.expose_secret(), "GET", &path, &nonce, nc, "c"),
            )
            .send()
    };
    assert_eq!(send(b.url(), 1).await.unwrap().status(), StatusCode::OK);
    assert_eq!(send(a.url(), 2).await.unwrap().status(), StatusCode::OK);
    // The replay is refused by the other replica too.
    assert_eq!(send(b.url(), 2).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn provisioned_credentials_are_stored_only_sealed_or_hashed() {
    let w = World::start().await;
    let state = w.cp.state();
    let (key, private) =
        atrest_control::auth::provision::create_api_key(state, &w.org, "ci", Roles::org_owner()).await.unwrap();
    assert!(key.public_key.len() == 8 && key.public_key.bytes().all(|b| b.is_ascii_lowercase()), "{}", key.public_key);
    let private = private.expose_secret().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&private).unwrap().get_version_num(), 4);
    let stored = state.store.get_api_key_by_public_key(&key.public_key).await.unwrap();
    let ha1 = atrest_control::auth::provision::ha1(&key.public_key, &private);
    let ct = &stored.digest_ha1_ciphertext;
    assert!(!ct.windows(16).any(|w| w == ha1) && !ct.windows(private.len()).any(|w| w == private.as_bytes()));
    assert!(!String::from_utf8_lossy(ct).contains(&hex::encode(ha1)));
    for debug in [format!("{stored:?}"), format!("{key:?}")] {
        assert!(!debug.contains(&private) && !debug.contains(&hex::encode(ha1)), "{debug}");
    }

    let (sa, secret) =
        atrest_control::auth::provision::create_service_account(state, &w.org, "ci", Roles::org_owner()).await.unwrap();
    let id = sa.client_id.as_str();
    assert!(id.len() == 34 && id.starts_with("mdb_sa_id_"), "{id}");
    let secret_text = secret.expose_secret();
    assert!(secret_text.starts_with("mdb_sa_sk_") && secret_text.len() >= 40, "{secret_text}");
    let stored = state.store.get_service_account(&sa.client_id).await.unwrap();
    assert_eq!(stored.secret_sha256, atrest_control::auth::provision::sha256(secret_text.as_bytes()));
    for debug in [format!("{stored:?}"), format!("{sa:?}"), format!("{secret:?}")] {
        assert!(!debug.contains(secret_text) && !debug.contains(&hex::encode(stored.secret_sha256)), "{debug}");
    }
}

#[tokio::test]
async fn curl_digest_works() {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        println!("SKIPPED curl_digest_works: curl is not installed (scripts/test.sh installs it in CI)");
        return;
    }
    let w = World::start().await;
    let (user, pass) = w.key(&w.org, on_group(&w.a, GroupRole::GroupReadOnly)).await;
    let curl = |path: String, pass: String| {
        let user = user.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("curl")
                .args(["-sS", "--digest", "--user", &format!("{user}:{pass}"), "-H", &format!("Accept: {ACCEPT}")])
                .args(["-w", "\n%{http_code}", &path])
                .output()
                .unwrap();
            assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8(out.stdout).unwrap();
            let (body, code) = text.rsplit_once('\n').unwrap();
            (code.to_owned(), serde_json::from_str::<Value>(body).unwrap())
        })
    };
    let (code, body) = curl(w.url(&w.group_path(&w.a)), pass.clone()).await.unwrap();
    assert_eq!(code, "200", "{body}");
    assert_eq!(body["id"], w.a.as_str());
    let (code, body) = curl(w.url("/api/atlas/v2/groups?pageNum=1&itemsPerPage=5"), pass.clone()).await.unwrap();
    assert_eq!(code, "200", "{body}");
    assert_eq!(body["totalCount"], 1);
    let (code, body) = curl(w.url(&w.group_path(&w.a)), "wrong".into()).await.unwrap();
    assert_eq!(code, "401", "{body}");
}
