//! Data-node benchmarks (issue 8 §10): Key Vault calls counted from the emulator's request
//! counts (`GET /_emulator/requests`), revocation to refusal, and a fleet of nodes against one
//! control plane and then two replicas on PostgreSQL. Each builds its world in-process as the
//! node tests do: the emulator, the platform app, customer tenants with the seeds' grants
//! (through the emulator's public surfaces), a control plane configured as `atrest up`
//! configures it, clusters, and real nodes (`EmbeddedNode`: the node's code, its data API on
//! real HTTP). Each prints its figure next to an exact expectation or a target from the same run
//! and says MET or NOT MET.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use atrest_azure::{CacheKey, TransportConfig};
use atrest_control::{Config, ControlPlane};
use atrest_domain::{AzureEnvironment, AzureUuid};
use atrest_emulator::scenario::{self, Azure};
use atrest_emulator::{Emulator, EmulatorConfig};
use atrest_node::runtime::{NodeOptions, NodeState, node_retry};
use atrest_node::server::EmbeddedNode;
use atrest_store::{OrgId, Organization, Roles};

use crate::bench_control::{Tenant, ear_block, new_tenant};

const ACCEPT: &str = "application/vnd.atlas.2023-01-01+json";
const CLUSTERS_ACCEPT: &str = "application/vnd.atlas.2024-08-05+json";
const VAULT_SCOPE: &str = "https://vault.azure.net/.default";
const CLUSTER: &str = "Cluster0";
/// Documents per node in the data-operations phase.
const DOCS: u64 = 100;

fn met(ok: bool) -> &'static str {
    if ok { "MET" } else { "NOT MET" }
}

/// How the control plane(s) of a world run.
struct Knobs {
    check_interval_secs: u64,
    grace_secs: u64,
    /// `None`: the embedded SQLite store in the temp dir.
    store_url: Option<String>,
    replicas: usize,
}

struct World {
    dir: tempfile::TempDir,
    emu: Emulator,
    az: Azure,
    platform: scenario::Platform,
    controls: Vec<ControlPlane>,
    http: reqwest::Client,
    token: String,
    org: OrgId,
    /// The bootstrap principal's ARM token for the admin API, fetched once before anything is
    /// counted (a fetch per admin call would count in the Entra figures).
    admin_token: String,
}

/// A project on a tenant's key with one cluster and its data credential.
struct Project {
    group: String,
    role: String,
    tenant: usize,
    /// `Cluster0`'s data credential.
    credential: String,
    /// The cluster of each of the project's nodes, in join order.
    clusters: Vec<String>,
}

/// Cluster sizes for `n` nodes: a replica set has 1, 3, 5 or 7 electable nodes, so larger
/// counts are split into clusters of 5.
fn cluster_sizes(n: usize) -> anyhow::Result<Vec<usize>> {
    match n {
        1 | 3 | 5 | 7 => Ok(vec![n]),
        _ if n.is_multiple_of(5) => Ok(vec![5; n / 5]),
        _ => bail!("{n} nodes per project: use 1, 3, 5, 7 or a multiple of 5 (clusters of 5)"),
    }
}

