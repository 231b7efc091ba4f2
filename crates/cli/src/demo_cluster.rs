//! `atrest up`'s demo cluster: the demo project's Encryption at Rest configured as the seeds'
//! flow configures it, cluster `Cluster0`, and its three data nodes as child processes.
//!
//! Everything here goes through the public surfaces a customer and an operator use: the Atlas
//! Admin API (with the bootstrap service account's OAuth token), atrest's operator endpoints
//! (join tokens, data credentials, the node list), the emulator's ARM as the customer's
//! administrator, and `atrest node` itself. Each step looks before it acts, so a second `up` on
//! the same data directory reuses the role, the grants, the cluster, the data credential and the
//! nodes' data directories instead of making new ones.
//!
//! **Invariants:**
//! - A join token is handed to a child only through its environment (`ATREST_JOIN_TOKEN`), never
//!   on its command line (where `ps` shows it), and only when its data dir has not joined yet.
//! - The children die with `up`: SIGTERM on a normal exit, and `PR_SET_PDEATHSIG` when `up` is
//!   killed (the kernel sends SIGTERM to a child whose parent thread died).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use atrest_emulator::scenario::{self, ARM_SCOPE, Azure, Customer, DemoLayout};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The demo cluster's name, as the issue and the guide spell it.
pub const CLUSTER: &str = "Cluster0";
/// How many data nodes `up` runs.
pub const NODES: usize = 3;
/// The nodes' check interval in the demo, so a revocation shows within seconds.
pub const CHECK_INTERVAL_SECS: u64 = 5;
const ACCEPT: &str = "application/vnd.atlas.2023-01-01+json";
const ACCEPT_CLUSTERS: &str = "application/vnd.atlas.2024-10-23+json";

/// An Atlas Admin API client with the bootstrap service account's OAuth token.
pub struct Atlas {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Atlas {
    pub async fn sign_in(base: &str, client_id: &str, secret: &str) -> anyhow::Result<Atlas> {
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{base}/api/oauth/token"))
            .basic_auth(client_id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .context("asking the control plane for a service account token")?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "the control plane refused the bootstrap service account: HTTP {status}: {v}");
        let token = v["access_token"].as_str().context("access_token in the token response")?.to_string();
        Ok(Atlas { http, base: base.to_string(), token })
    }

    /// One call; returns the status and the JSON body (null when there is none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let mut rb = self.http.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(&self.token);
        rb = rb.header("Accept", accept);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.with_context(|| format!("{method} {path}"))?;
        let status = r.status();
        let bytes = r.bytes().await?;
        let v = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, v))
    }

    /// A call that must succeed.
    pub async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, v) = self.call(method.clone(), path, accept, body).await?;
        ensure!(status.is_success(), "{method} {path}: HTTP {status}: {v}");
        Ok(v)
    }
}

/// The seeds' flow for the demo project, done by `up` so that `Cluster0` can use the key: the
/// service principal registered (Cloud Provider Access), granted Reader and Key Vault Crypto
/// User on the vault by the customer, and the configuration PATCHed with the role. Skipped when
/// the project already has a valid Azure configuration.
pub async fn configure_encryption(
    atlas: &Atlas,
    group: &str,
    d: &DemoLayout,
    http: &reqwest::Client,
) -> anyhow::Result<()> {
    let ear =
        atlas.ok(reqwest::Method::GET, &format!("/api/atlas/v2/groups/{group}/encryptionAtRest"), ACCEPT, None).await?;
    if ear["azureKeyVault"]["enabled"] == json!(true) && ear["azureKeyVault"]["valid"] == json!(true) {
        return Ok(());
    }
    let cpa_path = format!("/api/atlas/v2/groups/{group}/cloudProviderAccess");
    let cpa = atlas.ok(reqwest::Method::GET, &cpa_path, ACCEPT, None).await?;
    let sp = &d.platform_sp_in_customer;
    let existing = cpa["azureServicePrincipals"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["servicePrincipalId"] == json!(sp)))
        .and_then(|r| r["_id"].as_str())
        .map(str::to_string);
    let role = match existing {
        Some(r) => r,
        None => atlas
            .ok(
                reqwest::Method::POST,
                &cpa_path,
                ACCEPT,
                Some(json!({"providerName": "AZURE", "atlasAzureAppId": d.platform_app_id, "servicePrincipalId": sp,
                            "tenantId": d.customer_tenant.tenant_id})),
            )
            .await?["_id"]
            .as_str()
            .context("_id of the registered role")?
            .to_string(),
    };
    grant(http, d).await?;
    atlas
        .ok(
            reqwest::Method::PATCH,
            &format!("/api/atlas/v2/groups/{group}/encryptionAtRest"),
            ACCEPT,
            Some(json!({"azureKeyVault": {
                "enabled": true, "roleId": role, "subscriptionID": d.customer_tenant.subscription_id,
                "resourceGroupName": d.customer_resource_group, "keyVaultName": d.customer_vault,
                "keyIdentifier": d.customer_key_id, "azureEnvironment": "AZURE",
            }})),
        )
        .await
        .context("configuring the demo project's Encryption at Rest")?;
    Ok(())
}

