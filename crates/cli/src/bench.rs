//! Benchmarks: each prints its figure next to a baseline measured in the same run, because
//! these machines are noisy and only ratios compare across runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Subcommand;
use serde_json::json;

use atrest_emulator::scenario::Azure;

use crate::demo::emulator_client;

#[derive(Subcommand)]
pub enum Which {
    /// Emulator `unwrapkey` throughput (RSA-2048, RSA-OAEP-256) over TLS with authorization,
    /// next to raw aws-lc-rs RSA-2048 OAEP decryption on the same cores.
    EmulatorUnwrap {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent requests in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Token cache single flight: CALLERS concurrent callers across TENANTS customer tenants
    /// must cause exactly TENANTS token requests.
    TokenCache {
        #[arg(long, default_value_t = 1000)]
        callers: usize,
        #[arg(long, default_value_t = 50)]
        tenants: usize,
    },
    /// GET encryptionAtRest throughput next to the cheapest authenticated call on the same
    /// control plane (target: ratio >= 0.5).
    ControlRead {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Sequential Azure round trips of a PATCH validation after the token, with LATENCY_MS
    /// injected on every Azure request at the emulator (target: <= 3).
    PatchRoundTrips {
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// Entra token requests made by concurrent PATCHes and revalidations across PROJECTS
    /// projects in TENANTS tenants (target: exactly TENANTS).
    ControlTokens {
        #[arg(long, default_value_t = 50)]
        projects: usize,
        #[arg(long, default_value_t = 10)]
        tenants: usize,
    },
    /// Data nodes' Key Vault calls from the emulator's request counts: 1 token (fetched by the
    /// control plane) + 1 decrypt per node start, 0 per data operation over OPS operations, 1
    /// decrypt per node per check (CHECKS triggered checks).
    KeyVaultCalls {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 100_000)]
        ops: u64,
        #[arg(long, default_value_t = 5)]
        checks: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Revocation to refusal: ROUNDS removals of Key Vault Crypto User through ARM; p50 and max
    /// time from the DELETE's response until the data API answers 503 (target: <= interval +
    /// grace + 1 s).
    Revocation {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        #[arg(long, default_value_t = 1)]
        interval_secs: u64,
        #[arg(long, default_value_t = 0)]
        grace_secs: u64,
    },
    /// NODES nodes in TENANTS tenants against one control plane, then two replicas on
    /// PostgreSQL: Entra token requests (target: one per tenant), check-ins per second, and the
    /// time for a PATCH to reach every node.
    Fleet {
        #[arg(long, default_value_t = 300)]
        nodes: usize,
        #[arg(long, default_value_t = 30)]
        tenants: usize,
        /// Seconds per check-in measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 5)]
        patches: usize,
        #[arg(long, default_value_t = 1)]
        interval_secs: u64,
        /// Only the two-replica run.
        #[arg(long)]
        replicas_only: bool,
    },
}

pub async fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::EmulatorUnwrap { seconds, concurrency } => emulator_unwrap(seconds, concurrency).await,
        Which::TokenCache { callers, tenants } => token_cache(callers, tenants).await,
        Which::ControlRead { seconds, concurrency } => crate::bench_control::control_read(seconds, concurrency).await,
        Which::PatchRoundTrips { latency_ms, runs } => crate::bench_control::patch_round_trips(latency_ms, runs).await,
        Which::ControlTokens { projects, tenants } => crate::bench_control::control_tokens(projects, tenants).await,
        Which::KeyVaultCalls { nodes, ops, checks, concurrency } => {
            crate::bench_node::key_vault_calls(nodes, ops, checks, concurrency).await
        }
        Which::Revocation { rounds, nodes, interval_secs, grace_secs } => {
            crate::bench_node::revocation(rounds, nodes, interval_secs, grace_secs).await
        }
        Which::Fleet { nodes, tenants, seconds, patches, interval_secs, replicas_only } => {
            crate::bench_node::fleet(nodes, tenants, seconds, patches, interval_secs, replicas_only).await
        }
    }
}

