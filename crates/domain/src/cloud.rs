//! The three Azure clouds atrest supports and every endpoint that differs between them.
//!
//! Values come from azure-cli's `azure-cli-core/azure/cli/core/cloud.py` and Microsoft's
//! national-cloud docs (see `shared/reference/azure-protocols.md` §3.4).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An Azure cloud. The names are the Atlas `azureEnvironment` enum values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AzureEnvironment {
    #[serde(rename = "AZURE")]
    Azure,
    #[serde(rename = "AZURE_CHINA")]
    AzureChina,
    #[serde(rename = "AZURE_US_GOVERNMENT")]
    AzureUsGovernment,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown azureEnvironment '{0}': use one of AZURE, AZURE_CHINA, AZURE_US_GOVERNMENT")]
pub struct UnknownAzureEnvironment(pub String);

impl AzureEnvironment {
    pub const ALL: [AzureEnvironment; 3] = [Self::Azure, Self::AzureChina, Self::AzureUsGovernment];

    /// The Atlas enum spelling (`AZURE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Azure => "AZURE",
            Self::AzureChina => "AZURE_CHINA",
            Self::AzureUsGovernment => "AZURE_US_GOVERNMENT",
        }
    }

    /// azure-cli's cloud name (`az cloud set -n ...`).
    pub fn cli_cloud_name(self) -> &'static str {
        match self {
            Self::Azure => "AzureCloud",
            Self::AzureChina => "AzureChinaCloud",
            Self::AzureUsGovernment => "AzureUSGovernment",
        }
    }

    /// Entra ID authority host name, e.g. `login.microsoftonline.com`.
    pub fn login_host(self) -> &'static str {
        match self {
            Self::Azure => "login.microsoftonline.com",
            Self::AzureChina => "login.chinacloudapi.cn",
            Self::AzureUsGovernment => "login.microsoftonline.us",
        }
    }

    /// `https://{login_host}` without a trailing slash.
    pub fn authority_url(self) -> String {
        format!("https://{}", self.login_host())
    }

    /// Azure Resource Manager host name.
    pub fn arm_host(self) -> &'static str {
        match self {
            Self::Azure => "management.azure.com",
            Self::AzureChina => "management.chinacloudapi.cn",
            Self::AzureUsGovernment => "management.usgovcloudapi.net",
        }
    }

    /// The ARM token audience (`https://management.azure.com/` style; tokens carry it without
    /// the trailing slash removed, as Entra issues them for the `.default` scope).
    pub fn arm_resource(self) -> &'static str {
        match self {
            Self::Azure => "https://management.azure.com",
            Self::AzureChina => "https://management.chinacloudapi.cn",
            Self::AzureUsGovernment => "https://management.usgovcloudapi.net",
        }
    }

    /// Microsoft Graph host name.
    pub fn graph_host(self) -> &'static str {
        match self {
            Self::Azure => "graph.microsoft.com",
            Self::AzureChina => "microsoftgraph.chinacloudapi.cn",
            Self::AzureUsGovernment => "graph.microsoft.us",
        }
    }

    pub fn graph_resource(self) -> String {
        format!("https://{}", self.graph_host())
    }

    /// The Key Vault DNS suffix without the leading dot, e.g. `vault.azure.net`.
    pub fn vault_dns_suffix(self) -> &'static str {
        match self {
            Self::Azure => "vault.azure.net",
            Self::AzureChina => "vault.azure.cn",
            Self::AzureUsGovernment => "vault.usgovcloudapi.net",
        }
    }

    /// The Key Vault token audience: `https://` + the DNS suffix.
    pub fn vault_resource(self) -> String {
        format!("https://{}", self.vault_dns_suffix())
    }

    /// The audience a federated identity credential must name.
    pub fn fic_audience(self) -> &'static str {
        match self {
            Self::Azure => "api://AzureADTokenExchange",
            Self::AzureChina => "api://AzureADTokenExchangeChina",
            Self::AzureUsGovernment => "api://AzureADTokenExchangeUSGov",
        }
    }

    /// `https://{vault}.{suffix}` for a vault name.
    pub fn vault_uri(self, vault: &str) -> String {
        format!("https://{}.{}/", vault.to_ascii_lowercase(), self.vault_dns_suffix())
    }

    /// Which cloud a host belongs to, and what kind of endpoint it is.
    pub fn classify_host(host: &str) -> Option<(AzureEnvironment, HostKind)> {
        let host = host.to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        for env in Self::ALL {
            if host == env.login_host() {
                return Some((env, HostKind::Login));
            }
            if host == env.arm_host() {
                return Some((env, HostKind::Arm));
            }
            if host == env.graph_host() {
                return Some((env, HostKind::Graph));
            }
            if let Some(vault) = host.strip_suffix(env.vault_dns_suffix())
                && let Some(vault) = vault.strip_suffix('.')
                && !vault.is_empty()
                && !vault.contains('.')
            {
                return Some((env, HostKind::Vault(vault.to_string())));
            }
        }
        // Entra's other well-known aliases of the public cloud.
        if matches!(host, "login.windows.net" | "login.microsoft.com" | "sts.windows.net") {
            return Some((Self::Azure, HostKind::Login));
        }
        if host == "login.usgovcloudapi.net" {
            return Some((Self::AzureUsGovernment, HostKind::Login));
        }
        None
    }

    /// Every fixed host name of every cloud (vault hosts are wildcards and not listed).
    pub fn all_fixed_hosts() -> Vec<&'static str> {
        let mut v = Vec::new();
        for env in Self::ALL {
            v.push(env.login_host());
            v.push(env.arm_host());
            v.push(env.graph_host());
        }
        v.extend(["login.windows.net", "login.microsoft.com", "sts.windows.net", "login.usgovcloudapi.net"]);
        v
    }
}

