//! Scripted customer and platform actions against a running emulator, through its public
//! surfaces only (admin API, Entra token endpoint, Graph, ARM, Key Vault), exactly as a customer
//! or a platform operator would act on real Azure. `atrest up` lays out its demo with it, the
//! benchmarks build their tenants with it, and the control plane's end-to-end tests use it to
//! grant, revoke and break things.
//!
//! The caller supplies the HTTP client (one that maps Azure host names to the emulator and
//! trusts its CA); nothing here reaches into the emulator's memory.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::PrincipalInfo;

pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
pub const VAULT_SCOPE: &str = "https://vault.azure.net/.default";

/// Built-in role definition GUIDs (Microsoft's published built-in roles).
pub mod roles {
    pub const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
    pub const KEY_VAULT_CRYPTO_USER: &str = "12338af0-0e69-4776-bea7-57ae8d297424";
    pub const KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER: &str = "e147488a-f6f5-4113-8e2d-b22465e65bf6";
    pub const KEY_VAULT_ADMINISTRATOR: &str = "00482a5a-887f-4fb3-b363-3b7fe8e74483";
}

/// Calls with client-credentials principals.
#[derive(Clone)]
pub struct Azure {
    pub http: reqwest::Client,
}

async fn expect_ok(r: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("{what} failed with HTTP {status}: {text}");
    }
    Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
}

impl Azure {
    pub fn new(http: reqwest::Client) -> Azure {
        Azure { http }
    }

    /// A token for `p` (client secret) with `scope`.
    pub async fn token(&self, p: &PrincipalInfo, scope: &str) -> anyhow::Result<String> {
        let r = self
            .http
            .post(format!("https://login.microsoftonline.com/{}/oauth2/v2.0/token", p.tenant_id))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", p.client_id.as_str()),
                ("client_secret", p.client_secret.as_str()),
                ("scope", scope),
            ])
            .send()
            .await?;
        let v = expect_ok(r, "token request").await?;
        v["access_token"].as_str().map(str::to_string).context("token response without access_token")
    }

    /// One authenticated call; non-2xx is an error carrying the body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &str,
        body: Option<Value>,
        what: &str,
    ) -> anyhow::Result<Value> {
        let mut rb = self.http.request(method, url).bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        expect_ok(rb.send().await?, what).await
    }

    /// `POST /_emulator/tenants` as `admin` (the emulator's bootstrap principal).
    pub async fn new_tenant(&self, admin: &PrincipalInfo, name: &str) -> anyhow::Result<PrincipalInfo> {
        let token = self.token(admin, ARM_SCOPE).await?;
        let v = self
            .call(
                reqwest::Method::POST,
                "https://management.azure.com/_emulator/tenants",
                &token,
                Some(json!({"display_name": name})),
                "creating a tenant",
            )
            .await?;
        Ok(serde_json::from_value(v)?)
    }

    /// `POST /_emulator/applications` as `admin`; returns the app's response (app_id, ...).
    pub async fn register_app(&self, admin: &PrincipalInfo, body: Value) -> anyhow::Result<Value> {
        let token = self.token(admin, ARM_SCOPE).await?;
        self.call(
            reqwest::Method::POST,
            "https://management.azure.com/_emulator/applications",
            &token,
            Some(body),
            "registering an application",
        )
        .await
    }

    /// A call to the admin API (`path` under `/_emulator/`) as `admin`.
    pub async fn admin(
        &self,
        admin: &PrincipalInfo,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let token = self.token(admin, ARM_SCOPE).await?;
        self.call(method, &format!("https://management.azure.com/_emulator/{path}"), &token, body, path).await
    }
}

