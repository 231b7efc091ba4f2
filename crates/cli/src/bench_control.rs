//! Control-plane benchmarks (issue 3 §8). Each builds its world in-process: the emulator, the
//! platform app, customer tenants with grants (through the emulator's public surfaces), and a
//! control plane on a temporary embedded store configured as `atrest up` configures it; then it
//! prints the figure next to a baseline measured in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use atrest_control::{Config, ControlPlane};
use atrest_emulator::scenario::{self, Azure, Customer, VaultAuth};
use atrest_emulator::{Emulator, EmulatorConfig};
use atrest_store::{OrgId, Organization, Roles};

const ACCEPT: &str = "application/vnd.atlas.2023-01-01+json";

struct World {
    _dir: tempfile::TempDir,
    emu: Emulator,
    az: Azure,
    platform: scenario::Platform,
    control: ControlPlane,
    http: reqwest::Client,
    token: String,
    org: OrgId,
}

/// A customer tenant with the platform's service principal, a vault, a key and the seeds'
/// grants (Reader and Key Vault Crypto User on the vault). Shared with the node benchmarks.
pub(crate) struct Tenant {
    pub customer: Customer,
    pub sp: String,
    pub rg: String,
    pub vault: String,
    pub vault_id: String,
    pub kid: String,
    /// The Key Vault Crypto User assignment (delete it to revoke).
    pub crypto_assignment: String,
}

/// Customer tenant `i`, made through the emulator's public surfaces as the customer's admin.
pub(crate) async fn new_tenant(
    az: &Azure,
    emu: &Emulator,
    platform: &scenario::Platform,
    i: usize,
) -> anyhow::Result<Tenant> {
    let customer = Customer::create(az, &emu.info().bootstrap, &format!("Customer {i}")).await?;
    let sp = customer.create_service_principal(&platform.app_id).await?;
    let rg = "bench-rg".to_string();
    customer.create_resource_group(&rg).await?;
    let vault = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let vault_id = customer.create_vault(&rg, &vault, VaultAuth::Rbac, true).await?;
    let kid = customer.create_key(&vault, "cmk", None).await?;
    customer.assign_role(&sp, scenario::roles::READER, &vault_id).await?;
    let crypto_assignment = customer.assign_role(&sp, scenario::roles::KEY_VAULT_CRYPTO_USER, &vault_id).await?;
    Ok(Tenant { customer, sp, rg, vault, vault_id, kid, crypto_assignment })
}

/// The PATCH body for a project on `t`'s vault with role `role` and key `kid`.
pub(crate) fn ear_block(t: &Tenant, role: &str, kid: &str) -> Value {
    json!({"azureKeyVault": {
        "enabled": true, "roleId": role, "subscriptionID": t.customer.subscription_id(),
        "resourceGroupName": t.rg, "keyVaultName": t.vault, "keyIdentifier": kid, "azureEnvironment": "AZURE",
    }})
}

impl World {
    async fn start(revalidate_interval_secs: u64, on_read_secs: u64) -> anyhow::Result<World> {
        let dir = tempfile::tempdir()?;
        let emu = Emulator::start(EmulatorConfig::new("127.0.0.1:0".parse()?, dir.path().join("emulator"))).await?;
        let az = Azure::new(crate::demo::emulator_client(emu.addr(), &emu.ca_pem())?);
        let platform = scenario::create_platform(&az, &emu.info().bootstrap).await?;
        let cdir = dir.path().join("control");
        std::fs::create_dir_all(&cdir)?;
        atrest_control::files::write_private(&cdir.join("cert.pem"), platform.cert_pem.as_bytes())?;
        atrest_control::files::write_private(&cdir.join("key.pem"), platform.key_pem.as_bytes())?;
        let mut config =
            Config { listen: "127.0.0.1:0".parse()?, data_dir: cdir.clone(), bootstrap: false, ..Config::default() };
        config.platform.app_id = Some(platform.app_id.clone());
        config.platform.certificate_path = Some(cdir.join("cert.pem"));
        config.platform.private_key_path = Some(cdir.join("key.pem"));
        config.azure.endpoint_override = Some(emu.addr());
        config.azure.extra_ca_path = Some(emu.info().ca_pem.clone().into());
        config.validation.revalidate_interval_secs = revalidate_interval_secs;
        config.validation.on_read_min_interval_secs = on_read_secs;
        config.validation.poll_interval_ms = 200;
        let control = ControlPlane::start(config).await?;
        let state = control.state().clone();
        let org =
            Organization { id: OrgId::new_random(), name: "bench".into(), created_at: time::OffsetDateTime::now_utc() };
        state.store.create_organization(&org).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let (sa, secret) =
            atrest_control::auth::provision::create_service_account(&state, &org.id, "bench", Roles::org_owner())
                .await?;
        let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
        let t: Value = http
            .post(format!("{}/api/oauth/token", control.url()))
            .basic_auth(sa.client_id.as_str(), Some(secrecy::ExposeSecret::expose_secret(&secret)))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = t["access_token"].as_str().context("access_token")?.to_string();
        Ok(World { _dir: dir, emu, az, platform, control, http, token, org: org.id })
    }

