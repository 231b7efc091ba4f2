//! `atrest serve`, `atrest doctor` and `atrest admin`: thin command-line front ends over
//! `atrest_control`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use atrest_control::{Config, ControlPlane};
use atrest_store::{GroupId, GroupRole, OrgId, OrgRole, Roles};

/// `atrest serve --config FILE`.
pub async fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let control = ControlPlane::start(config).await?;
    println!("atrest control plane listening on {}", control.url());
    if let Some(b) = control.bootstrap() {
        println!(
            "First start: created organization {} with an Organization Owner API key and service account.",
            b.org_id
        );
        // Shown on a terminal only: under a service manager stdout becomes logs that are kept
        // and shipped, and the secrets must not end up there.
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            let j = b.to_json();
            println!(
                "  API key (HTTP Digest):   public {}  private {}",
                j["api_key"]["public_key"].as_str().unwrap_or(""),
                j["api_key"]["private_key"].as_str().unwrap_or("")
            );
            println!(
                "  service account (OAuth): client_id {}  client_secret {}",
                j["service_account"]["client_id"].as_str().unwrap_or(""),
                j["service_account"]["client_secret"].as_str().unwrap_or("")
            );
            println!("  These are shown once; they are also in {} (mode 0600).", b.file.display());
        } else {
            println!(
                "  API key public key {}, service account {}; the secrets are in {} (mode 0600).",
                b.api_public_key,
                b.client_id,
                b.file.display()
            );
        }
    }
    println!("Press Ctrl-C to stop.");
    crate::wait_for_shutdown().await;
    control.shutdown().await;
    Ok(())
}

/// Where `doctor` finds the control plane and its credentials.
#[derive(Args)]
pub struct DoctorArgs {
    /// Read the URL, the service account and the demo layout from this up.json (written by
    /// `atrest up`), or from DIR/up.json when given `atrest up`'s data directory.
    #[arg(long, default_value = ".atrest/up.json")]
    pub up: PathBuf,
    /// Control plane URL (overrides up.json).
    #[arg(long, env = "ATREST_URL")]
    pub url: Option<String>,
    /// Service account client id (overrides up.json).
    #[arg(long, env = "ATREST_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Service account secret (overrides up.json).
    #[arg(long, env = "ATREST_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// The project (24 hex characters).
    #[arg(long)]
    pub group: String,
    /// An azureKeyVault JSON body to check (file path); attributes given as flags override it.
    /// With neither, the project's stored configuration is checked.
    #[arg(long)]
    pub body: Option<PathBuf>,
    #[arg(long)]
    pub role_id: Option<String>,
    #[arg(long)]
    pub subscription_id: Option<String>,
    #[arg(long)]
    pub resource_group: Option<String>,
    #[arg(long)]
    pub key_vault_name: Option<String>,
    #[arg(long)]
    pub key_identifier: Option<String>,
    #[arg(long)]
    pub azure_environment: Option<String>,
}

