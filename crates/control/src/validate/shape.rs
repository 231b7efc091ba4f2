//! Check 1, **shape**: the configuration's fields parse and agree with each other, before
//! anything is sent to Azure. Pure; the same function serves PATCH (a 400 naming the field) and
//! the dry run (a failed `shape` check).

use atrest_domain::{AzureEnvironment, AzureUuid, KeyIdentifier, VaultName};

use crate::error::ApiError;

/// The parsed, mutually consistent parts of an `azureKeyVault` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shaped {
    pub environment: AzureEnvironment,
    pub subscription_id: AzureUuid,
    pub resource_group: String,
    pub vault: VaultName,
    pub key: KeyIdentifier,
}

/// The raw fields, as configured (after merging a PATCH into what was stored).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields<'a> {
    pub azure_environment: Option<&'a str>,
    pub subscription_id: Option<&'a str>,
    pub resource_group_name: Option<&'a str>,
    pub key_vault_name: Option<&'a str>,
    pub key_identifier: Option<&'a str>,
}

fn required<'a>(value: Option<&'a str>, field: &str, example: &str) -> Result<&'a str, ApiError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ApiError::missing_attribute(
            field,
            format!("enabling Azure Key Vault encryption needs {field} (for example {example})"),
        )),
    }
}

/// Checks the fields, returning the parsed values or a 400 that names the field and the fix.
pub fn shape(f: Fields<'_>) -> Result<Shaped, ApiError> {
    let env_raw = required(f.azure_environment, "azureEnvironment", "AZURE")?;
    let environment: AzureEnvironment = env_raw.parse().map_err(|_| {
        ApiError::bad_request(
            crate::error::codes::INVALID_ENUM_VALUE,
            format!("An invalid enumeration value {env_raw} was specified for azureEnvironment: use AZURE, AZURE_CHINA or AZURE_US_GOVERNMENT."),
        )
        .with_params([env_raw])
        .with_field("azureEnvironment", "use AZURE, AZURE_CHINA or AZURE_US_GOVERNMENT")
    })?;
    let sub_raw = required(f.subscription_id, "subscriptionID", "a39012fb-d604-4cd1-8841-77f705f3e6d5")?;
    let subscription_id: AzureUuid = sub_raw.parse().map_err(|_| {
        ApiError::invalid_attribute(
            "subscriptionID",
            format!("'{sub_raw}' is not a UUID; find it with `az account show --query id -o tsv`"),
        )
    })?;
    let resource_group = required(f.resource_group_name, "resourceGroupName", "my-keys-rg")?;
    check_resource_group(resource_group)?;
    let vault_raw = required(f.key_vault_name, "keyVaultName", "contoso-keys")?;
    let vault: VaultName =
        vault_raw.parse().map_err(|e| ApiError::invalid_attribute("keyVaultName", format!("{e}")))?;
    let kid_raw = required(
        f.key_identifier,
        "keyIdentifier",
        "https://contoso-keys.vault.azure.net/keys/atlas-cmk or .../keys/atlas-cmk/<version>",
    )?;
    let key: KeyIdentifier = kid_raw.parse().map_err(|e| {
        ApiError::invalid_attribute(
            "keyIdentifier",
            format!(
                "{e}. Copy it from `az keyvault key show --vault-name <vault> --name <key> --query key.kid -o tsv`"
            ),
        )
    })?;
    if key.environment() != environment {
        return Err(ApiError::invalid_attribute(
            "keyIdentifier",
            format!(
                "its host ends in .{} which belongs to {}, but azureEnvironment is {} (whose vaults end in .{}); \
                 make azureEnvironment and keyIdentifier name the same cloud",
                key.environment().vault_dns_suffix(),
                key.environment().as_str(),
                environment.as_str(),
                environment.vault_dns_suffix()
            ),
        ));
    }
    if key.vault() != &vault {
        return Err(ApiError::invalid_attribute(
            "keyVaultName",
            format!(
                "keyVaultName is '{}' but keyIdentifier points into vault '{}'; they must name the same vault",
                vault.as_str(),
                key.vault().as_str()
            ),
        ));
    }
    Ok(Shaped { environment, subscription_id, resource_group: resource_group.to_string(), vault, key })
}

