//! The node's side of the node API (`/api/atrest/v1/node/`, docs/design/node-api-draft.md):
//! join, the configuration long-poll, Key Vault tokens and status reports.
//!
//! Every failure is classified the way the lifecycle needs it: the control plane not answering
//! ([`ControlError::Unreachable`]) is never a denial, a revoked node credential
//! ([`ControlError::Revoked`]) stops the node, and Entra refusing the token relayed by the
//! control plane ([`ControlError::TokenDenied`]) is a denial of the customer key.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The configuration the control plane gives a node.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    pub node_id: String,
    pub group_id: String,
    pub cluster_name: String,
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub cluster: ClusterSettings,
    pub encryption_at_rest: EarSettings,
    #[serde(default = "default_interval")]
    pub check_interval_secs: u64,
    #[serde(default)]
    pub denial_grace_secs: u64,
    #[serde(default)]
    pub check_nonce: u64,
    #[serde(default)]
    pub master_key_rotation_nonce: u64,
    #[serde(default)]
    pub data_credentials: Vec<DataCredentialHash>,
}

fn default_interval() -> u64 {
    60
}

/// The cluster's settings a node acts on.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSettings {
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub deleting: bool,
    #[serde(default)]
    pub encryption_at_rest_provider: Option<String>,
}

/// The project's Encryption at Rest settings, as a node needs them (no secret in them).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EarSettings {
    pub enabled: bool,
    #[serde(default)]
    pub auth_mode: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub key_identifier: Option<String>,
    /// The key's current version as the control plane last resolved it (revalidation), so an
    /// unversioned identifier's new version reaches the node without a Key Vault GET.
    #[serde(default)]
    pub current_key_version: Option<String>,
    #[serde(default)]
    pub key_vault_name: Option<String>,
    #[serde(default)]
    pub azure_environment: Option<String>,
    #[serde(default)]
    pub require_private_networking: bool,
    #[serde(default)]
    pub private_endpoint: Option<PrivateEndpoint>,
    /// A static → roleId migration under private networking: the node validates with this mode
    /// and keeps `auth_mode` (STATIC) whenever this one is refused, so the migration never
    /// costs the node its access.
    #[serde(default)]
    pub pending_auth_mode: Option<String>,
    /// The key must carry this tag (the confused-deputy guard, `validation.require_key_binding`):
    /// the node refuses to wrap its master key under a key without it.
    #[serde(default)]
    pub key_binding: Option<KeyBinding>,
}

/// The EAR private endpoint to reach the vault through (the vault's owner approves its
/// connection in Azure; only an approved one gets through).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PrivateEndpoint {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    /// `IP:PORT` to send the vault's requests to (TLS and host name unchanged).
    pub address: String,
    #[serde(default)]
    pub connection_name: Option<String>,
}

/// The tag a key must carry to be used for this project.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct KeyBinding {
    pub tag: String,
    pub value: String,
}

/// A data credential the node accepts: the SHA-256 (hex) of the whole credential.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct DataCredentialHash {
    pub id: String,
    pub sha256: String,
}

/// What a join returns.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    pub node_id: String,
    pub node_credential: SecretString,
    pub group_id: String,
    pub cluster_name: String,
    #[serde(default)]
    pub cluster_id: String,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

/// A Key Vault access token from the control plane.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    pub access_token: Zeroizing<String>,
    pub expires_in: u64,
    #[serde(default)]
    pub auth_mode: Option<String>,
}

/// A status report.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub state: String,
    pub key_identifier: Option<String>,
    pub key_version: Option<String>,
    pub auth_mode: Option<String>,
    pub master_key_generation: Option<u32>,
    pub last_check_at: Option<String>,
    pub config_etag: Option<String>,
    pub via: &'static str,
    pub last_error: Option<ReportedError>,
}

/// Why a node is not serving (or is degraded).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReportedError {
    /// `DENIED`, `UNREACHABLE` or `INTERNAL`.
    pub kind: &'static str,
    pub azure_code: Option<String>,
    pub message: String,
    pub fix: Option<String>,
}

/// A failed call to the control plane.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// No answer, or a 5xx: keep doing what the node does and try again.
    #[error("the control plane at {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    /// The node credential was revoked (or never existed): the node must stop.
    #[error("the control plane revoked this node ({detail})")]
    Revoked { detail: String },
    /// Entra refused the token the control plane asked for in the customer's tenant.
    #[error("{detail}")]
    TokenDenied { azure_code: Option<String>, detail: String, fix: Option<String> },
    /// Any other refusal (a bad join token, bad input).
    #[error("the control plane refused: {status} {code}: {detail}")]
    Refused { status: u16, code: String, detail: String },
}

/// The Atlas error body the control plane answers with.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ApiErrorBody {
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    parameters: Vec<serde_json::Value>,
}

/// The result of a configuration poll.
#[derive(Debug)]
pub enum ConfigPoll {
    /// A configuration (new, or the first) and its ETag.
    Changed(Box<NodeConfig>, Option<String>),
    /// Nothing changed during the wait.
    NotModified,
}

/// A client of one control plane, as one node.
#[derive(Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    base: String,
    credential: Option<SecretString>,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient").field("base", &self.base).finish_non_exhaustive()
    }
}