/// A self-signed RSA certificate and its PKCS#8 key (PEM) for a platform app (Entra certificate
/// credentials are RSA).
pub fn platform_certificate() -> anyhow::Result<(String, String)> {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
    let der = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp)
        .map_err(|_| anyhow::anyhow!("PKCS#8 encoding failed"))?;
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der.as_ref().into(), &rcgen::PKCS_RSA_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "atrest platform app");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(730);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The platform side: a tenant with the multi-tenant platform app (certificate credential).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Platform {
    pub tenant: PrincipalInfo,
    pub app_id: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Creates the platform tenant and registers the multi-tenant app with a fresh certificate.
pub async fn create_platform(az: &Azure, admin: &PrincipalInfo) -> anyhow::Result<Platform> {
    let tenant = az.new_tenant(admin, "Platform (atrest)").await?;
    let (cert_pem, key_pem) = platform_certificate()?;
    let app = az
        .register_app(
            admin,
            json!({
                "home_tenant_id": tenant.tenant_id,
                "display_name": "atrest platform",
                "multi_tenant": true,
                "certificate_pem": cert_pem,
            }),
        )
        .await?;
    let app_id = app["app_id"].as_str().context("app_id in application response")?.to_string();
    Ok(Platform { tenant, app_id, cert_pem, key_pem })
}

/// A customer tenant, acting as its administrator.
#[derive(Clone)]
pub struct Customer {
    pub az: Azure,
    pub admin: PrincipalInfo,
}

/// How a customer vault authorizes data-plane calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultAuth {
    Rbac,
    AccessPolicies,
}

impl Customer {
    pub async fn create(az: &Azure, emulator_admin: &PrincipalInfo, name: &str) -> anyhow::Result<Customer> {
        Ok(Customer { az: az.clone(), admin: az.new_tenant(emulator_admin, name).await? })
    }

    pub fn tenant_id(&self) -> &str {
        &self.admin.tenant_id
    }

    pub fn subscription_id(&self) -> &str {
        &self.admin.subscription_id
    }

    async fn arm(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<Value>,
        what: &str,
    ) -> anyhow::Result<Value> {
        let token = self.az.token(&self.admin, ARM_SCOPE).await?;
        self.az.call(method, &format!("https://management.azure.com{path_and_query}"), &token, body, what).await
    }

    /// `az ad sp list --filter "appId eq '<app_id>'"`: the app's service principal in this
    /// tenant, if there is one.
    pub async fn find_service_principal(&self, app_id: &str) -> anyhow::Result<Option<String>> {
        let token = self.az.token(&self.admin, GRAPH_SCOPE).await?;
        let list = self
            .az
            .call(
                reqwest::Method::GET,
                &format!("https://graph.microsoft.com/v1.0/servicePrincipals?$filter=appId%20eq%20'{app_id}'"),
                &token,
                None,
                "az ad sp list (Graph GET servicePrincipals)",
            )
            .await?;
        Ok(list["value"].as_array().and_then(|v| v.first()).and_then(|sp| sp["id"].as_str()).map(str::to_string))
    }

    /// `az ad sp create --id <app_id>`: the app's service principal in this tenant; returns its object id.
    pub async fn create_service_principal(&self, app_id: &str) -> anyhow::Result<String> {
        let token = self.az.token(&self.admin, GRAPH_SCOPE).await?;
        let sp = self
            .az
            .call(
                reqwest::Method::POST,
                "https://graph.microsoft.com/v1.0/servicePrincipals",
                &token,
                Some(json!({"appId": app_id, "accountEnabled": true})),
                "az ad sp create (Graph POST servicePrincipals)",
            )
            .await?;
        sp["id"].as_str().map(str::to_string).context("id in servicePrincipal")
    }

    /// `az group create`.
    pub async fn create_resource_group(&self, rg: &str) -> anyhow::Result<()> {
        let sub = self.subscription_id().to_string();
        self.arm(
            reqwest::Method::PUT,
            &format!("/subscriptions/{sub}/resourcegroups/{rg}?api-version=2022-09-01"),
            Some(json!({"location": "eastus"})),
            "creating the resource group",
        )
        .await?;
        Ok(())
    }