fn up_json(path: &Path) -> Option<Value> {
    let path = if path.is_dir() { path.join("up.json") } else { path.to_path_buf() };
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// The attributes of a candidate configuration, with the flag that sets each and where up.json's
/// demo layout has it.
const CANDIDATE: [(&str, &str, Option<&str>); 6] = [
    ("roleId", "--role-id", None),
    ("subscriptionID", "--subscription-id", Some("/demo/subscription_id")),
    ("resourceGroupName", "--resource-group", Some("/demo/resource_group")),
    ("keyVaultName", "--key-vault-name", Some("/demo/key_vault_name")),
    ("keyIdentifier", "--key-identifier", Some("/demo/key_identifier")),
    ("azureEnvironment", "--azure-environment", None),
];

/// Completes a candidate from up.json's demo layout (and AZURE as the environment), and
/// returns every attribute still missing (flag names included), so that a refusal can name them
/// all at once. They are not refused here: the dry run merges the candidate into the stored
/// configuration, which may hold them.
fn complete_candidate(body: &mut serde_json::Map<String, Value>, up: Option<&Value>) -> Vec<String> {
    for (name, _, pointer) in CANDIDATE {
        if body.contains_key(name) {
            continue;
        }
        let from_up = pointer.and_then(|p| up.and_then(|u| u.pointer(p))).and_then(|v| v.as_str());
        match (name, from_up) {
            (_, Some(v)) => {
                body.insert(name.into(), json!(v));
            }
            ("azureEnvironment", None) => {
                body.insert(name.into(), json!("AZURE"));
            }
            _ => {}
        }
    }
    CANDIDATE
        .iter()
        .filter(|(name, _, _)| !body.contains_key(*name))
        .map(|(name, flag, _)| format!("{name} ({flag})"))
        .collect()
}

/// The hint under a failed shape check: every attribute the candidate lacked.
fn missing_hint(report: &Value, missing: &[String]) -> Option<String> {
    let shape_failed =
        report["checks"].as_array().into_iter().flatten().any(|c| c["name"] == "shape" && c["status"] == "FAILED");
    (shape_failed && !missing.is_empty()).then(|| {
        format!(
            "not given by flags, --body or up.json: {}. Pass them as flags, in --body, or point --up at the up.json \
             whose demo layout has them (the role id is Step 1's ROLE in up's guide)\n",
            missing.join(", ")
        )
    })
}

/// `atrest doctor`: the dry run as a checklist. Exit status 1 when a check fails.
pub async fn doctor(a: DoctorArgs) -> anyhow::Result<bool> {
    let up = up_json(&a.up);
    let pick = |flag: &Option<String>, pointer: &str| -> Option<String> {
        flag.clone()
            .or_else(|| up.as_ref().and_then(|u| u.pointer(pointer)).and_then(|v| v.as_str()).map(str::to_owned))
    };
    let url = pick(&a.url, "/control_plane_url").context("no control plane URL: pass --url or --up <up.json>")?;
    let client_id = pick(&a.client_id, "/service_account/client_id")
        .context("no service account: pass --client-id/--client-secret or --up")?;
    let secret = pick(&a.client_secret, "/service_account/client_secret").context("no service account secret")?;
    let mut body: serde_json::Map<String, Value> = match &a.body {
        Some(p) => serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("{} is not a JSON object", p.display()))?,
        None => serde_json::Map::new(),
    };
    // A PATCH-shaped file ({"azureKeyVault": {...}}) holds the block one level down.
    if let Some(Value::Object(inner)) = body.get("azureKeyVault").cloned()
        && body.len() == 1
    {
        body = inner;
    }
    for (name, v) in [
        ("roleId", &a.role_id),
        ("subscriptionID", &a.subscription_id),
        ("resourceGroupName", &a.resource_group),
        ("keyVaultName", &a.key_vault_name),
        ("keyIdentifier", &a.key_identifier),
        ("azureEnvironment", &a.azure_environment),
    ] {
        if let Some(v) = v {
            body.insert(name.into(), json!(v));
        }
    }
    // No flags and no --body: the stored configuration is checked as it is.
    let missing = if body.is_empty() {
        vec!["enabled: true and the whole configuration (no stored configuration to check)".to_owned()]
    } else {
        complete_candidate(&mut body, up.as_ref())
    };
    if !body.is_empty() && !body.contains_key("enabled") {
        body.insert("enabled".into(), json!(true));
    }
    let http = reqwest::Client::builder().build()?;
    let token: Value = http
        .post(format!("{url}/api/oauth/token"))
        .basic_auth(&client_id, Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .with_context(|| format!("reaching the control plane at {url}"))?
        .error_for_status()
        .context("the service account was refused; check --client-id/--client-secret")?
        .json()
        .await?;
    let access = token["access_token"].as_str().context("no access_token in the token response")?;
    let r = http
        .post(format!("{url}/api/atrest/v1/groups/{}/encryptionAtRest/azureKeyVault:validate", a.group))
        .bearer_auth(access)
        .header("Accept", "application/vnd.atlas.2023-01-01+json")
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let report: Value = r.json().await?;
    if !status.is_success() {
        bail!(
            "the dry run was refused: HTTP {status} {} {}",
            report["errorCode"].as_str().unwrap_or(""),
            report["detail"].as_str().unwrap_or("")
        );
    }
    print!("{}", render_checklist(&report));
    if let Some(hint) = missing_hint(&report, &missing) {
        print!("{hint}");
    }
    Ok(report["outcome"] == "VALID")
}

/// The dry-run report as a checklist, one line per check with its fix underneath.
pub fn render_checklist(report: &Value) -> String {
    let mut out = String::new();
    for c in report["checks"].as_array().into_iter().flatten() {
        let mark = match c["status"].as_str().unwrap_or("") {
            "PASSED" => "[ok]  ",
            "FAILED" => "[FAIL]",
            "WARNING" => "[warn]",
            _ => "[skip]",
        };
        let code = c["azureErrorCode"].as_str().map(|c| format!(" ({c})")).unwrap_or_default();
        out.push_str(&format!(
            "{mark} {:<12} {}{code}\n",
            c["name"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        ));
        if let Some(fix) = c["fix"].as_str() {
            out.push_str(&format!("         fix: {fix}\n"));
        }
    }
    let outcome = report["outcome"].as_str().unwrap_or("?");
    out.push_str(&format!("\nresult: {outcome}"));
    if let Some(v) = report["keyVersionInUse"].as_str() {
        out.push_str(&format!(" (key version {v})"));
    }
    out.push('\n');
    out
}

/// `atrest admin`: local administration straight on the store (needs the control plane's
/// config, data directory and KEK).
#[derive(Subcommand)]
pub enum Admin {
    /// Create an organization; prints its id (give it keys with create-api-key --org ID
    /// --role ORG_OWNER). The Atlas API has no POST /orgs in the reference atrest follows, so
    /// organizations are created here only.
    #[command(name = "create-org")]
    Org {
        #[arg(long)]
        name: String,
    },
    /// Create a project in an organization.
    #[command(name = "create-project")]
    Project {
        #[arg(long)]
        org: String,
        #[arg(long)]
        name: String,
    },
    /// Create a programmatic API key (HTTP Digest). Roles: ORG_OWNER, ORG_MEMBER (belongs to
    /// the organization, no project access), ORG_READ_ONLY, GROUP_OWNER:<groupId>,
    /// GROUP_READ_ONLY:<groupId>.
    #[command(name = "create-api-key")]
    ApiKey {
        #[arg(long)]
        org: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Create a service account (OAuth client credentials). Roles as for create-api-key.
    #[command(name = "create-service-account")]
    ServiceAccount {
        #[arg(long)]
        org: String,
        #[arg(long)]
        name: String,
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Create a single-use join token for a cluster's next data node (atrest node --join-token).
    #[command(name = "create-join-token")]
    JoinToken {
        /// The project (group) id.
        #[arg(long)]
        group: String,
        /// The cluster's name.
        #[arg(long)]
        cluster: String,
        /// How long the token may be used, 60 to 86400 seconds.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(60..=86400))]
        ttl_secs: u64,
    },
    /// Create a data credential for a cluster's data API (Authorization: Bearer <credential>).
    #[command(name = "create-data-credential")]
    DataCredential {
        /// The project (group) id.
        #[arg(long)]
        group: String,
        /// The cluster's name.
        #[arg(long)]
        cluster: String,
    },
}

/// The cluster `name` of project `group`, with errors that say what to fix.
async fn admin_cluster(
    state: &atrest_control::state::AppState,
    group: &str,
    name: &str,
) -> anyhow::Result<atrest_store::Cluster> {
    let group = GroupId::parse(group).map_err(|e| anyhow::anyhow!("--group '{group}': {e}"))?;
    state.store.get_cluster(&group, name).await.map_err(|e| match e {
        atrest_store::StoreError::NotFound { .. } => anyhow::anyhow!(
            "project {group} has no cluster named '{name}': list them with GET /api/atlas/v2/groups/{group}/clusters"
        ),
        other => anyhow::anyhow!("{other}"),
    })
}

fn parse_roles(specs: &[String]) -> anyhow::Result<Roles> {
    let mut roles = Roles::default();
    for s in specs {
        match s.split_once(':') {
            Some((role, group)) => {
                let role =
                    GroupRole::parse(role).map_err(|e| anyhow::anyhow!("{e}: use GROUP_OWNER or GROUP_READ_ONLY"))?;
                let group = GroupId::parse(group).map_err(|e| anyhow::anyhow!("group id '{group}': {e}"))?;
                roles.groups.entry(group).or_default().insert(role);
            }
            None => {
                roles.org.insert(
                    OrgRole::parse(s)
                        .map_err(|e| anyhow::anyhow!("{e}: use ORG_OWNER, ORG_MEMBER or ORG_READ_ONLY"))?,
                );
            }
        }
    }
    Ok(roles)
}

/// Where `atrest admin` finds the control plane's configuration.
#[derive(Args)]
pub struct AdminTarget {
    /// The control plane's TOML config file (as `atrest serve --config`).
    #[arg(long, env = "ATREST_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// `atrest up`'s data directory: use the configuration up runs its control plane with
    /// (DIR/control/config.toml).
    #[arg(long, global = true, conflicts_with = "config")]
    pub up: Option<PathBuf>,
    /// The control plane's data directory (its config.toml when present, else the defaults
    /// with this data directory).
    #[arg(long, global = true, conflicts_with_all = ["config", "up"])]
    pub data_dir: Option<PathBuf>,
}

/// The configuration `admin` works on. Never a default data directory: an admin command
/// against a store nobody serves would silently create one.
pub fn admin_config(t: &AdminTarget) -> anyhow::Result<Config> {
    if let Some(c) = &t.config {
        return Config::load(Some(c));
    }
    if let Some(dir) = &t.up {
        let file = dir.join("control").join("config.toml");
        if !file.is_file() {
            bail!(
                "{} does not exist: is {} the data directory of `atrest up`? Run `atrest up --data-dir {}` once, \
                 or pass --config FILE",
                file.display(),
                dir.display(),
                dir.display()
            );
        }
        return Config::load(Some(&file));
    }
    if let Some(dir) = &t.data_dir {
        let file = dir.join("config.toml");
        if file.is_file() {
            return Config::load(Some(&file));
        }
        if !dir.join("control.db").is_file() {
            bail!(
                "{} holds no control plane store (control.db): pass the data directory of a control plane, \
                 or --config FILE when it runs on PostgreSQL",
                dir.display()
            );
        }
        let mut config = Config::load(None)?;
        config.data_dir = dir.clone();
        return Ok(config);
    }
    bail!(
        "say which control plane to administer: `atrest admin --up DATA_DIR ...` beside `atrest up` (e.g. --up .atrest), \
         `atrest admin --config FILE ...` with the config `atrest serve` runs with, or `--data-dir DIR`"
    )
}

pub async fn admin(target: AdminTarget, cmd: Admin) -> anyhow::Result<()> {
    let config = admin_config(&target)?;
    let state = atrest_control::server::open_state(config).await?;
    match cmd {
        Admin::Org { name } => {
            let name = name.trim().to_owned();
            if name.is_empty() || name.chars().count() > 64 {
                bail!("--name: an organization name is 1 to 64 characters");
            }
            let org = atrest_store::Organization {
                id: OrgId::new_random(),
                name,
                created_at: time::OffsetDateTime::now_utc(),
            };
            state.store.create_organization(&org).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", json!({"id": org.id.as_str(), "name": org.name}));
        }
        Admin::Project { org, name } => {
            let org = OrgId::parse(&org).map_err(|e| anyhow::anyhow!("--org: {e}"))?;
            let g = atrest_store::Group {
                id: GroupId::new_random(),
                org_id: org,
                name,
                created_at: time::OffsetDateTime::now_utc(),
            };
            state.store.create_group(&g).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", json!({"id": g.id.as_str(), "name": g.name, "orgId": g.org_id.as_str()}));
        }
        Admin::ApiKey { org, description, roles } => {
            let org = OrgId::parse(&org).map_err(|e| anyhow::anyhow!("--org: {e}"))?;
            let (key, private) =
                atrest_control::auth::provision::create_api_key(&state, &org, &description, parse_roles(&roles)?)
                    .await?;
            println!(
                "{}",
                json!({"publicKey": key.public_key, "privateKey": private.expose_secret(), "orgId": org.as_str()})
            );
            eprintln!("The private key is shown once; store it now.");
        }
        Admin::ServiceAccount { org, name, roles } => {
            let org = OrgId::parse(&org).map_err(|e| anyhow::anyhow!("--org: {e}"))?;
            let (sa, secret) =
                atrest_control::auth::provision::create_service_account(&state, &org, &name, parse_roles(&roles)?)
                    .await?;
            println!(
                "{}",
                json!({"clientId": sa.client_id.as_str(), "clientSecret": secret.expose_secret(), "orgId": org.as_str()})
            );
            eprintln!("The secret is shown once; store it now.");
        }
        Admin::JoinToken { group, cluster, ttl_secs } => {
            let c = admin_cluster(&state, &group, &cluster).await?;
            let (token, expires_at) =
                atrest_control::api::nodes::issue_join_token(&state, &c, ttl_secs, "atrest admin")
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
            println!(
                "{}",
                json!({"token": token, "expiresAt": atrest_control::api::atlas_time(expires_at), "groupId": c.group_id.as_str(), "clusterName": c.name})
            );
            eprintln!(
                "Single use; shown once. Start the node with: atrest node --control-plane <url> --join-token <token> --data-dir <dir>"
            );
        }
        Admin::DataCredential { group, cluster } => {
            let c = admin_cluster(&state, &group, &cluster).await?;
            let (id, credential, created) = atrest_control::api::nodes::issue_data_credential(&state, &c)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
            println!(
                "{}",
                json!({"id": id.as_str(), "credential": credential, "createdAt": atrest_control::api::atlas_time(created)})
            );
            eprintln!("The credential is shown once; store it now.");
        }
    }
    state.store.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checklist_marks_each_check_and_puts_the_fix_under_it() {
        let report = json!({
            "outcome": "INVALID",
            "checks": [
                {"name": "token", "status": "PASSED", "message": "obtained tokens"},
                {"name": "vault", "status": "WARNING", "message": "purge protection off",
                 "fix": "az keyvault update --name v --resource-group rg --enable-purge-protection true"},
                {"name": "key", "status": "FAILED", "message": "reading key failed", "azureErrorCode": "ForbiddenByRbac",
                 "fix": "az role assignment create --role \"Key Vault Crypto User\""},
                {"name": "wrap_unwrap", "status": "SKIPPED", "message": "not run"},
            ],
        });
        let text = render_checklist(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("[ok]   token"), "{text}");
        assert!(lines[1].starts_with("[warn] vault") && lines[2].contains("fix: az keyvault update"), "{text}");
        assert!(lines[3].starts_with("[FAIL] key") && lines[3].ends_with("(ForbiddenByRbac)"), "{text}");
        assert!(lines[4].contains("fix: az role assignment create"), "{text}");
        assert!(lines[5].starts_with("[skip] wrap_unwrap"), "{text}");
        assert_eq!(lines.last(), Some(&"result: INVALID"));

        let valid = json!({"outcome": "VALID", "checks": [], "keyVersionInUse": "https://v.vault.azure.net/keys/k/1"});
        assert!(render_checklist(&valid).ends_with("result: VALID (key version https://v.vault.azure.net/keys/k/1)\n"));
    }

    #[test]
    fn a_candidate_takes_the_rest_from_up_json_and_names_every_missing_attribute_at_once() {
        let up = json!({"demo": {"subscription_id": "s", "resource_group": "rg", "key_vault_name": "kv",
                                 "key_identifier": "https://kv.vault.azure.net/keys/k"}});
        let mut body = serde_json::Map::new();
        body.insert("roleId".into(), json!("r"));
        assert!(complete_candidate(&mut body, Some(&up)).is_empty());
        assert_eq!(
            Value::Object(body),
            json!({"roleId": "r", "subscriptionID": "s", "resourceGroupName": "rg", "keyVaultName": "kv",
                   "keyIdentifier": "https://kv.vault.azure.net/keys/k", "azureEnvironment": "AZURE"})
        );

        let mut body = serde_json::Map::new();
        body.insert("keyVaultName".into(), json!("kv"));
        let missing = complete_candidate(&mut body, None);
        let failed_shape = json!({"checks": [{"name": "shape", "status": "FAILED"}]});
        let hint = missing_hint(&failed_shape, &missing).unwrap();
        for m in [
            "roleId (--role-id)",
            "subscriptionID (--subscription-id)",
            "resourceGroupName (--resource-group)",
            "keyIdentifier (--key-identifier)",
        ] {
            assert!(hint.contains(m), "{m} in {hint}");
        }
        assert!(!hint.contains("keyVaultName") && !hint.contains("azureEnvironment"), "{hint}");
        let passed_shape = json!({"checks": [{"name": "shape", "status": "PASSED"}]});
        assert_eq!(missing_hint(&passed_shape, &missing), None, "no hint when the stored configuration had them");
    }

    #[test]
    fn admin_without_a_target_refuses_with_the_command_to_use() {
        let none = AdminTarget { config: None, up: None, data_dir: None };
        let e = admin_config(&none).unwrap_err().to_string();
        assert!(e.contains("atrest admin --up DATA_DIR") && e.contains("--config FILE"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let up = AdminTarget { config: None, up: Some(dir.path().into()), data_dir: None };
        let e = admin_config(&up).unwrap_err().to_string();
        assert!(e.contains("control/config.toml does not exist") && e.contains("atrest up --data-dir"), "{e}");
        let empty = AdminTarget { config: None, up: None, data_dir: Some(dir.path().into()) };
        let e = admin_config(&empty).unwrap_err().to_string();
        assert!(e.contains("holds no control plane store"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is created");
    }

    #[test]
    fn roles_parse_with_the_fix_in_the_error() {
        let g = "5f1a2b3c4d5e6f708192a3b4";
        let roles = parse_roles(&["ORG_READ_ONLY".into(), format!("GROUP_OWNER:{g}")]).unwrap();
        assert!(roles.org.contains(&OrgRole::OrgReadOnly));
        assert!(roles.groups[&GroupId::parse(g).unwrap()].contains(&GroupRole::GroupOwner));
        let e = parse_roles(&["OWNER".into()]).unwrap_err().to_string();
        assert!(e.contains("use ORG_OWNER"), "{e}");
        // Every organization role the error names is one --help lists.
        let mut admin = <Admin as clap::Subcommand>::augment_subcommands(clap::Command::new("admin"));
        let help = admin.find_subcommand_mut("create-api-key").unwrap().render_long_help().to_string();
        for role in OrgRole::ALL {
            assert!(e.contains(role.as_str()), "{role} missing from the error: {e}");
            assert!(help.contains(role.as_str()), "the error names {role}, --help does not: {help}");
        }
        let e = parse_roles(&["GROUP_OWNER:xyz".into()]).unwrap_err().to_string();
        assert!(e.contains("group id 'xyz'"), "{e}");
    }
}