/// Raw RSA-2048 OAEP-SHA256 decryptions per second, on as many threads as there are cores.
fn raw_rsa_decrypt_rate(seconds: u64) -> anyhow::Result<f64> {
    use aws_lc_rs::rsa::{
        KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    };
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("keygen"))?;
    let public = OaepPublicEncryptingKey::new(key.public_key()).map_err(|_| anyhow::anyhow!("public key"))?;
    let mut ct = vec![0u8; public.ciphertext_size()];
    let ct_len = public
        .encrypt(&OAEP_SHA256_MGF1SHA256, &[7u8; 32], &mut ct, None)
        .map_err(|_| anyhow::anyhow!("encrypt"))?
        .len();
    ct.truncate(ct_len);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let ops = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let key = OaepPrivateDecryptingKey::new(key.clone()).expect("OAEP key");
            let ops = ops.clone();
            let ct = ct.clone();
            s.spawn(move || {
                let mut out = vec![0u8; key.min_output_size()];
                while Instant::now() < deadline {
                    key.decrypt(&OAEP_SHA256_MGF1SHA256, &ct, &mut out, None).expect("decrypt");
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    Ok(ops.load(Ordering::Relaxed) as f64 / seconds as f64)
}

async fn emulator_unwrap(seconds: u64, concurrency: usize) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let emu =
        atrest_emulator::Emulator::start(atrest_emulator::EmulatorConfig::new("127.0.0.1:0".parse()?, &dir)).await?;
    let http = emulator_client(emu.addr(), &emu.ca_pem())?;
    let az = Azure::new(http.clone());
    let b = emu.info().bootstrap.clone();
    let arm = az.token(&b, "https://management.azure.com/.default").await?;
    let sub = &b.subscription_id;
    az.call(
        reqwest::Method::PUT,
        &format!("https://management.azure.com/subscriptions/{sub}/resourcegroups/bench?api-version=2022-09-01"),
        &arm,
        Some(json!({"location": "eastus"})),
        "resource group",
    )
    .await?;
    az.call(
        reqwest::Method::PUT,
        &format!("https://management.azure.com/subscriptions/{sub}/resourceGroups/bench/providers/Microsoft.KeyVault/vaults/benchvault?api-version=2023-07-01"),
        &arm,
        Some(json!({"location": "eastus", "properties": {"tenantId": b.tenant_id, "sku": {"family": "A", "name": "standard"}, "enableRbacAuthorization": true}})),
        "vault",
    )
    .await?;
    let token = az.token(&b, "https://vault.azure.net/.default").await?;
    let key = az
        .call(
            reqwest::Method::POST,
            "https://benchvault.vault.azure.net/keys/bench/create?api-version=7.5",
            &token,
            Some(json!({"kty": "RSA", "key_size": 2048})),
            "key",
        )
        .await?;
    let kid = key["key"]["kid"].as_str().context("kid")?.to_string();
    let wrapped = az
        .call(
            reqwest::Method::POST,
            &format!("{kid}/wrapkey?api-version=7.5"),
            &token,
            Some(json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode([9u8; 32])})),
            "wrap",
        )
        .await?;
    let body = Arc::new(serde_json::to_vec(&json!({"alg": "RSA-OAEP-256", "value": wrapped["value"]}))?);
    let url = Arc::new(format!("{kid}/unwrapkey?api-version=7.5"));

    eprintln!("measuring raw aws-lc-rs RSA-2048 OAEP decryption for {seconds} s ...");
    let raw = tokio::task::spawn_blocking(move || raw_rsa_decrypt_rate(seconds)).await??;

    eprintln!("measuring emulator unwrapkey over TLS for {seconds} s with {concurrency} in flight ...");
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, body, token, ops, errors) =
            (http.clone(), url.clone(), body.clone(), token.clone(), ops.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = http
                    .post(url.as_str())
                    .bearer_auth(&token)
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
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = ops.load(Ordering::Relaxed) as f64 / elapsed;
    let errs = errors.load(Ordering::Relaxed);
    emu.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("emulator unwrapkey (RSA-2048, RSA-OAEP-256, TLS, RBAC-authorised): {rate:.0}/s ({errs} errors)");
    println!("raw aws-lc-rs RSA-2048 OAEP decrypt, all cores, same run:         {raw:.0}/s");
    println!("ratio emulator/raw: {:.2}", rate / raw);
    println!(
        "target: >= 2000/s (5x Azure's 4,000 per 10 s per vault): {}",
        if rate >= 2000.0 { "MET" } else { "NOT MET" }
    );
    if errs > 0 {
        anyhow::bail!("{errs} requests failed during the benchmark");
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("atrest-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn token_cache(callers: usize, tenants: usize) -> anyhow::Result<()> {
    use atrest_azure::{AzureClient, CertificateCredential, ClientConfig, ClientCredential, EndpointOverride};
    let dir = tempfile_dir()?;
    let emu =
        atrest_emulator::Emulator::start(atrest_emulator::EmulatorConfig::new("127.0.0.1:0".parse()?, &dir)).await?;
    let http = emulator_client(emu.addr(), &emu.ca_pem())?;
    let az = Azure::new(http);
    let admin = az.token(&emu.info().bootstrap, "https://management.azure.com/.default").await?;
    let post = |path: &'static str, body: serde_json::Value| {
        let (az, admin) = (&az, &admin);
        async move {
            let url = format!("https://management.azure.com/_emulator/{path}");
            az.call(reqwest::Method::POST, &url, admin, Some(body), "admin API").await
        }
    };
    let platform = post("tenants", json!({"display_name": "Platform"})).await?;
    let (cert_pem, key_pem) = atrest_emulator::scenario::platform_certificate()?;
    let app = post(
        "applications",
        json!({"home_tenant_id": platform["tenant_id"], "display_name": "platform", "multi_tenant": true, "certificate_pem": cert_pem}),
    )
    .await?;
    let app_id: atrest_domain::AzureUuid = app["app_id"].as_str().context("app_id")?.parse()?;
    eprintln!("creating {tenants} customer tenants with the platform's service principal ...");
    let mut ids = Vec::new();
    for i in 0..tenants {
        let t = post("tenants", json!({"display_name": format!("Customer {i}")})).await?;
        post("service-principals", json!({"tenant_id": t["tenant_id"], "app_id": app_id.to_string()})).await?;
        ids.push(t["tenant_id"].as_str().context("tenant_id")?.parse::<atrest_domain::AzureUuid>()?);
    }
    let mut config = ClientConfig::default();
    config.transport.endpoint_override = Some(EndpointOverride { addr: emu.addr(), extra_ca_pem: emu.ca_pem() });
    let cert = CertificateCredential::from_pem(&cert_pem, &key_pem.into())?;
    let client = AzureClient::new(&config, ClientCredential::certificate(app_id, cert))?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..callers {
        let (client, tenant) = (client.clone(), ids[i % ids.len()]);
        tasks.push(tokio::spawn(async move {
            client.tokens().key_vault_token(atrest_domain::AzureEnvironment::Azure, &tenant).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let stats = client.token_stats();
    emu.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{callers} concurrent callers across {tenants} tenants: {} token requests (expected {tenants}), {} cache hits, {} misses, {:.0} ms",
        stats.token_requests,
        stats.cache_hits,
        stats.cache_misses,
        elapsed.as_secs_f64() * 1000.0
    );
    println!(
        "target: exactly one token request per (tenant, scope): {}",
        if stats.token_requests == tenants as u64 { "MET" } else { "NOT MET" }
    );
    anyhow::ensure!(stats.token_requests == tenants as u64, "token requests {} != {tenants}", stats.token_requests);
    Ok(())
}