    async fn atlas(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.control.url()))
            .bearer_auth(&self.token)
            .header("Accept", ACCEPT);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "{path}: HTTP {status}: {v}");
        Ok(v)
    }

    async fn tenant(&self, i: usize) -> anyhow::Result<Tenant> {
        new_tenant(&self.az, &self.emu, &self.platform, i).await
    }

    /// A project using `t`'s key with a registered role; returns (group id, role id).
    async fn project(&self, name: &str, t: &Tenant) -> anyhow::Result<(String, String)> {
        let g = self
            .atlas(
                reqwest::Method::POST,
                "/api/atlas/v2/groups",
                Some(json!({"name": name, "orgId": self.org.as_str()})),
            )
            .await?;
        let group = g["id"].as_str().context("group id")?.to_string();
        let r = self
            .atlas(
                reqwest::Method::POST,
                &format!("/api/atlas/v2/groups/{group}/cloudProviderAccess"),
                Some(json!({"providerName": "AZURE", "servicePrincipalId": t.sp, "tenantId": t.customer.tenant_id()})),
            )
            .await?;
        Ok((group, r["_id"].as_str().context("_id")?.to_string()))
    }

    async fn shutdown(self) {
        self.control.shutdown().await;
        self.emu.shutdown().await;
    }
}

/// Requests per second of GET `path` with `concurrency` callers for `seconds`.
async fn rate(w: &World, path: &str, seconds: f64, concurrency: usize) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let url = format!("{}{path}", w.control.url());
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, token, done) = (w.http.clone(), url.clone(), w.token.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = http.get(&url).bearer_auth(&token).header("Accept", ACCEPT).send().await?;
                anyhow::ensure!(r.status().is_success(), "GET {url}: {}", r.status());
                r.bytes().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / seconds)
}

/// GET encryptionAtRest throughput against the cheapest authenticated call on the same server.
pub async fn control_read(seconds: u64, concurrency: usize) -> anyhow::Result<()> {
    let w = World::start(900, 60).await?;
    let t = w.tenant(0).await?;
    let (group, role) = w.project("read", &t).await?;
    w.atlas(
        reqwest::Method::PATCH,
        &format!("/api/atlas/v2/groups/{group}/encryptionAtRest"),
        Some(ear_block(&t, &role, &t.kid)),
    )
    .await?;
    let ear = format!("/api/atlas/v2/groups/{group}/encryptionAtRest");
    let base = "/api/atrest/v1/whoami";
    let half = seconds as f64 / 2.0;
    rate(&w, base, 1.0, concurrency).await?; // warm-up
    // Alternate so that drift on a noisy machine hits both alike.
    let b1 = rate(&w, base, half, concurrency).await?;
    let e1 = rate(&w, &ear, half, concurrency).await?;
    let e2 = rate(&w, &ear, half, concurrency).await?;
    let b2 = rate(&w, base, half, concurrency).await?;
    let (b, e) = ((b1 + b2) / 2.0, (e1 + e2) / 2.0);
    let ratio = e / b;
    println!(
        "GET encryptionAtRest: {e:.0} req/s; trivial authenticated handler (GET /api/atrest/v1/whoami): {b:.0} req/s; concurrency {concurrency}"
    );
    println!("ratio {ratio:.2} (target >= 0.50): {}", if ratio >= 0.5 { "MET" } else { "NOT MET" });
    w.shutdown().await;
    Ok(())
}