/// What an Azure host name serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKind {
    Login,
    Arm,
    Graph,
    /// A Key Vault; carries the lowercased vault name.
    Vault(String),
}

impl fmt::Display for AzureEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AzureEnvironment {
    type Err = UnknownAzureEnvironment;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "AZURE" => Ok(Self::Azure),
            "AZURE_CHINA" => Ok(Self::AzureChina),
            "AZURE_US_GOVERNMENT" => Ok(Self::AzureUsGovernment),
            other => Err(UnknownAzureEnvironment(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_routes_every_cloud() {
        for env in AzureEnvironment::ALL {
            assert_eq!(AzureEnvironment::classify_host(env.login_host()), Some((env, HostKind::Login)));
            assert_eq!(AzureEnvironment::classify_host(env.arm_host()), Some((env, HostKind::Arm)));
            assert_eq!(AzureEnvironment::classify_host(env.graph_host()), Some((env, HostKind::Graph)));
            let vh = format!("MyVault.{}", env.vault_dns_suffix());
            assert_eq!(AzureEnvironment::classify_host(&vh), Some((env, HostKind::Vault("myvault".into()))));
        }
    }

    #[test]
    fn classify_rejects_nested_and_bare_suffix() {
        assert_eq!(AzureEnvironment::classify_host("vault.azure.net"), None);
        assert_eq!(AzureEnvironment::classify_host("a.b.vault.azure.net"), None);
        assert_eq!(AzureEnvironment::classify_host("example.com"), None);
    }

    #[test]
    fn parse_round_trips_and_names_the_choices() {
        for env in AzureEnvironment::ALL {
            assert_eq!(env.as_str().parse::<AzureEnvironment>().unwrap(), env);
        }
        let err = "AZURE_GERMANY".parse::<AzureEnvironment>().unwrap_err();
        assert!(err.to_string().contains("AZURE_US_GOVERNMENT"));
    }

    #[test]
    fn vault_resource_is_https_suffix() {
        assert_eq!(AzureEnvironment::AzureUsGovernment.vault_resource(), "https://vault.usgovcloudapi.net");
    }
}