impl World {
    async fn start(k: &Knobs) -> anyhow::Result<World> {
        let dir = tempfile::tempdir()?;
        let emu = Emulator::start(EmulatorConfig::new("127.0.0.1:0".parse()?, dir.path().join("emulator"))).await?;
        let az = Azure::new(crate::demo::emulator_client(emu.addr(), &emu.ca_pem())?);
        let platform = scenario::create_platform(&az, &emu.info().bootstrap).await?;
        let cdir = dir.path().join("control");
        std::fs::create_dir_all(&cdir)?;
        atrest_control::files::write_private(&cdir.join("cert.pem"), platform.cert_pem.as_bytes())?;
        atrest_control::files::write_private(&cdir.join("key.pem"), platform.key_pem.as_bytes())?;
        let mut config = Config {
            listen: "127.0.0.1:0".parse()?,
            data_dir: cdir.clone(),
            store_url: k.store_url.clone(),
            bootstrap: false,
            ..Config::default()
        };
        config.platform.app_id = Some(platform.app_id.clone());
        config.platform.certificate_path = Some(cdir.join("cert.pem"));
        config.platform.private_key_path = Some(cdir.join("key.pem"));
        config.azure.endpoint_override = Some(emu.addr());
        config.azure.extra_ca_path = Some(emu.info().ca_pem.clone().into());
        // No background or on-read revalidation: the control plane's own Key Vault calls stay
        // out of what the benchmarks count, except where a PATCH makes them.
        config.validation.revalidate_interval_secs = 86400;
        config.validation.on_read_min_interval_secs = 86400;
        config.validation.poll_interval_ms = 200;
        config.validation.node_check_interval_secs = k.check_interval_secs;
        config.validation.node_denial_grace_secs = k.grace_secs;
        let mut controls = Vec::new();
        for _ in 0..k.replicas.max(1) {
            controls.push(ControlPlane::start(config.clone()).await?);
        }
        let state = controls[0].state().clone();
        let org =
            Organization { id: OrgId::new_random(), name: "bench".into(), created_at: time::OffsetDateTime::now_utc() };
        state.store.create_organization(&org).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let (sa, secret) =
            atrest_control::auth::provision::create_service_account(&state, &org.id, "bench", Roles::org_owner())
                .await?;
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
        let t: Value = http
            .post(format!("{}/api/oauth/token", controls[0].url()))
            .basic_auth(sa.client_id.as_str(), Some(secrecy::ExposeSecret::expose_secret(&secret)))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = t["access_token"].as_str().context("access_token")?.to_string();
        let admin_token = az.token(&emu.info().bootstrap, "https://management.azure.com/.default").await?;
        Ok(World { dir, emu, az, platform, controls, http, token, org: org.id, admin_token })
    }