impl ControlClient {
    /// A client for the control plane at `base` (`https://host:port`), trusting `ca_pem` in
    /// addition to the system roots when given.
    pub fn new(base: &str, ca_pem: Option<&str>) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).pool_max_idle_per_host(4);
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| format!("the control plane CA is not a PEM certificate: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { http, base: base.trim_end_matches('/').to_string(), credential: None })
    }

    /// The same client, authenticating as a joined node.
    pub fn with_credential(mut self, credential: SecretString) -> Self {
        self.credential = Some(credential);
        self
    }

    /// The control plane's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/atrest/v1/node/{path}", self.base)
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credential {
            Some(c) => rb.bearer_auth(c.expose_secret()),
            None => rb,
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ControlError {
        ControlError::Unreachable { url: self.base.clone(), detail: e.to_string() }
    }

    async fn refusal(&self, resp: reqwest::Response) -> ControlError {
        let status = resp.status().as_u16();
        let body: ApiErrorBody = resp.json().await.unwrap_or_default();
        if status >= 500 && body.error_code != "AZURE_TOKEN_UNAVAILABLE" {
            return self.unreachable(format!("HTTP {status} {}: {}", body.error_code, body.detail));
        }
        match (status, body.error_code.as_str()) {
            (401, "NODE_REVOKED") => ControlError::Revoked { detail: body.detail },
            // parameters: [Entra's code]; the detail ends with " Fix: <what to do>" when Entra's
            // refusal has a known fix (docs/design/node-api-draft.md).
            (403, "AZURE_TOKEN_DENIED") => {
                let fix =
                    body.detail.rsplit_once(" Fix: ").map(|(_, f)| f.trim().to_string()).filter(|f| !f.is_empty());
                ControlError::TokenDenied {
                    azure_code: body.parameters.first().and_then(|p| p.as_str()).map(str::to_string),
                    fix,
                    detail: body.detail,
                }
            }
            (_, "AZURE_TOKEN_UNAVAILABLE") => self.unreachable(body.detail),
            _ => ControlError::Refused { status, code: body.error_code, detail: body.detail },
        }
    }

    /// `POST join`: spends `token` and returns the node's identity and credential.
    pub async fn join(&self, token: &SecretString, data_url: &str) -> Result<Joined, ControlError> {
        let resp = self
            .http
            .post(self.url("join"))
            .timeout(Duration::from_secs(30))
            .json(&serde_json::json!({"joinToken": token.expose_secret(), "dataUrl": data_url}))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(self.refusal(resp).await);
        }
        resp.json().await.map_err(|e| self.unreachable(format!("the join answer is unusable: {e}")))
    }

    /// `GET config`: at once without `etag`; with it, held until the configuration changes
    /// or `wait` passes.
    pub async fn config(&self, etag: Option<&str>, wait: Duration) -> Result<ConfigPoll, ControlError> {
        let mut rb = self
            .authed(self.http.get(format!("{}?waitSecs={}", self.url("config"), wait.as_secs())))
            .timeout(wait + Duration::from_secs(15));
        if let Some(tag) = etag {
            rb = rb.header(reqwest::header::IF_NONE_MATCH, tag);
        }
        let resp = rb.send().await.map_err(|e| self.unreachable(e))?;
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(ConfigPoll::NotModified);
        }
        if !resp.status().is_success() {
            return Err(self.refusal(resp).await);
        }
        let tag = resp.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
        let config: NodeConfig =
            resp.json().await.map_err(|e| self.unreachable(format!("the configuration is unusable: {e}")))?;
        Ok(ConfigPoll::Changed(Box::new(config), tag))
    }

    /// `POST token`: a Key Vault token in the customer's tenant. `refused_sha256` (hex): the
    /// SHA-256 of the token Key Vault just refused (401), so that the control plane drops its
    /// cached copy and asks Entra again instead of handing the same token back.
    pub async fn token(
        &self,
        auth_mode: Option<&str>,
        refused_sha256: Option<&str>,
    ) -> Result<IssuedToken, ControlError> {
        let mut body = serde_json::json!({});
        if let Some(m) = auth_mode {
            body["authMode"] = m.into();
        }
        if let Some(d) = refused_sha256 {
            body["refusedTokenSha256"] = d.into();
        }
        let resp = self
            .authed(self.http.post(self.url("token")))
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(self.refusal(resp).await);
        }
        resp.json().await.map_err(|e| self.unreachable(format!("the token answer is unusable: {e}")))
    }

    /// `POST rotateMasterKey`: asks for a master-key rotation of this node; returns the
    /// request's nonce (the node has rotated once its keystore records it).
    pub async fn request_master_key_rotation(&self) -> Result<u64, ControlError> {
        let resp = self
            .authed(self.http.post(self.url("rotateMasterKey")))
            .timeout(Duration::from_secs(30))
            .json(&serde_json::json!({}))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(self.refusal(resp).await);
        }
        let v: serde_json::Value =
            resp.json().await.map_err(|e| self.unreachable(format!("the answer is unusable: {e}")))?;
        v["masterKeyRotationNonce"].as_u64().ok_or_else(|| self.unreachable("the answer has no masterKeyRotationNonce"))
    }

    /// `POST status`.
    pub async fn report(&self, report: &StatusReport) -> Result<(), ControlError> {
        let resp = self
            .authed(self.http.post(self.url("status")))
            .timeout(Duration::from_secs(10))
            .json(report)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(self.refusal(resp).await);
        }
        Ok(())
    }
}