/// As the customer's administrator: Reader and Key Vault Crypto User on the demo vault for the
/// platform's service principal, each created only if it is missing.
async fn grant(http: &reqwest::Client, d: &DemoLayout) -> anyhow::Result<()> {
    let customer = Customer { az: Azure::new(http.clone()), admin: d.customer_tenant.clone() };
    let token = customer.az.token(&customer.admin, ARM_SCOPE).await?;
    let sp = &d.platform_sp_in_customer;
    let list = customer
        .az
        .call(
            reqwest::Method::GET,
            &format!(
                "https://management.azure.com{}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&$filter=principalId%20eq%20'{sp}'",
                d.customer_vault_resource_id
            ),
            &token,
            None,
            "listing the role assignments on the demo vault",
        )
        .await?;
    for role in [scenario::roles::READER, scenario::roles::KEY_VAULT_CRYPTO_USER] {
        let has = list["value"].as_array().is_some_and(|a| {
            a.iter().any(|x| x["properties"]["roleDefinitionId"].as_str().is_some_and(|r| r.ends_with(role)))
        });
        if !has {
            customer.assign_role(sp, role, &d.customer_vault_resource_id).await?;
        }
    }
    Ok(())
}

/// `Cluster0` in the demo project, created with `encryptionAtRestProvider: AZURE` and three
/// electable nodes unless it exists.
pub async fn ensure_cluster(atlas: &Atlas, group: &str) -> anyhow::Result<()> {
    let path = format!("/api/atlas/v2/groups/{group}/clusters");
    let (status, v) = atlas.call(reqwest::Method::GET, &format!("{path}/{CLUSTER}"), ACCEPT_CLUSTERS, None).await?;
    if status.is_success() {
        return Ok(());
    }
    ensure!(status == reqwest::StatusCode::NOT_FOUND, "reading cluster {CLUSTER}: HTTP {status}: {v}");
    atlas
        .ok(
            reqwest::Method::POST,
            &path,
            ACCEPT_CLUSTERS,
            Some(json!({
                "name": CLUSTER,
                "clusterType": "REPLICASET",
                "encryptionAtRestProvider": "AZURE",
                "replicationSpecs": [{"regionConfigs": [{
                    "providerName": "AZURE", "regionName": "US_EAST_2", "priority": 7,
                    "electableSpecs": {"instanceSize": "M10", "nodeCount": NODES},
                }]}],
            })),
        )
        .await
        .with_context(|| format!("creating cluster {CLUSTER}"))?;
    Ok(())
}