    async fn atlas_with(&self, method: Method, path: &str, body: Option<Value>, accept: &str) -> anyhow::Result<Value> {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.controls[0].url()))
            .bearer_auth(&self.token)
            .header("Accept", accept);
        if let Some(b) = body {
            rb = rb.header("Content-Type", accept).json(&b);
        }
        let r = rb.send().await?;
        let status = r.status();
        let text = r.text().await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        ensure!(status.is_success(), "{path}: HTTP {status}: {text}");
        Ok(v)
    }

    async fn atlas(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.atlas_with(method, path, body, ACCEPT).await
    }

    async fn tenant(&self, i: usize) -> anyhow::Result<Tenant> {
        new_tenant(&self.az, &self.emu, &self.platform, i).await
    }

    /// The seeds' flow for a new project on `t`'s key (register, PATCH), then clusters
    /// `Cluster0`, `Cluster1`, ... for `nodes` nodes and a data credential for `Cluster0`.
    async fn project(&self, name: &str, tenants: &[Tenant], ti: usize, nodes: usize) -> anyhow::Result<Project> {
        let t = &tenants[ti];
        let g = self
            .atlas(Method::POST, "/api/atlas/v2/groups", Some(json!({"name": name, "orgId": self.org.as_str()})))
            .await?;
        let group = g["id"].as_str().context("group id")?.to_string();
        let r = self
            .atlas(
                Method::POST,
                &format!("/api/atlas/v2/groups/{group}/cloudProviderAccess"),
                Some(json!({"providerName": "AZURE", "servicePrincipalId": t.sp, "tenantId": t.customer.tenant_id()})),
            )
            .await?;
        let role = r["_id"].as_str().context("_id")?.to_string();
        self.atlas(
            Method::PATCH,
            &format!("/api/atlas/v2/groups/{group}/encryptionAtRest"),
            Some(ear_block(t, &role, &t.kid)),
        )
        .await?;
        let mut clusters = Vec::new();
        for (i, size) in cluster_sizes(nodes)?.into_iter().enumerate() {
            let cluster = format!("Cluster{i}");
            self.atlas_with(
                Method::POST,
                &format!("/api/atlas/v2/groups/{group}/clusters"),
                Some(json!({
                    "name": cluster,
                    "clusterType": "REPLICASET",
                    "encryptionAtRestProvider": "AZURE",
                    "replicationSpecs": [{"regionConfigs": [{"providerName": "AZURE", "regionName": "US_EAST_2", "priority": 7,
                        "electableSpecs": {"instanceSize": "M10", "nodeCount": size}}]}],
                })),
                CLUSTERS_ACCEPT,
            )
            .await?;
            clusters.extend(std::iter::repeat_n(cluster, size));
        }
        let c = self
            .atlas(
                Method::POST,
                &format!("/api/atrest/v1/groups/{group}/clusters/{CLUSTER}/dataCredentials"),
                Some(json!({})),
            )
            .await?;
        let credential = c["credential"].as_str().context("credential")?.to_string();
        Ok(Project { group, role, tenant: ti, credential, clusters })
    }

    /// A join token for the `k`-th node of project `p` (its cluster).
    async fn join_token(&self, p: &Project, k: usize) -> anyhow::Result<String> {
        let cluster = p.clusters.get(k).context("more nodes than the project's clusters have")?;
        let v = self
            .atlas(
                Method::POST,
                &format!("/api/atrest/v1/groups/{}/clusters/{cluster}/joinTokens", p.group),
                Some(json!({})),
            )
            .await?;
        Ok(v["token"].as_str().context("join token")?.to_string())
    }

    fn node_options(&self, dir: &Path, control: usize, token: Option<String>) -> NodeOptions {
        NodeOptions {
            data_dir: dir.to_path_buf(),
            control_plane: self.controls[control % self.controls.len()].url().to_string(),
            control_plane_ca_pem: None,
            join_token: token.map(SecretString::from),
            data_url: String::new(),
            azure: TransportConfig::with_override(self.emu.addr(), self.emu.ca_pem()),
            retry: node_retry(),
        }
    }

    /// The emulator's request counts since the last reset.
    async fn requests(&self) -> anyhow::Result<Counts> {
        Ok(Counts(self.admin(Method::GET, "requests").await?))
    }

    async fn reset_requests(&self) -> anyhow::Result<()> {
        self.admin(Method::DELETE, "requests").await?;
        Ok(())
    }

    async fn admin(&self, method: Method, path: &str) -> anyhow::Result<Value> {
        let url = format!("https://management.azure.com/_emulator/{path}");
        self.az.call(method, &url, &self.admin_token, None, "emulator admin API").await
    }

    /// Forget every replica's Key Vault token for `t`'s tenant, in its cache and in the store's
    /// shared tier, so the next node that asks makes the control plane fetch one from Entra: what
    /// a start costs when no replica holds a token (the fleet's first, or once tokens expired).
    async fn forget_vault_token(&self, t: &Tenant) -> anyhow::Result<()> {
        let key = CacheKey {
            authority: AzureEnvironment::Azure.login_host().to_string(),
            tenant: t.customer.tenant_id().parse::<AzureUuid>()?,
            client_id: self.platform.app_id.parse::<AzureUuid>()?,
            scope: VAULT_SCOPE.to_string(),
        };
        for c in &self.controls {
            let state = c.state();
            let tokens = state.platform.secretless().map_err(|e| anyhow::anyhow!("{}", e.detail))?.tokens();
            let held = tokens.key_vault_token(AzureEnvironment::Azure, &key.tenant).await?;
            // As if Key Vault had refused it: dropped here, and from the shared tier by the next
            // fetch (which then asks Entra).
            state.platform.cache.invalidate_if_sha256(&key, &held.sha256());
        }
        Ok(())
    }

    /// Check-ins handled by every replica so far: (config polls, status reports).
    fn check_ins(&self) -> (u64, u64) {
        let mut polls = 0;
        let mut reports = 0;
        for c in &self.controls {
            let text = c.state().metrics.render();
            for l in text.lines().filter(|l| l.starts_with("atrest_http_requests_total{")) {
                let n = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
                if l.contains("route=\"/api/atrest/v1/node/config\"") {
                    polls += n;
                } else if l.contains("route=\"/api/atrest/v1/node/status\"") {
                    reports += n;
                }
            }
        }
        (polls, reports)
    }

    async fn shutdown(self) {
        for c in self.controls {
            c.shutdown().await;
        }
        self.emu.shutdown().await;
        drop(self.dir);
    }
}

/// `GET /_emulator/requests`.
struct Counts(Value);

impl Counts {
    fn rows(&self) -> impl Iterator<Item = &Value> {
        self.0["value"].as_array().into_iter().flatten()
    }

    fn sum(&self, f: impl Fn(&Value) -> bool) -> u64 {
        self.rows().filter(|r| f(r)).filter_map(|r| r["count"].as_u64()).sum()
    }

    fn kv(&self, op: &str) -> u64 {
        self.sum(|r| r["service"] == "keyvault" && r["operation"] == op)
    }

    fn kv_total(&self) -> u64 {
        self.sum(|r| r["service"] == "keyvault")
    }

