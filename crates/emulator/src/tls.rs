//! The emulator's certificate authority and server certificate.
//!
//! The CA key persists in `DIR/ca-key.pem` (0600) so `DIR/ca.pem` stays valid across restarts;
//! the server certificate is re-issued at each start. The CA satisfies Python 3.13's
//! `VERIFY_X509_STRICT` (critical basicConstraints CA:TRUE, keyUsage, SKI and AKI), which
//! azure-cli and MSAL need (azure-cli issues #32083, #32206, #33716).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use atrest_domain::AzureEnvironment;

pub struct Ca {
    pub ca_pem: String,
    ca_key: KeyPair,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "atrest emulator");
    dn.push(DnType::CommonName, "atrest emulator local CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    p
}

impl Ca {
    /// Load the CA from `dir`, or create it on first start.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let key_path = dir.join("ca-key.pem");
        let cert_path = dir.join("ca.pem");
        if key_path.exists() && cert_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).context("reading ca-key.pem")?;
            let ca_key = KeyPair::from_pem(&key_pem).context("parsing ca-key.pem")?;
            let ca_pem = std::fs::read_to_string(&cert_path).context("reading ca.pem")?;
            return Ok(Self { ca_pem, ca_key });
        }
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = ca_params().self_signed(&ca_key)?;
        crate::persist::write_private(&key_path, ca_key.serialize_pem().as_bytes())?;
        crate::persist::write_public(&cert_path, cert.pem().as_bytes())?;
        Ok(Self { ca_pem: cert.pem(), ca_key })
    }

    /// Issue a server certificate for every Azure host name the emulator serves.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &self.ca_key)?;
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "atrest emulator");
        p.distinguished_name = dn;
        let mut sans: Vec<SanType> = Vec::new();
        for h in AzureEnvironment::all_fixed_hosts() {
            sans.push(SanType::DnsName(h.try_into()?));
        }
        for env in AzureEnvironment::ALL {
            sans.push(SanType::DnsName(format!("*.{}", env.vault_dns_suffix()).try_into()?));
        }
        sans.push(SanType::DnsName("localhost".try_into()?));
        sans.push(SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)));
        sans.push(SanType::IpAddress(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)));
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        let leaf = p.signed_by(&leaf_key, &issuer)?;
        let chain = vec![CertificateDer::from(leaf.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut cfg =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}