/// The cluster's data credential, made once and kept in `DATA_DIR/cluster0.json` (0600) so that
/// up.json hands out the same one on every start.
pub async fn data_credential(atlas: &Atlas, group: &str, data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("cluster0.json");
    match std::fs::read(&path) {
        Ok(b) => {
            let v: Value =
                serde_json::from_slice(&b).with_context(|| format!("{} is not JSON: delete it", path.display()))?;
            return v["data_credential"]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("no data_credential in {}: delete it", path.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let v = atlas
        .ok(
            reqwest::Method::POST,
            &format!("/api/atrest/v1/groups/{group}/clusters/{CLUSTER}/dataCredentials"),
            ACCEPT,
            Some(json!({})),
        )
        .await?;
    let credential = v["credential"].as_str().context("credential in the data credential response")?.to_string();
    atrest_control::files::write_private(&path, &serde_json::to_vec_pretty(&json!({"data_credential": credential}))?)?;
    Ok(credential)
}

/// One running child node.
pub struct ChildNode {
    pub id: String,
    pub data_url: String,
    pub data_dir: PathBuf,
    pub port: u16,
    child: Child,
}

/// How the nodes reach the control plane and Azure.
pub struct NodeLaunch<'a> {
    pub exe: PathBuf,
    pub control_url: &'a str,
    pub azure_endpoint: SocketAddr,
    pub azure_ca: &'a Path,
    pub nodes_dir: PathBuf,
}

/// Starts node `i` (1-based) on `port`: joins with a fresh join token if its data dir never
/// joined, and returns once `DATA_DIR/nodes/node-i/node.json` names it.
pub async fn start_node(
    atlas: &Atlas,
    group: &str,
    launch: &NodeLaunch<'_>,
    i: usize,
    port: u16,
) -> anyhow::Result<ChildNode> {
    let dir = launch.nodes_dir.join(format!("node-{i}"));
    atrest_control::datadir::create_private_dir(&dir)?;
    let joined = atrest_node::identity::load(&dir)?.is_some();
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let data_url = format!("http://{listen}");
    let log_path = launch.nodes_dir.join(format!("node-{i}.log"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut cmd = Command::new(&launch.exe);
    cmd.args(["node", "--control-plane", launch.control_url, "--listen", &listen.to_string(), "--data-url", &data_url])
        .arg("--data-dir")
        .arg(&dir)
        .arg("--azure-endpoint")
        .arg(launch.azure_endpoint.to_string())
        .arg("--azure-ca")
        .arg(launch.azure_ca)
        .env_remove("ATREST_JOIN_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    if !joined {
        let v = atlas
            .ok(
                reqwest::Method::POST,
                &format!("/api/atrest/v1/groups/{group}/clusters/{CLUSTER}/joinTokens"),
                ACCEPT,
                Some(json!({})),
            )
            .await?;
        cmd.env("ATREST_JOIN_TOKEN", v["token"].as_str().context("token in the join token response")?);
    }
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which is
    // async-signal-safe and takes integer arguments.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {} node", launch.exe.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        if let Some((identity, _)) = atrest_node::identity::load(&dir)? {
            break identity.node_id;
        }
        if let Some(status) = child.try_wait()? {
            bail!("node {i} exited ({status}) before joining; its log: {}\n{}", log_path.display(), tail(&log_path));
        }
        if Instant::now() > deadline {
            bail!("node {i} did not join within 60 s; its log: {}\n{}", log_path.display(), tail(&log_path));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(ChildNode { id, data_url, data_dir: dir, port, child })
}

/// The last lines of a log, for an error that points at it.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits until every node reports `SERVING` and the cluster is `IDLE`, saying what it waits
/// for; a child that exits stops the wait with its log.
pub async fn wait_serving(atlas: &Atlas, group: &str, nodes: &mut [ChildNode], log_dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    loop {
        for (i, n) in nodes.iter_mut().enumerate() {
            if let Some(status) = n.child.try_wait()? {
                let log = log_dir.join(format!("node-{}.log", i + 1));
                bail!("node {} ({}) exited ({status}); its log: {}\n{}", i + 1, n.id, log.display(), tail(&log));
            }
        }
        let list = atlas
            .ok(reqwest::Method::GET, &format!("/api/atrest/v1/groups/{group}/clusters/{CLUSTER}/nodes"), ACCEPT, None)
            .await?;
        let cluster = atlas
            .ok(
                reqwest::Method::GET,
                &format!("/api/atlas/v2/groups/{group}/clusters/{CLUSTER}"),
                ACCEPT_CLUSTERS,
                None,
            )
            .await?;
        let states: Vec<String> = nodes
            .iter()
            .map(|n| {
                list["results"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["id"] == json!(n.id)))
                    .and_then(|x| x["state"].as_str())
                    .unwrap_or("UNREPORTED")
                    .to_string()
            })
            .collect();
        let state_name = cluster["stateName"].as_str().unwrap_or("?");
        let now = format!("cluster {CLUSTER} {state_name}, nodes {}", states.join(" "));
        if now != last {
            eprintln!("      {now}");
            last = now.clone();
        }
        if state_name == "IDLE" && states.iter().all(|s| s == "SERVING") {
            return Ok(());
        }
        if Instant::now() > deadline {
            let why: Vec<String> = list["results"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| {
                    x["lastError"]["message"].as_str().map(|m| format!("{}: {m}", x["id"].as_str().unwrap_or("?")))
                })
                .collect();
            bail!(
                "the nodes of {CLUSTER} did not all serve within 90 s ({now}); {}; logs in {}",
                if why.is_empty() { "no node reported an error".to_string() } else { why.join("; ") },
                log_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops the children: SIGTERM, then SIGKILL after five seconds.
pub async fn stop(nodes: Vec<ChildNode>) {
    for n in &nodes {
        if let Some(pid) = n.child.id() {
            // SAFETY: kill takes a pid and a signal number; the pid is our own child's.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for mut n in nodes {
        if tokio::time::timeout(Duration::from_secs(5), n.child.wait()).await.is_err() {
            let _ = n.child.kill().await;
        }
    }
}
