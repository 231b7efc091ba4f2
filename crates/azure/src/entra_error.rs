//! Entra ID token-endpoint errors: the AADSTS JSON, its class, and the fix.
//!
//! Entra answers a refused token request with `{"error", "error_description", "error_codes",
//! "trace_id", "correlation_id", ...}` (`shared/reference/azure-protocols.md` §1.4). The numeric
//! AADSTS code says what went wrong far more exactly than the HTTP status, so it decides both the
//! [`ErrorKind`] and the remediation. The remediations name the exact `az` command, because the
//! person reading them is usually the customer's admin, not an Azure expert.

use serde::Deserialize;

use atrest_domain::{AzureEnvironment, AzureUuid};

use crate::error::{Error, ErrorKind, Service, kind_for_status};

/// The fields of an Entra error body this client uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct EntraErrorBody {
    #[serde(default)]
    /// The OAuth error (`invalid_client`, `unauthorized_client`, ...).
    pub error: String,
    #[serde(default)]
    /// `AADSTS<code>: <message>`, then trace lines.
    pub error_description: String,
    #[serde(default)]
    /// The AADSTS codes; the first is the one that matters.
    pub error_codes: Vec<u32>,
    #[serde(default)]
    /// Entra's trace id, for a support request.
    pub trace_id: Option<String>,
    #[serde(default)]
    /// Entra's correlation id, for a support request.
    pub correlation_id: Option<String>,
}

impl EntraErrorBody {
    /// The AADSTS code: the first of `error_codes`, else the `AADSTS<n>` at the start of the
    /// description (some proxies drop the array).
    pub fn code(&self) -> Option<u32> {
        if let Some(c) = self.error_codes.first() {
            return Some(*c);
        }
        let rest = self.error_description.split("AADSTS").nth(1)?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    }

    /// The first line of the description: Entra appends trace and correlation ids and a
    /// timestamp on further lines, which belong in the fields, not in the message.
    pub fn summary(&self) -> &str {
        self.error_description.split(['\r', '\n']).next().unwrap_or_default().trim()
    }
}

/// What the request was, so a remediation can name the app, tenant and scope.
#[derive(Debug, Clone)]
pub(crate) struct RequestContext<'a> {
    pub environment: AzureEnvironment,
    pub tenant: &'a str,
    pub client_id: &'a AzureUuid,
    pub scope: &'a str,
    /// `iss`/`sub` of the federated assertion, when one was sent.
    pub federated: Option<&'a (String, String)>,
}

/// The class of an AADSTS code; `None` when the code alone does not say.
pub fn kind_for_code(code: u32) -> Option<ErrorKind> {
    Some(match code {
        // The platform's identity was refused in this tenant: no SP, SP disabled, credential
        // not accepted. The customer (or the platform's own app registration) must act.
        700016 | 7000112 | 7000215 | 7000222 | 700027 | 70021 | 700211 | 700212 | 700213 | 7002121 | 700222
        | 700226 | 700229 | 50012 => ErrorKind::Denied,
        // The request names something that does not exist or is malformed, or our clock is off.
        90002 | 90038 | 70011 | 700022 | 700023 | 500011 | 50027 | 700024 | 7000218 | 900144 | 900023 => {
            ErrorKind::Misconfigured
        }
        50196 => ErrorKind::Throttled,
        90033 | 50001 => ErrorKind::Unreachable,
        _ => return None,
    })
}