/// Azure's resource group name rules: 1–90 characters of letters, digits, `_`, `(`, `)`, `-`
/// and `.`, not ending with `.`.
fn check_resource_group(name: &str) -> Result<(), ApiError> {
    let ok_chars = name.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '(' | ')' | '-' | '.'));
    if name.chars().count() > 90 || !ok_chars || name.ends_with('.') {
        return Err(ApiError::invalid_attribute(
            "resourceGroupName",
            format!(
                "'{name}' is not a valid resource group name (1-90 letters, digits, _ ( ) - . and not ending in .); \
                 list yours with `az group list --query [].name -o tsv`"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "a39012fb-d604-4cd1-8841-77f705f3e6d5";

    fn fields(kid: &'static str) -> Fields<'static> {
        Fields {
            azure_environment: Some("AZURE"),
            subscription_id: Some(SUB),
            resource_group_name: Some("rg"),
            key_vault_name: Some("contoso-keys"),
            key_identifier: Some(kid),
        }
    }

    fn field_of(e: &ApiError) -> &str {
        e.fields.first().map(|(f, _)| f.as_str()).unwrap_or("")
    }

    #[test]
    fn versioned_and_unversioned_identifiers_pass() {
        let s = shape(fields("https://contoso-keys.vault.azure.net/keys/cmk")).unwrap();
        assert!(s.key.version().is_none());
        let s =
            shape(fields("https://contoso-keys.vault.azure.net/keys/cmk/d891821e3d364e9eb88fbd3d11807b86")).unwrap();
        assert_eq!(s.key.version().unwrap().as_str(), "d891821e3d364e9eb88fbd3d11807b86");
        assert_eq!(s.vault.as_str(), "contoso-keys");
    }

    #[test]
    fn bad_identifiers_name_the_field_and_the_fix() {
        let cases = [
            ("http://contoso-keys.vault.azure.net/keys/cmk", "keyIdentifier"),
            ("https://contoso-keys.vault.azure.cn/keys/cmk", "keyIdentifier"),
            ("https://contoso-keys.vault.azure.net/keys/", "keyIdentifier"),
            ("https://contoso-keys.vault.azure.net/secrets/cmk", "keyIdentifier"),
            ("https://other-vault.vault.azure.net/keys/cmk", "keyVaultName"),
            ("not a url", "keyIdentifier"),
        ];
        for (kid, field) in cases {
            let e = shape(fields(kid)).unwrap_err();
            assert_eq!(e.status, 400, "{kid}");
            assert_eq!(e.error_code, "INVALID_ATTRIBUTE", "{kid}");
            assert_eq!(field_of(&e), field, "{kid}: {}", e.detail);
        }
        let e = shape(fields("https://contoso-keys.vault.azure.cn/keys/cmk")).unwrap_err();
        assert!(e.detail.contains("AZURE_CHINA"), "{}", e.detail);
    }

    #[test]
    fn missing_and_malformed_fields() {
        let mut f = fields("https://contoso-keys.vault.azure.net/keys/cmk");
        f.subscription_id = None;
        assert_eq!(shape(f).unwrap_err().error_code, "MISSING_ATTRIBUTE");
        f.subscription_id = Some("not-a-uuid");
        assert_eq!(field_of(&shape(f).unwrap_err()), "subscriptionID");
        f.subscription_id = Some(SUB);
        f.azure_environment = Some("AZURE_MOON");
        assert_eq!(shape(f).unwrap_err().error_code, "INVALID_ENUM_VALUE");
        f.azure_environment = Some("AZURE");
        f.resource_group_name = Some("bad/rg");
        assert_eq!(field_of(&shape(f).unwrap_err()), "resourceGroupName");
        f.resource_group_name = Some("rg.");
        assert_eq!(field_of(&shape(f).unwrap_err()), "resourceGroupName");
        f.resource_group_name = Some("rg");
        f.key_vault_name = Some("x");
        assert_eq!(field_of(&shape(f).unwrap_err()), "keyVaultName");
    }
}