    /// The ARM resource id of vault `name` in `rg`.
    pub fn vault_id(&self, rg: &str, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}",
            self.subscription_id()
        )
    }

    /// `az keyvault create`.
    pub async fn create_vault(
        &self,
        rg: &str,
        name: &str,
        auth: VaultAuth,
        purge_protection: bool,
    ) -> anyhow::Result<String> {
        let id = self.vault_id(rg, name);
        let mut props = json!({
            "tenantId": self.tenant_id(),
            "sku": {"family": "A", "name": "standard"},
            "enableRbacAuthorization": auth == VaultAuth::Rbac,
            "enableSoftDelete": true,
            "publicNetworkAccess": "Enabled",
            "accessPolicies": [],
        });
        if purge_protection {
            props["enablePurgeProtection"] = json!(true);
        }
        self.arm(
            reqwest::Method::PUT,
            &format!("{id}?api-version=2023-07-01"),
            Some(json!({"location": "eastus", "properties": props})),
            "creating the vault",
        )
        .await?;
        Ok(id)
    }

    /// `az keyvault private-endpoint-connection approve|reject --vault-name V --name N`: ARM `PUT
    /// {vault}/privateEndpointConnections/{name}` with `status` `Approved` or `Rejected`.
    pub async fn set_private_endpoint_connection(
        &self,
        vault_id: &str,
        name: &str,
        status: &str,
    ) -> anyhow::Result<Value> {
        self.arm(
            reqwest::Method::PUT,
            &format!("{vault_id}/privateEndpointConnections/{name}?api-version=2023-07-01"),
            Some(json!({"properties": {"privateLinkServiceConnectionState": {"status": status, "description": format!("{status} by the vault's owner")}}})),
            "setting the private endpoint connection's state",
        )
        .await
    }

    /// `az keyvault private-endpoint-connection delete --vault-name V --name N`.
    pub async fn delete_private_endpoint_connection(&self, vault_id: &str, name: &str) -> anyhow::Result<()> {
        self.arm(
            reqwest::Method::DELETE,
            &format!("{vault_id}/privateEndpointConnections/{name}?api-version=2023-07-01"),
            None,
            "deleting the private endpoint connection",
        )
        .await?;
        Ok(())
    }

    /// `PATCH` vault properties (e.g. `{"publicNetworkAccess":"Disabled"}`).
    pub async fn update_vault(&self, vault_id: &str, properties: Value) -> anyhow::Result<()> {
        self.arm(
            reqwest::Method::PATCH,
            &format!("{vault_id}?api-version=2023-07-01"),
            Some(json!({"properties": properties})),
            "updating the vault",
        )
        .await?;
        Ok(())
    }

    /// `az keyvault key create --kty RSA --size 2048`: returns the versioned kid. The tenant's
    /// admin is Key Vault Administrator on its subscription, so RBAC vaults accept it; for an
    /// access-policy vault, grant the admin first with [`Customer::set_access_policy`].
    pub async fn create_key(&self, vault: &str, name: &str, tags: Option<Value>) -> anyhow::Result<String> {
        let token = self.az.token(&self.admin, VAULT_SCOPE).await?;
        let mut body = json!({"kty": "RSA", "key_size": 2048});
        if let Some(t) = tags {
            body["tags"] = t;
        }
        let key = self
            .az
            .call(
                reqwest::Method::POST,
                &format!("https://{vault}.vault.azure.net/keys/{name}/create?api-version=7.5"),
                &token,
                Some(body),
                "creating the key",
            )
            .await?;
        key["key"]["kid"].as_str().map(str::to_string).context("kid in key bundle")
    }

    /// `az keyvault key set-attributes`: PATCH a key version (`version` "" = current) with `body`
    /// (e.g. `{"attributes":{"enabled":false}}`).
    pub async fn update_key(&self, vault: &str, name: &str, version: &str, body: Value) -> anyhow::Result<Value> {
        let token = self.az.token(&self.admin, VAULT_SCOPE).await?;
        self.az
            .call(
                reqwest::Method::PATCH,
                &format!("https://{vault}.vault.azure.net/keys/{name}/{version}?api-version=7.5"),
                &token,
                Some(body),
                "updating the key",
            )
            .await
    }

    /// `az role assignment create --assignee-object-id <principal> --role <guid> --scope <scope>`;
    /// returns the assignment's resource id.
    pub async fn assign_role(&self, principal_id: &str, role_guid: &str, scope: &str) -> anyhow::Result<String> {
        let name = uuid::Uuid::new_v4();
        let sub = self.subscription_id().to_string();
        let id = format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}");
        self.arm(
            reqwest::Method::PUT,
            &format!("{id}?api-version=2022-04-01"),
            Some(json!({"properties": {
                "roleDefinitionId": format!("/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{role_guid}"),
                "principalId": principal_id,
                "principalType": "ServicePrincipal",
            }})),
            "creating a role assignment",
        )
        .await?;
        Ok(id)
    }

    /// `az role assignment delete --ids <id>`.
    pub async fn delete_role_assignment(&self, assignment_id: &str) -> anyhow::Result<()> {
        self.arm(
            reqwest::Method::DELETE,
            &format!("{assignment_id}?api-version=2022-04-01"),
            None,
            "deleting a role assignment",
        )
        .await?;
        Ok(())
    }

    /// `az keyvault set-policy --object-id <object_id> --key-permissions ...`.
    pub async fn set_access_policy(
        &self,
        vault_id: &str,
        object_id: &str,
        key_permissions: &[&str],
    ) -> anyhow::Result<()> {
        self.arm(
            reqwest::Method::PUT,
            &format!("{vault_id}/accessPolicies/add?api-version=2023-07-01"),
            Some(json!({"properties": {"accessPolicies": [{
                "tenantId": self.tenant_id(),
                "objectId": object_id,
                "permissions": {"keys": key_permissions},
            }]}})),
            "adding an access policy",
        )
        .await?;
        Ok(())
    }

    /// `az keyvault delete-policy --object-id <object_id>`.
    pub async fn remove_access_policy(&self, vault_id: &str, object_id: &str) -> anyhow::Result<()> {
        self.arm(
            reqwest::Method::PUT,
            &format!("{vault_id}/accessPolicies/remove?api-version=2023-07-01"),
            Some(json!({"properties": {"accessPolicies": [{
                "tenantId": self.tenant_id(),
                "objectId": object_id,
                "permissions": {"keys": []},
            }]}})),
            "removing an access policy",
        )
        .await?;
        Ok(())
    }

    /// The object id of this tenant admin's own service principal (to grant it data-plane
    /// rights on an access-policy vault).
    pub async fn admin_object_id(&self) -> anyhow::Result<String> {
        let token = self.az.token(&self.admin, GRAPH_SCOPE).await?;
        let v = self
            .az
            .call(
                reqwest::Method::GET,
                &format!(
                    "https://graph.microsoft.com/v1.0/servicePrincipals?$filter=appId eq '{}'",
                    self.admin.client_id
                ),
                &token,
                None,
                "looking up the admin's service principal",
            )
            .await?;
        v["value"][0]["id"].as_str().map(str::to_string).context("admin service principal")
    }
}