/// The fix for an AADSTS code, when one is known.
pub(crate) fn remediation(code: u32, ctx: &RequestContext<'_>) -> Option<String> {
    let app = ctx.client_id;
    let tenant = ctx.tenant;
    Some(match code {
        700016 => format!(
            "the platform app {app} has no service principal in tenant {tenant}. An administrator of tenant {tenant} must run `az ad sp create --id {app}` in tenant {tenant} (after `az login --tenant {tenant}`), then grant that service principal access to the key"
        ),
        90002 => format!(
            "tenant {tenant} does not exist in {}: check the tenant id, and that azureEnvironment names the cloud the tenant lives in",
            ctx.environment
        ),
        90038 => format!(
            "tenant {tenant} belongs to a national cloud: set azureEnvironment to that cloud instead of {}",
            ctx.environment
        ),
        7000215 | 7000222 => format!(
            "the client secret of app {app} is wrong or expired: create a new one with `az ad app credential reset --id {app} --append` and update the stored credentials"
        ),
        700027 => format!(
            "the certificate that signed the client assertion is not registered on app {app}: in the app's home tenant run `az ad app credential reset --id {app} --cert @cert.pem --append` with the platform's certificate"
        ),
        700024 => "the client assertion is outside its validity time: check this host's clock (NTP); assertions are valid from now for 10 minutes".to_string(),
        70021 | 700211 | 700212 | 700213 | 7002121 => {
            let (iss, sub) = ctx
                .federated
                .map(|(i, s)| (i.as_str(), s.as_str()))
                .unwrap_or(("<issuer of the federated token>", "<subject of the federated token>"));
            format!(
                "no federated identity credential of app {app} matches the presented token: in the app's home tenant run `az ad app federated-credential create --id {app} --parameters '{{\"name\":\"atrest\",\"issuer\":\"{iss}\",\"subject\":\"{sub}\",\"audiences\":[\"{}\"]}}'` (a new credential can take a minute to propagate)",
                ctx.environment.fic_audience()
            )
        }
        7000112 => format!(
            "the service principal of app {app} in tenant {tenant} is disabled: an administrator of tenant {tenant} must run `az ad sp update --id {app} --set accountEnabled=true`"
        ),
        70011 | 700022 | 700023 => format!(
            "the scope '{}' is not valid: request exactly one resource as '<resource>/.default' (for Key Vault in {}: {}/.default)",
            ctx.scope,
            ctx.environment,
            ctx.environment.vault_resource()
        ),
        500011 => format!(
            "the resource in scope '{}' is not known in tenant {tenant}: check that azureEnvironment ({}) is the tenant's cloud",
            ctx.scope, ctx.environment
        ),
        _ => return None,
    })
}

