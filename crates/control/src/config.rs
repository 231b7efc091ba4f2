//! Control-plane configuration: a TOML file, overridden by `ATREST_*` environment variables,
//! with defaults that run one replica on the embedded SQLite store.
//!
//! Environment variables map onto the file's keys with `__` between levels, e.g.
//! `ATREST_STORE_URL=postgres://...`, `ATREST_PLATFORM__APP_ID=...`,
//! `ATREST_VALIDATION__REVALIDATE_INTERVAL_SECS=30`. Secrets are never in this file: the
//! platform credential is a path (certificate + key, or a federated token file) and the KEK
//! comes from `ATREST_KEK` or a key file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything `atrest serve` needs. See `docs/control-plane.md` for a commented example.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the Atlas Admin API listener (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Directory for the embedded store, the KEK file and bootstrap.json.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://...`; default `sqlite://<data_dir>/control.db`.
    pub store_url: Option<String>,
    /// Serve HTTPS with this certificate chain and key (PEM). Plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// The platform's multi-tenant Entra ID application.
    pub platform: PlatformConfig,
    /// How the control plane reaches Azure.
    pub azure: AzureConfig,
    /// Validation and revalidation.
    pub validation: ValidationConfig,
    /// Atlas authentication.
    pub auth: AuthConfig,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// On first start, create an organization, an owner API key and a service account, and
    /// write them to `<data_dir>/bootstrap.json` (mode 0600).
    pub bootstrap: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformConfig {
    /// The platform app's client (application) id: what customers pass to `az ad sp create --id`.
    pub app_id: Option<String>,
    /// The app's certificate (PEM) and its private key (PEM), for certificate assertions.
    pub certificate_path: Option<PathBuf>,
    pub private_key_path: Option<PathBuf>,
    /// A federated token file (workload identity), re-read on every token request.
    pub federated_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzureConfig {
    /// Send every Azure host name to this address (the local emulator). Production leaves it unset.
    pub endpoint_override: Option<SocketAddr>,
    /// An extra CA certificate (PEM) to trust, e.g. the emulator's ca.pem.
    pub extra_ca_path: Option<PathBuf>,
    /// Per-request timeout to Azure, seconds.
    pub request_timeout_secs: u64,
    /// Total time one Azure call may spend on retries of 429, 5xx and connection failures
    /// (attempts and backoff sleeps together), seconds. Denials are never retried.
    pub retry_budget_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Background revalidation interval per project (Atlas: 15 minutes). Seconds, ≥ 1.
    pub revalidate_interval_secs: u64,
    /// A GET revalidates at most once per this many seconds per project (0 disables).
    pub on_read_min_interval_secs: u64,
    /// Require the key to carry the tag `key_binding_tag` = the project id (confused-deputy guard).
    pub require_key_binding: bool,
    /// The tag name for the binding check.
    pub key_binding_tag: String,
    /// How often the background worker looks for due revalidations, milliseconds.
    pub poll_interval_ms: u64,
    /// How often each data node checks its access to the key (one Key Vault `decrypt`), seconds
    /// (Atlas: 15 minutes). ≥ 1.
    pub node_check_interval_secs: u64,
    /// How long a data node keeps serving after Key Vault first denies it, seconds.
    pub node_denial_grace_secs: u64,
    /// `AZURE_ENCRYPTION_KEY_NEEDS_ROTATION` is raised when the oldest key version a cluster's
    /// nodes use was created (Key Vault `attributes.created`) more than this many days ago
    /// (Atlas: 90).
    pub key_rotation_alert_days: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of a Digest nonce, seconds; an older nonce is answered with `stale=true`.
    pub nonce_lifetime_secs: u64,
    /// Lifetime of a service-account access token, seconds (Atlas: 3600).
    pub access_token_lifetime_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7443".parse().expect("literal address"),
            data_dir: PathBuf::from(".atrest/control"),
            store_url: None,
            tls: None,
            platform: PlatformConfig::default(),
            azure: AzureConfig::default(),
            validation: ValidationConfig::default(),
            auth: AuthConfig::default(),
            max_body_bytes: 64 * 1024,
            bootstrap: true,
        }
    }
}

