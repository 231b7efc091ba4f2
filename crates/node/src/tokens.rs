//! Key Vault tokens for a node: asked of the control plane, never of Entra. The node holds no
//! Azure credential; the control plane obtains the token with the platform credential (or, in
//! the legacy static mode, the sealed secret) and hands on only the short-lived token.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use atrest_azure::{AccessToken, Error, ErrorKind, Service, TokenSource};
use atrest_domain::{AzureEnvironment, AzureUuid};
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use secrecy::SecretString;

use crate::control::{ControlClient, ControlError};

/// A [`TokenSource`] that asks the control plane (`POST /api/atrest/v1/node/token`).
#[derive(Debug)]
pub struct ControlPlaneTokens {
    client: ControlClient,
    auth_mode: Option<String>,
    /// The SHA-256 (hex) of the token Key Vault last refused, sent with the next request.
    refused: Mutex<Option<String>>,
}

impl ControlPlaneTokens {
    /// Tokens from `client`, in `auth_mode` (`None`: whatever the project uses now).
    pub fn new(client: ControlClient, auth_mode: Option<String>) -> Arc<Self> {
        Arc::new(Self { client, auth_mode, refused: Mutex::new(None) })
    }
}

/// A control-plane failure as an Azure error of the kind it means for the node: a relayed
/// Entra refusal is a denial; everything else is "could not get a token" (unreachable), except a
/// revoked node, which the lifecycle recognises by its code.
pub fn to_azure_error(e: ControlError) -> Error {
    match e {
        ControlError::TokenDenied { azure_code, detail, fix } => {
            let mut err = Error::new(ErrorKind::Denied, Service::Entra, detail).with_status(403);
            if let Some(fix) = fix {
                err = err.with_remediation(fix);
            }
            if let Some(code) = azure_code {
                if let Some(n) = code.strip_prefix("AADSTS").and_then(|n| n.parse().ok()) {
                    err = err.with_aadsts(n);
                }
                err = err.with_code(code);
            }
            err
        }
        ControlError::Revoked { detail } => {
            Error::new(ErrorKind::Denied, Service::Local, detail).with_code(REVOKED_CODE)
        }
        ControlError::Unreachable { .. } => Error::new(ErrorKind::Unreachable, Service::Local, e.to_string()),
        ControlError::Refused { .. } => Error::new(ErrorKind::Misconfigured, Service::Local, e.to_string()),
    }
}

/// The code a relayed "node revoked" carries.
pub const REVOKED_CODE: &str = "NODE_REVOKED";

impl TokenSource for ControlPlaneTokens {
    fn fetch<'a>(
        &'a self,
        _environment: AzureEnvironment,
        _tenant: &'a AzureUuid,
        _scope: &'a str,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        async move {
            let sent_at = Instant::now();
            let refused = self.refused.lock().take();
            let issued =
                self.client.token(self.auth_mode.as_deref(), refused.as_deref()).await.map_err(to_azure_error)?;
            if issued.access_token.is_empty() || issued.expires_in == 0 {
                return Err(Error::new(
                    ErrorKind::Unreachable,
                    Service::Local,
                    "the control plane's token answer is empty or already expired",
                ));
            }
            Ok(AccessToken::new(
                SecretString::from(issued.access_token.as_str()),
                sent_at,
                Duration::from_secs(issued.expires_in),
            ))
        }
        .boxed()
    }

    fn refused(&self, token: &AccessToken) {
        *self.refused.lock() = Some(hex::encode(token.sha256()));
    }
}