/// What `atrest up` lays out: the platform, and one customer with a vault and a key, the
/// platform's service principal already created in the customer's tenant (no grant yet: that
/// is the customer's step in the guide).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoLayout {
    pub platform_tenant: PrincipalInfo,
    pub platform_app_id: String,
    pub platform_cert_pem: String,
    pub platform_key_pem: String,
    pub customer_tenant: PrincipalInfo,
    pub customer_resource_group: String,
    pub customer_vault: String,
    pub customer_vault_resource_id: String,
    pub customer_key_id: String,
    /// The platform's service principal object id in the customer tenant.
    pub platform_sp_in_customer: String,
}

/// How far a demo layout got: saved after every step, so that a run killed half-way finishes
/// the same layout instead of leaving orphan tenants and vaults behind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DemoProgress {
    pub platform: Option<Platform>,
    pub customer: Option<PrincipalInfo>,
    pub platform_sp_in_customer: Option<String>,
    pub resource_group_created: bool,
    /// Chosen and saved before the vault is created (a PUT, so creating it again is harmless).
    pub vault: Option<String>,
    pub vault_resource_id: Option<String>,
    pub key_id: Option<String>,
}

impl DemoProgress {
    /// How many of the layout's seven steps are recorded.
    pub fn steps_done(&self) -> usize {
        [
            self.platform.is_some(),
            self.customer.is_some(),
            self.platform_sp_in_customer.is_some(),
            self.resource_group_created,
            self.vault.is_some(),
            self.vault_resource_id.is_some(),
            self.key_id.is_some(),
        ]
        .iter()
        .filter(|d| **d)
        .count()
    }
}