impl Default for AzureConfig {
    fn default() -> Self {
        AzureConfig { endpoint_override: None, extra_ca_path: None, request_timeout_secs: 30, retry_budget_secs: 30 }
    }
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            revalidate_interval_secs: 15 * 60,
            on_read_min_interval_secs: 60,
            require_key_binding: false,
            key_binding_tag: "atrest-project".into(),
            poll_interval_ms: 1000,
            node_check_interval_secs: 60,
            node_denial_grace_secs: 0,
            key_rotation_alert_days: 90,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { nonce_lifetime_secs: 300, access_token_lifetime_secs: 3600 }
    }
}

impl Config {
    /// Defaults, then `file` (if given; it must exist), then `ATREST_*` variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(
            Env::prefixed("ATREST_")
                .split("__")
                // Variables that belong to other commands or are read elsewhere.
                .ignore(&["KEK", "LOG", "DATA_DIR", "EMULATOR_LISTEN", "EMULATOR_DATA_DIR", "FAILPOINT"]),
        );
        let config: Config = figment.extract().context("invalid control-plane configuration")?;
        config.check()?;
        Ok(config)
    }

    /// Rejects settings that cannot work, with the fix in the message.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(1..=3650).contains(&self.validation.key_rotation_alert_days) {
            bail!("validation.key_rotation_alert_days must be 1 to 3650 (Atlas raises the alert at 90)");
        }
        if self.validation.node_check_interval_secs == 0 {
            bail!("validation.node_check_interval_secs must be at least 1");
        }
        if self.validation.revalidate_interval_secs == 0 {
            bail!("validation.revalidate_interval_secs must be at least 1");
        }
        let p = &self.platform;
        if p.certificate_path.is_some() != p.private_key_path.is_some() {
            bail!("platform.certificate_path and platform.private_key_path go together: set both or neither");
        }
        if p.certificate_path.is_some() && p.federated_token_file.is_some() {
            bail!("give the platform app one credential: a certificate or a federated token file, not both");
        }
        if p.app_id.is_none() && (p.certificate_path.is_some() || p.federated_token_file.is_some()) {
            bail!("platform.app_id is required with a platform credential (ATREST_PLATFORM__APP_ID)");
        }
        if self.azure.retry_budget_secs == 0 || self.azure.request_timeout_secs == 0 {
            bail!("azure.request_timeout_secs and azure.retry_budget_secs must be at least 1");
        }
        if self.max_body_bytes < 1024 {
            bail!("max_body_bytes must be at least 1024");
        }
        Ok(())
    }

    /// The store URL, defaulting to SQLite in the data directory.
    pub fn store_url(&self) -> String {
        self.store_url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("control.db").display()))
    }

    pub fn revalidate_interval(&self) -> Duration {
        Duration::from_secs(self.validation.revalidate_interval_secs)
    }

    pub fn on_read_min_interval(&self) -> Duration {
        Duration::from_secs(self.validation.on_read_min_interval_secs)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return its own large error type
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "atrest.toml",
                r#"
                listen = "127.0.0.1:9000"
                [validation]
                revalidate_interval_secs = 60
                "#,
            )?;
            jail.set_env("ATREST_VALIDATION__REVALIDATE_INTERVAL_SECS", "5");
            jail.set_env("ATREST_STORE_URL", "postgres://u@h/db");
            let c = Config::load(Some(Path::new("atrest.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 9000);
            assert_eq!(c.validation.revalidate_interval_secs, 5);
            assert_eq!(c.store_url(), "postgres://u@h/db");
            assert_eq!(c.auth.access_token_lifetime_secs, 3600);
            Ok(())
        });
    }

    #[test]
    fn bad_settings_are_explained() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "listn = \"x\"")?;
            let err = format!("{:#}", Config::load(Some(Path::new("bad.toml"))).unwrap_err());
            assert!(err.contains("listn"), "{err}");
            jail.create_file("zero.toml", "[validation]\nrevalidate_interval_secs = 0")?;
            let err = format!("{:#}", Config::load(Some(Path::new("zero.toml"))).unwrap_err());
            assert!(err.contains("at least 1"), "{err}");
            jail.create_file("alert.toml", "[validation]\nkey_rotation_alert_days = 0")?;
            let err = format!("{:#}", Config::load(Some(Path::new("alert.toml"))).unwrap_err());
            assert!(err.contains("key_rotation_alert_days must be 1 to 3650"), "{err}");
            let err = format!("{:#}", Config::load(Some(Path::new("missing.toml"))).unwrap_err());
            assert!(err.contains("does not exist"), "{err}");
            Ok(())
        });
    }
}
