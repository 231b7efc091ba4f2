//! Test support shared by the emulator's integration tests: start a real emulator on
//! 127.0.0.1:0 in a temp dir, and an HTTPS client that maps every Azure host name to it and
//! trusts its CA, so tests speak to `https://login.microsoftonline.com/...` like a real client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use atrest_emulator::{Emulator, EmulatorConfig};

pub struct TestEmu {
    pub emu: Emulator,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

/// Resolves every name to the emulator's address (port included: hyper keeps a resolver's
/// port when the URL has none).
struct ToEmulator(SocketAddr);

impl reqwest::dns::Resolve for ToEmulator {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = self.0;
        Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs) })
    }
}

pub fn client_for(addr: SocketAddr, ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .dns_resolver(Arc::new(ToEmulator(addr)))
        .build()
        .unwrap()
}

/// Like [`client_for`], over HTTP/1.1 only, so that a `Host` header set on a request is the
/// host the server routes by (over HTTP/2 the URL's authority would be).
pub fn http1_client_for(addr: SocketAddr, ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .dns_resolver(Arc::new(ToEmulator(addr)))
        .http1_only()
        .build()
        .unwrap()
}

impl TestEmu {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        let emu = Emulator::start(EmulatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path())).await.unwrap();
        let http = client_for(emu.addr(), &emu.ca_pem());
        Self { emu, http, dir }
    }

    /// Stop and start again on the same data dir (state must survive).
    pub async fn restart(self) -> Self {
        let TestEmu { emu, dir, .. } = self;
        emu.shutdown().await;
        Self::start_in(dir).await
    }

    pub fn bootstrap(&self) -> &atrest_emulator::PrincipalInfo {
        &self.emu.info().bootstrap
    }

    /// Mint a token for the service principal `sp_object_id` directly with the emulator's
    /// signing key (for tests of one surface that should not depend on the token endpoint).
    pub fn mint(&self, sp_object_id: &str, audience: &str) -> String {
        let ctx = self.emu.ctx();
        let sp = ctx
            .read(|s| s.service_principals.get(&sp_object_id.parse().unwrap()).cloned())
            .expect("service principal exists");
        atrest_emulator::tokens::issue_access_token(ctx, &sp, audience, "2").0
    }

    /// The object id of the bootstrap principal's service principal.
    pub fn bootstrap_sp(&self) -> String {
        let b = self.bootstrap().clone();
        self.emu.ctx().read(|s| {
            s.sp_in_tenant(b.client_id.parse().unwrap(), b.tenant_id.parse().unwrap()).unwrap().object_id.to_string()
        })
    }

    /// A token for the bootstrap principal for `audience`.
    pub fn bootstrap_token(&self, audience: &str) -> String {
        self.mint(&self.bootstrap_sp(), audience)
    }
}