const DEMO_RG: &str = "atrest-demo";

/// Creates the demo layout.
pub async fn create_demo_layout(http: &reqwest::Client, emulator_admin: &PrincipalInfo) -> anyhow::Result<DemoLayout> {
    resume_demo_layout(http, emulator_admin, DemoProgress::default(), &mut |_| Ok(())).await
}

/// Creates the demo layout from `progress` on, calling `save` after every step. Each step is
/// either recorded before it acts (the vault name) or looked up when it may have happened
/// unrecorded (the service principal, found by appId), so that resuming never duplicates one;
/// the one window left is a kill between a tenant's creation and its `save` (a tenant nobody
/// uses, not a broken layout).
pub async fn resume_demo_layout(
    http: &reqwest::Client,
    emulator_admin: &PrincipalInfo,
    mut progress: DemoProgress,
    save: &mut dyn FnMut(&DemoProgress) -> anyhow::Result<()>,
) -> anyhow::Result<DemoLayout> {
    let az = Azure::new(http.clone());
    let platform = match progress.platform.clone() {
        Some(p) => p,
        None => {
            let p = create_platform(&az, emulator_admin).await?;
            progress.platform = Some(p.clone());
            save(&progress)?;
            p
        }
    };
    let customer = match progress.customer.clone() {
        Some(admin) => Customer { az: az.clone(), admin },
        None => {
            let c = Customer::create(&az, emulator_admin, "Contoso (customer)").await?;
            progress.customer = Some(c.admin.clone());
            save(&progress)?;
            c
        }
    };
    let sp = match progress.platform_sp_in_customer.clone() {
        Some(sp) => sp,
        None => {
            let sp = match customer.find_service_principal(&platform.app_id).await? {
                Some(sp) => sp,
                None => customer.create_service_principal(&platform.app_id).await?,
            };
            progress.platform_sp_in_customer = Some(sp.clone());
            save(&progress)?;
            sp
        }
    };
    if !progress.resource_group_created {
        customer.create_resource_group(DEMO_RG).await?;
        progress.resource_group_created = true;
        save(&progress)?;
    }
    let vault = match progress.vault.clone() {
        Some(v) => v,
        None => {
            let v = format!("atrest{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
            progress.vault = Some(v.clone());
            save(&progress)?;
            v
        }
    };
    let vault_id = match progress.vault_resource_id.clone() {
        Some(id) => id,
        None => {
            let id = customer.create_vault(DEMO_RG, &vault, VaultAuth::Rbac, true).await?;
            progress.vault_resource_id = Some(id.clone());
            save(&progress)?;
            id
        }
    };
    // A key created but not recorded is created again: a second version of the same key.
    let kid = match progress.key_id.clone() {
        Some(k) => k,
        None => {
            let k = customer.create_key(&vault, "atrest-cmk", None).await?;
            progress.key_id = Some(k.clone());
            save(&progress)?;
            k
        }
    };
    Ok(DemoLayout {
        platform_tenant: platform.tenant,
        platform_app_id: platform.app_id,
        platform_cert_pem: platform.cert_pem,
        platform_key_pem: platform.key_pem,
        customer_tenant: customer.admin,
        customer_resource_group: DEMO_RG.to_string(),
        customer_vault: vault,
        customer_vault_resource_id: vault_id,
        customer_key_id: kid,
        platform_sp_in_customer: sp,
    })
}