    /// Entra token requests for Key Vault by `client` (the platform app).
    fn vault_tokens(&self, client: &str) -> u64 {
        self.sum(|r| {
            r["service"] == "entra"
                && r["operation"] == "token"
                && r["scope"] == VAULT_SCOPE
                && r["client_id"].as_str().is_some_and(|c| c.eq_ignore_ascii_case(client))
        })
    }

    fn entra_tokens(&self) -> u64 {
        self.sum(|r| r["service"] == "entra" && r["operation"] == "token")
    }

    fn total(&self) -> u64 {
        self.0["total"].as_u64().unwrap_or(0)
    }

    /// `keyvault decrypt 3, entra token 1, ...`, for the printout.
    fn summary(&self) -> String {
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        for r in self.rows() {
            let name = format!("{} {}", r["service"].as_str().unwrap_or("?"), r["operation"].as_str().unwrap_or("?"));
            *by.entry(name).or_default() += r["count"].as_u64().unwrap_or(0);
        }
        if by.is_empty() {
            return "none".into();
        }
        by.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    }
}

async fn wait_state(node: &EmbeddedNode, want: NodeState, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let s = node.handle().gate().status();
        if s.state == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("node {} not {want:?} within {limit:?}: {s:?}", s.node_id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

// ---------------------------------------------------------------------------------------------
// Key Vault calls
// ---------------------------------------------------------------------------------------------

/// Key Vault calls made by `nodes` nodes, from the emulator's counts: per node start, over
/// `ops` data-API operations, and per check (`checks` checks triggered on every node).
pub async fn key_vault_calls(nodes: usize, ops: u64, checks: u64, concurrency: usize) -> anyhow::Result<()> {
    // The periodic check is out of the way (one a day); checks are triggered below, so every
    // count is exact.
    let w = World::start(&Knobs { check_interval_secs: 86400, grace_secs: 0, store_url: None, replicas: 1 }).await?;
    let tenants = vec![w.tenant(0).await?];
    let p = w.project("kv-calls", &tenants, 0, nodes).await?;
    let app = w.platform.app_id.clone();

    eprintln!("joining {nodes} nodes ...");
    let mut dirs = Vec::new();
    let mut joined = Vec::new();
    w.reset_requests().await?;
    for i in 0..nodes {
        let dir = w.dir.path().join(format!("node-{i}"));
        let token = w.join_token(&p, i).await?;
        let node = EmbeddedNode::start(w.node_options(&dir, 0, Some(token)), "127.0.0.1:0".parse()?).await?;
        wait_state(&node, NodeState::Serving, Duration::from_secs(60)).await?;
        dirs.push(dir);
        joined.push(node);
    }
    let first = w.requests().await?;
    for n in joined {
        n.shutdown().await;
    }

    // Starts: the control plane's cached Key Vault token is forgotten before each, so each start
    // costs what a start after a control-plane restart costs.
    eprintln!("restarting each node with a cold control-plane token cache ...");
    let mut running = Vec::new();
    let (mut start_tokens, mut start_decrypts, mut start_other_kv, mut start_other) = (0, 0, 0, 0);
    let mut per_start = Vec::new();
    for dir in &dirs {
        w.forget_vault_token(&tenants[0]).await?;
        w.reset_requests().await?;
        let node = EmbeddedNode::start(w.node_options(dir, 0, None), "127.0.0.1:0".parse()?).await?;
        wait_state(&node, NodeState::Serving, Duration::from_secs(60)).await?;
        let c = w.requests().await?;
        let (t, d) = (c.vault_tokens(&app), c.kv("decrypt"));
        start_tokens += t;
        start_decrypts += d;
        start_other_kv += c.kv_total() - d;
        start_other += c.total() - c.kv_total() - t;
        per_start.push(c.summary());
        running.push(node);
    }

    // Data operations: puts and gets of 100 documents on every node (written once first, so
    // that every get finds its document).
    let urls: Arc<Vec<String>> = Arc::new(running.iter().map(|n| n.url()).collect());
    for base in urls.iter() {
        for d in 0..DOCS {
            let r = w
                .http
                .put(format!("{base}/v1/collections/bench/documents/d{d}"))
                .bearer_auth(&p.credential)
                .json(&json!({"n": d}))
                .send()
                .await?;
            ensure!(r.status().is_success(), "seeding {base}: {}", r.status());
        }
    }
    eprintln!("{ops} data-API operations on {nodes} nodes, {concurrency} in flight ...");
    w.reset_requests().await?;
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, urls, next, failed, cred) =
            (w.http.clone(), urls.clone(), next.clone(), failed.clone(), p.credential.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    break;
                }
                let base = &urls[((i / 2) as usize) % urls.len()];
                let doc = format!("{base}/v1/collections/bench/documents/d{}", (i / 2) % DOCS);
                let r = if i % 2 == 0 {
                    http.put(&doc).bearer_auth(&cred).json(&json!({"n": i, "pad": "x".repeat(200)})).send().await
                } else {
                    http.get(&doc).bearer_auth(&cred).send().await
                };
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let data_secs = started.elapsed().as_secs_f64();
    let data = w.requests().await?;
    let failed = failed.load(Ordering::Relaxed);

    // Checks, triggered the way "Try Again" triggers them (the nodes' check nonces), one round
    // at a time: each round waits until every node has checked.
    eprintln!("{checks} checks on each of the {nodes} nodes ...");
    w.reset_requests().await?;
    let state = w.controls[0].state().clone();
    let group: atrest_store::GroupId = p.group.parse().map_err(|e| anyhow::anyhow!("group id: {e:?}"))?;
    for _ in 0..checks {
        let before: Vec<_> = running.iter().map(|n| n.handle().gate().status().last_check_at).collect();
        let n = state.store.request_node_checks(&group).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(n == nodes as u64, "the store asked {n} nodes to check, not {nodes}");
        state.nodes_config_changed();
        let deadline = Instant::now() + Duration::from_secs(30);
        for (node, was) in running.iter().zip(before) {
            while node.handle().gate().status().last_check_at == was {
                ensure!(Instant::now() < deadline, "a node did not check within 30 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Let a late report land before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let checked = w.requests().await?;
    for n in running {
        n.shutdown().await;
    }
    w.shutdown().await;

    let n = nodes as u64;
    println!("first start of {nodes} nodes (join: a new master key wrapped): {}", first.summary());
    for (i, s) in per_start.iter().enumerate() {
        println!("restart of node {i} with a cold control-plane token cache: {s}");
    }
    let starts_ok = start_tokens == n && start_decrypts == n && start_other_kv == 0 && start_other == 0;
    println!(
        "node starts: {nodes}; Entra Key Vault tokens (client = the platform app, i.e. fetched by the control plane) {start_tokens} (expected {n}), Key Vault decrypts {start_decrypts} (expected {n}), other Key Vault calls {start_other_kv}, other Azure calls {start_other}"
    );
    println!("target: exactly 1 token (from the control plane) + 1 decrypt per node start: {}", met(starts_ok));
    println!(
        "{ops} data-API operations ({failed} failed) in {data_secs:.1} s ({:.0}/s): Key Vault calls {}, Entra token requests {}; all Azure requests: {}",
        ops as f64 / data_secs,
        data.kv_total(),
        data.entra_tokens(),
        data.summary()
    );
    println!("target: 0 Key Vault calls per data operation: {}", met(data.kv_total() == 0 && failed == 0));
    let want = n * checks;
    let check_ok = checked.kv("decrypt") == want && checked.kv_total() == want && checked.entra_tokens() == 0;
    println!(
        "{checks} checks x {nodes} nodes: Key Vault decrypts {} (expected {want}), all Key Vault calls {}, Entra token requests {} (the nodes' tokens are cached); all Azure requests: {}",
        checked.kv("decrypt"),
        checked.kv_total(),
        checked.entra_tokens(),
        checked.summary()
    );
    println!("target: exactly 1 decrypt per node per check: {}", met(check_ok));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Revocation to refusal
// ---------------------------------------------------------------------------------------------

/// `rounds` revocations of Key Vault Crypto User through ARM; the time from the DELETE's
/// response until every node's data API answers 503.
pub async fn revocation(rounds: usize, nodes: usize, interval_secs: u64, grace_secs: u64) -> anyhow::Result<()> {
    let w =
        World::start(&Knobs { check_interval_secs: interval_secs, grace_secs, store_url: None, replicas: 1 }).await?;
    let mut tenants = vec![w.tenant(0).await?];
    let p = w.project("revocation", &tenants, 0, nodes).await?;
    let mut running = Vec::new();
    for i in 0..nodes {
        let token = w.join_token(&p, i).await?;
        let dir = w.dir.path().join(format!("node-{i}"));
        let node = EmbeddedNode::start(w.node_options(&dir, 0, Some(token)), "127.0.0.1:0".parse()?).await?;
        wait_state(&node, NodeState::Serving, Duration::from_secs(60)).await?;
        running.push(node);
    }
    let docs: Vec<String> = running.iter().map(|n| format!("{}/v1/collections/c/documents/d", n.url())).collect();
    for d in &docs {
        let r = w.http.put(d).bearer_auth(&p.credential).json(&json!({"v": 1})).send().await?;
        ensure!(r.status().is_success(), "PUT {d}: {}", r.status());
    }
    let limit = Duration::from_secs(interval_secs + grace_secs + 30);
    let mut times = Vec::new();
    for round in 0..rounds {
        let t = &tenants[0];
        // Revocations land at every phase of the check cycle, evenly: right after the restore
        // the node has just checked, so without this wait every round would be the worst case.
        tokio::time::sleep(Duration::from_secs(interval_secs).mul_f64(round as f64 / rounds as f64)).await;
        // The customer removes the grant, as `az role assignment delete --ids ...` does.
        t.customer.delete_role_assignment(&t.crypto_assignment).await?;
        let revoked_at = Instant::now();
        let mut worst: f64 = 0.0;
        for d in &docs {
            loop {
                let r = w.http.get(d).bearer_auth(&p.credential).send().await?;
                if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    worst = worst.max(revoked_at.elapsed().as_secs_f64());
                    break;
                }
                ensure!(revoked_at.elapsed() < limit, "round {round}: {d} still serves after {limit:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        times.push(worst);
        eprintln!("round {}: refused {:.3} s after the DELETE's response", round + 1, worst);
        // Restore and wait until every node serves again.
        let id = t.customer.assign_role(&t.sp, scenario::roles::KEY_VAULT_CRYPTO_USER, &t.vault_id).await?;
        tenants[0].crypto_assignment = id;
        for n in &running {
            wait_state(n, NodeState::Serving, limit).await?;
        }
        for d in &docs {
            let r = w.http.get(d).bearer_auth(&p.credential).send().await?;
            ensure!(r.status().is_success(), "round {round}: {d} answers {} after the restore", r.status());
        }
    }
    for n in running {
        n.shutdown().await;
    }
    w.shutdown().await;
    let s = sorted(times);
    let (p50, max) = (percentile(&s, 0.5), s[s.len() - 1]);
    let target = (interval_secs + grace_secs + 1) as f64;
    println!(
        "{rounds} revocations (Key Vault Crypto User removed through ARM), {nodes} node(s), check interval {interval_secs} s, grace {grace_secs} s: time from the DELETE's response until the data API refuses (503): p50 {p50:.3} s, max {max:.3} s"
    );
    println!("target: max <= interval + grace + 1 s = {target:.0} s: {}", met(max <= target));
    println!(
        "beside: MongoDB Atlas checks every 15 min (900 s); Azure SQL TDE denies connections within 10 min (600 s)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fleet
// ---------------------------------------------------------------------------------------------

/// Raise the soft open-files limit to the hard one (each node holds a listener, its engine's
/// files and a few connections; so do the control plane and the emulator for it).
fn raise_fd_limit(need: u64) -> anyhow::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        if lim.rlim_cur < need && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                bail!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// User + system CPU seconds this process has used.
fn cpu_secs() -> f64 {
    // SAFETY: `rusage` is plain integers, for which all-zero is a valid value; getrusage only
    // writes the struct passed.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One fleet run against `replicas` control planes (1: embedded SQLite; 2: PostgreSQL).
async fn fleet_run(
    nodes: usize,
    tenants_n: usize,
    replicas: usize,
    seconds: u64,
    patches: usize,
    interval_secs: u64,
) -> anyhow::Result<bool> {
    let store_url = if replicas > 1 {
        Some(atrest_store::testing::fresh_postgres_database().await.map_err(|e| anyhow::anyhow!("{e}"))?)
    } else {
        None
    };
    let label =
        if replicas > 1 { format!("{replicas} replicas on PostgreSQL") } else { "one control plane (SQLite)".into() };
    eprintln!("[{label}] creating {tenants_n} customer tenants and projects ...");
    let w = World::start(&Knobs { check_interval_secs: interval_secs, grace_secs: 0, store_url, replicas }).await?;
    let mut tenants = Vec::new();
    for i in 0..tenants_n {
        tenants.push(w.tenant(i).await?);
    }
    // Counted from here: the PATCHes' validations and everything the nodes cause.
    w.reset_requests().await?;
    let per = nodes.div_ceil(tenants_n);
    let mut projects = Vec::new();
    for i in 0..tenants_n {
        projects.push(w.project(&format!("fleet-{i}"), &tenants, i, per).await?);
    }
    eprintln!("[{label}] joining {nodes} nodes ...");
    let started = Instant::now();
    let mut fleet: Vec<(usize, EmbeddedNode)> = Vec::new();
    let mut joins = Vec::new();
    for i in 0..nodes {
        let pi = i % tenants_n;
        // Each tenant's nodes are split between the replicas.
        let replica = (i / tenants_n) % replicas;
        let token = w.join_token(&projects[pi], i / tenants_n).await?;
        let dir = w.dir.path().join(format!("node-{i}"));
        joins.push((pi, w.node_options(&dir, replica, Some(token))));
    }
    // Joined a few at a time, as a fleet rolls out.
    let mut pending = joins.into_iter();
    loop {
        let batch: Vec<_> = pending.by_ref().take(16).collect();
        if batch.is_empty() {
            break;
        }
        let started: Vec<_> = futures::future::join_all(batch.into_iter().map(|(pi, o)| async move {
            (pi, EmbeddedNode::start(o, std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await)
        }))
        .await;
        for (pi, n) in started {
            fleet.push((pi, n?));
        }
    }
    for (_, n) in &fleet {
        wait_state(n, NodeState::Serving, Duration::from_secs(120)).await?;
    }
    let join_secs = started.elapsed().as_secs_f64();
    eprintln!("[{label}] {nodes} nodes SERVING after {join_secs:.1} s; measuring check-ins for {seconds} s ...");

    // Check-ins the fleet makes by itself, and the CPU this process (nodes, emulator, control
    // plane(s); not PostgreSQL's processes) spends meanwhile.
    let (p0, r0) = w.check_ins();
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (p1, r1) = w.check_ins();
    let fleet_secs = t0.elapsed().as_secs_f64();
    let fleet_cpu = (cpu_secs() - cpu0) / fleet_secs;
    let fleet_rate = ((p1 - p0) + (r1 - r0)) as f64 / fleet_secs;

    // Then as many more as 64 extra callers can make with nodes' own credentials (a config poll
    // answered 304 at once and a status report each), on top of the fleet: what the control
    // plane(s) sustain.
    let mut extra = Vec::new();
    for (i, (_, n)) in fleet.iter().take(64).enumerate() {
        let dir = w.dir.path().join(format!("node-{i}"));
        let (identity, credential) = atrest_node::identity::load(&dir)?.context("node.json")?;
        let client = atrest_node::control::ControlClient::new(&identity.control_plane, None)
            .map_err(|e| anyhow::anyhow!(e))?
            .with_credential(credential);
        let etag = match client.config(None, Duration::ZERO).await.map_err(|e| anyhow::anyhow!("{e}"))? {
            atrest_node::control::ConfigPoll::Changed(_, tag) => tag,
            _ => None,
        };
        let s = n.handle().gate().status();
        let report = atrest_node::control::StatusReport {
            state: s.state.as_str().to_string(),
            key_identifier: s.key_identifier.clone(),
            key_version: s.key_version.clone(),
            auth_mode: s.auth_mode.clone(),
            master_key_generation: s.master_key_generation,
            last_check_at: None,
            config_etag: etag.clone(),
            via: s.via,
            last_error: None,
        };
        extra.push((client, etag, report));
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let extra_failed = Arc::new(AtomicU64::new(0));
    let (p2, r2) = w.check_ins();
    let t2 = Instant::now();
    let mut tasks = Vec::new();
    for (client, etag, report) in extra {
        let failed = extra_failed.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let polled = client.config(etag.as_deref(), Duration::ZERO).await;
                let reported = client.report(&report).await;
                if polled.is_err() || reported.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let (p3, r3) = w.check_ins();
    let sat_secs = t2.elapsed().as_secs_f64();
    let sat_rate = ((p3 - p2) + (r3 - r2)) as f64 / sat_secs;
    let extra_failed = extra_failed.load(Ordering::Relaxed);

    // PATCHes: a new key version PATCHed in for one project at a time; the time from the
    // PATCH's response until every node of its cluster has re-wrapped its master key under it.
    eprintln!("[{label}] {patches} PATCHes ...");
    let mut reach = Vec::new();
    for k in 0..patches {
        let pi = k % projects.len();
        let p = &projects[pi];
        let t = &tenants[p.tenant];
        let kid = t.customer.create_key(&t.vault, "cmk", None).await?;
        let version = kid.rsplit('/').next().unwrap_or_default().to_string();
        w.atlas(
            Method::PATCH,
            &format!("/api/atlas/v2/groups/{}/encryptionAtRest", p.group),
            Some(ear_block(t, &p.role, &kid)),
        )
        .await?;
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(60);
        for (_, n) in fleet.iter().filter(|(q, _)| *q == pi) {
            while n.handle().gate().status().key_version.as_deref() != Some(version.as_str()) {
                ensure!(Instant::now() < deadline, "PATCH {k}: a node did not take the new key version within 60 s");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        reach.push(t0.elapsed().as_secs_f64());
    }
    let counts = w.requests().await?;
    let app = w.platform.app_id.clone();
    let elapsed_total = started.elapsed().as_secs_f64();
    let states: Vec<NodeState> = fleet.iter().map(|(_, n)| n.handle().gate().status().state).collect();
    let serving = states.iter().filter(|s| s.serves()).count();
    for (_, n) in fleet {
        n.shutdown().await;
    }
    w.shutdown().await;

    let tokens = counts.vault_tokens(&app);
    // One per tenant, however many replicas serve it: they share tokens through the store.
    let want_tokens = tenants_n as u64;
    let reach = sorted(reach);
    println!(
        "[{label}] {nodes} nodes in {tenants_n} tenants ({per} per project, in clusters of at most 7), check interval {interval_secs} s, joined and SERVING in {join_secs:.1} s; {serving}/{nodes} serving at the end"
    );
    println!(
        "[{label}] Entra Key Vault token requests over the run ({elapsed_total:.0} s, inside one token lifetime): {tokens} (expected {want_tokens}: one per tenant{}); all Azure requests: {}",
        if replicas > 1 { ", shared by the replicas through the store" } else { "" },
        counts.summary()
    );
    println!(
        "[{label}] target: exactly {tenants_n} per token lifetime{}: {}",
        if replicas > 1 { format!(" across {replicas} replicas") } else { String::new() },
        met(tokens == want_tokens)
    );
    println!(
        "[{label}] check-ins by the fleet alone: {fleet_rate:.0}/s ({} config polls + {} status reports in {fleet_secs:.1} s; offered: {:.0} reports/s); this process used {fleet_cpu:.2} cores meanwhile ({nodes} waiting config long-polls, each re-read about once a second, included)",
        p1 - p0,
        r1 - r0,
        nodes as f64 / interval_secs as f64
    );
    println!(
        "[{label}] check-ins sustained with 64 more callers on top: {sat_rate:.0}/s ({} polls + {} reports in {sat_secs:.1} s, {extra_failed} failed)",
        p3 - p2,
        r3 - r2
    );
    println!(
        "[{label}] PATCH to every node of the cluster (new key version, re-wrapped): p50 {:.3} s, max {:.3} s over {patches}",
        percentile(&reach, 0.5),
        reach.last().copied().unwrap_or(f64::NAN)
    );
    Ok(tokens == want_tokens && serving == nodes && extra_failed == 0)
}

/// The fleet against one control plane, then against two replicas on PostgreSQL.
pub async fn fleet(
    nodes: usize,
    tenants: usize,
    seconds: u64,
    patches: usize,
    interval_secs: u64,
    replicas_only: bool,
) -> anyhow::Result<()> {
    ensure!(tenants > 0 && nodes >= tenants, "--nodes must be at least --tenants");
    let fds = raise_fd_limit(nodes as u64 * 16 + 1024)?;
    eprintln!("open-files limit: {fds}");
    let mut ok = true;
    if !replicas_only {
        ok &= fleet_run(nodes, tenants, 1, seconds, patches, interval_secs).await?;
    }
    ok &= fleet_run(nodes, tenants, 2, seconds, patches, interval_secs).await?;
    println!("fleet: every node served throughout, the token counts are exact and no check-in failed: {}", met(ok));
    Ok(())
}