/// Sequential Azure round trips of a PATCH validation after the token, measured as the extra
/// time with `latency_ms` injected on every Azure host, divided by that latency.
pub async fn patch_round_trips(latency_ms: u64, runs: usize) -> anyhow::Result<()> {
    let w = World::start(3600, 0).await?;
    let t = w.tenant(0).await?;
    let (group, role) = w.project("patch", &t).await?;
    let unversioned = t.kid.rsplit_once('/').map(|(a, _)| a.to_string()).context("kid")?;
    let path = format!("/api/atlas/v2/groups/{group}/encryptionAtRest");
    // Warm the token cache and the connection pool.
    w.atlas(reqwest::Method::PATCH, &path, Some(ear_block(&t, &role, &t.kid))).await?;
    let mut flip = false;
    let mut patch = || {
        flip = !flip;
        let kid = if flip { unversioned.clone() } else { t.kid.clone() };
        ear_block(&t, &role, &kid)
    };
    let mut time_patches = async |n: usize| -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::new();
        for _ in 0..n {
            let body = patch();
            let started = Instant::now();
            w.atlas(reqwest::Method::PATCH, &path, Some(body)).await?;
            out.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(out)
    };
    let mut base = time_patches(runs).await?;
    let admin = &w.emu.info().bootstrap;
    w.az.admin(
        admin,
        reqwest::Method::POST,
        "faults",
        Some(json!({"kind": {"kind": "latency", "millis": latency_ms}})),
    )
    .await?;
    let mut slow = time_patches(runs).await?;
    w.az.admin(admin, reqwest::Method::DELETE, "faults", None).await?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (b, s) = (median(&mut base), median(&mut slow));
    let trips = (s - b) / latency_ms as f64;
    let stats = w.control.state().platform.cache.stats();
    println!(
        "PATCH encryptionAtRest (validation with a cached token): median {b:.1} ms without latency, {s:.1} ms with {latency_ms} ms per Azure request ({runs} runs each)"
    );
    println!(
        "sequential Azure round trips after the token: {trips:.2} (target <= 3): {}",
        if trips <= 3.2 { "MET" } else { "NOT MET" }
    );
    println!("token requests during the run: {} (all before the measured PATCHes)", stats.token_requests);
    w.shutdown().await;
    Ok(())
}

/// Concurrent PATCHes and revalidations across `projects` projects in `tenants` tenants, counting
/// Entra token requests.
pub async fn control_tokens(projects: usize, tenants: usize) -> anyhow::Result<()> {
    let w = World::start(1, 0).await?;
    eprintln!("creating {tenants} customer tenants with grants ...");
    let mut ts = Vec::new();
    for i in 0..tenants {
        ts.push(w.tenant(i).await?);
    }
    eprintln!("registering {projects} projects ...");
    let mut ps = Vec::new();
    for i in 0..projects {
        let t = &ts[i % tenants];
        ps.push((w.project(&format!("p{i}"), t).await?, i % tenants));
    }
    let state = w.control.state().clone();
    let after_registration = state.platform.cache.stats().token_requests;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for ((group, role), ti) in ps.iter().cloned() {
        let body = ear_block(&ts[ti], &role, &ts[ti].kid);
        let (http, url, token) = (
            w.http.clone(),
            format!("{}/api/atlas/v2/groups/{group}/encryptionAtRest", w.control.url()),
            w.token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http.patch(url).bearer_auth(token).header("Accept", ACCEPT).json(&body).send().await?;
            anyhow::ensure!(r.status().is_success(), "PATCH: {} {}", r.status(), r.text().await.unwrap_or_default());
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // Background revalidation (interval 1 s) runs for every project meanwhile and after.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = state.metrics.render();
    let revalidations: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("atrest_validations_total{") && l.contains("background"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let stats = state.platform.cache.stats();
    let during = stats.token_requests - after_registration;
    println!(
        "{projects} projects in {tenants} tenants: {projects} concurrent PATCHes and {revalidations:.0} background revalidations in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "token requests: {after_registration} while registering the service principals (ARM audience, one per registration: a proof never uses a cached token), \
         {during} during the PATCHes and revalidations (Key Vault audience, one per tenant); {} in all",
        stats.token_requests
    );
    let met = during == tenants as u64 && after_registration == projects as u64;
    println!(
        "target: exactly {tenants} token requests for the PATCHes and revalidations: {}",
        if met { "MET" } else { "NOT MET" }
    );
    w.shutdown().await;
    Ok(())
}