/// Build the error for a non-success answer from the token endpoint.
pub(crate) fn error_from_response(status: u16, body: &[u8], ctx: &RequestContext<'_>) -> Error {
    let parsed: Option<EntraErrorBody> = serde_json::from_slice(body).ok();
    let Some(parsed) = parsed.filter(|b| !b.error.is_empty() || b.code().is_some()) else {
        let kind = kind_for_status(status);
        return Error::new(
            kind,
            Service::Entra,
            format!("the token endpoint answered HTTP {status} without an Entra error body"),
        )
        .with_status(status);
    };
    let code = parsed.code();
    let kind = match (status, code.and_then(kind_for_code)) {
        // Transport-level statuses win over whatever the body says.
        (429, _) => ErrorKind::Throttled,
        (500..=599, _) => ErrorKind::Unreachable,
        (_, Some(k)) => k,
        _ => match parsed.error.as_str() {
            "invalid_client" | "unauthorized_client" | "access_denied" => ErrorKind::Denied,
            "temporarily_unavailable" => ErrorKind::Unreachable,
            _ => kind_for_status(status),
        },
    };
    let mut message = parsed.summary().to_string();
    if message.is_empty() {
        message = parsed.error.clone();
    }
    if let Some(id) = &parsed.correlation_id {
        message.push_str(&format!(" (correlation id {id})"));
    }
    let mut err = Error::new(kind, Service::Entra, message).with_status(status);
    if let Some(code) = code {
        err = err.with_code(format!("AADSTS{code}")).with_aadsts(code);
        if let Some(r) = remediation(code, ctx) {
            err = err.with_remediation(r);
        }
    } else if !parsed.error.is_empty() {
        err = err.with_code(parsed.error.clone());
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "6731de76-14a6-49ae-97bc-6eba6914391e";
    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    fn ctx(client: &AzureUuid) -> RequestContext<'_> {
        RequestContext {
            environment: AzureEnvironment::Azure,
            tenant: TENANT,
            client_id: client,
            scope: "https://vault.azure.net/.default",
            federated: None,
        }
    }

    fn body(error: &str, code: u32, text: &str) -> Vec<u8> {
        serde_json::json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: t\r\nCorrelation ID: c-1\r\nTimestamp: 2024-01-01 00:00:00Z"),
            "error_codes": [code],
            "trace_id": "t",
            "correlation_id": "c-1",
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn missing_service_principal_names_the_exact_command() {
        let client: AzureUuid = APP.parse().unwrap();
        // The recorded body (shared/reference/azure-examples/entra_token_error_700016.json).
        let example = r#"{"error":"unauthorized_client","error_description":"AADSTS700016: Application with identifier '11111111-2222-3333-4444-555555555555' was not found in the directory 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.\r\nTrace ID: 0000aaaa-11bb-cccc-dd22-eeeeee333333\r\nCorrelation ID: aaaa0000-bb11-2222-33cc-444444dddddd\r\nTimestamp: 2024-01-01 00:00:00Z","error_codes":[700016],"timestamp":"2024-01-01 00:00:00Z","trace_id":"0000aaaa-11bb-cccc-dd22-eeeeee333333","correlation_id":"aaaa0000-bb11-2222-33cc-444444dddddd","error_uri":"https://login.microsoftonline.com/error?code=700016"}"#;
        let e = error_from_response(400, example.as_bytes(), &ctx(&client));
        assert_eq!(e.kind(), ErrorKind::Denied);
        assert_eq!(e.aadsts_code(), Some(700016));
        assert_eq!(e.code(), Some("AADSTS700016"));
        let r = e.remediation().unwrap();
        assert!(r.contains(&format!("`az ad sp create --id {APP}` in tenant {TENANT}")), "{r}");
        assert!(!e.message().contains("Trace ID"), "{}", e.message());
    }

    #[test]
    fn each_known_code_gets_its_class_and_fix() {
        let client: AzureUuid = APP.parse().unwrap();
        let cases: &[(u32, &str, ErrorKind, &str)] = &[
            (90002, "invalid_request", ErrorKind::Misconfigured, "does not exist"),
            (7000215, "invalid_client", ErrorKind::Denied, "az ad app credential reset --id"),
            (700027, "invalid_client", ErrorKind::Denied, "--cert @cert.pem --append"),
            (700024, "invalid_client", ErrorKind::Misconfigured, "clock"),
            (70021, "invalid_client", ErrorKind::Denied, "az ad app federated-credential create --id"),
            (700211, "invalid_client", ErrorKind::Denied, "api://AzureADTokenExchange"),
            (700213, "invalid_client", ErrorKind::Denied, "federated identity credential"),
            (7000112, "unauthorized_client", ErrorKind::Denied, "--set accountEnabled=true"),
            (70011, "invalid_scope", ErrorKind::Misconfigured, "https://vault.azure.net/.default"),
        ];
        for (code, error, kind, fix) in cases {
            let e = error_from_response(400, &body(error, *code, "text"), &ctx(&client));
            assert_eq!(e.kind(), *kind, "{code}");
            assert_eq!(e.aadsts_code(), Some(*code));
            let r = e.remediation().unwrap_or_else(|| panic!("{code} has no remediation"));
            assert!(r.contains(fix), "{code}: {r}");
            assert!(e.message().contains("correlation id c-1"), "{}", e.message());
        }
    }

    #[test]
    fn federated_fix_names_the_presented_issuer_and_subject() {
        let client: AzureUuid = APP.parse().unwrap();
        let fed = ("https://oidc.example/platform".to_string(), "system:serviceaccount:ns:sa".to_string());
        let c = RequestContext { federated: Some(&fed), environment: AzureEnvironment::AzureChina, ..ctx(&client) };
        let e = error_from_response(
            401,
            &body("invalid_client", 700213, "No matching federated identity record found"),
            &c,
        );
        let r = e.remediation().unwrap();
        assert!(r.contains(r#""issuer":"https://oidc.example/platform""#), "{r}");
        assert!(r.contains(r#""subject":"system:serviceaccount:ns:sa""#), "{r}");
        assert!(r.contains("api://AzureADTokenExchangeChina"), "{r}");
    }

    #[test]
    fn status_and_unknown_codes_fall_back_sensibly() {
        let client: AzureUuid = APP.parse().unwrap();
        let c = ctx(&client);
        assert_eq!(
            error_from_response(429, &body("temporarily_unavailable", 50196, "x"), &c).kind(),
            ErrorKind::Throttled
        );
        assert_eq!(
            error_from_response(503, &body("temporarily_unavailable", 90033, "x"), &c).kind(),
            ErrorKind::Unreachable
        );
        let e = error_from_response(401, &body("invalid_client", 999999, "new"), &c);
        assert_eq!((e.kind(), e.remediation()), (ErrorKind::Denied, None));
        let e = error_from_response(502, b"<html>bad gateway</html>", &c);
        assert_eq!((e.kind(), e.status(), e.code()), (ErrorKind::Unreachable, Some(502), None));
        // A description without the array still yields the code.
        let b =
            serde_json::json!({"error": "invalid_request", "error_description": "AADSTS90002: Tenant 'x' not found."});
        let e = error_from_response(400, b.to_string().as_bytes(), &c);
        assert_eq!(e.aadsts_code(), Some(90002));
        assert_eq!(e.message(), "AADSTS90002: Tenant 'x' not found.");
    }
}
