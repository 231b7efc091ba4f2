//! The subset of HashiCorp Vault's KV v2 API that MariaDB's `hashicorp_key_management` plugin
//! reads its keys from (`shared/reference/data-nodes.md` §1, §1b), served by the node on loopback
//! over TLS, from memory.
//!
//! - `GET /v1/sys/mounts/<mount>/tune` → `{"options":{"version":"2"}}` (the plugin's start check);
//! - `GET /v1/<mount>/data/<key id>[?version=<n>]` → the key as 64 hex characters in
//!   `data.data.data` and its version in `data.metadata.version`.
//!
//! **Keys.** A MariaDB key (id, version) is derived, never stored: version `2·g` belongs to the
//! node's data key `g`, and its bytes are HKDF-SHA256 of that data key with the key id in the
//! info (the data keys are random per node, so no two nodes share a MariaDB key). So every key id exists as soon as it is asked for, and every version the node ever had
//! stays answerable (the redo log asks for its creation version at every start, and a 404 there
//! aborts mariadbd). Versions are `2·g`, not `g`, because InnoDB re-encrypts a page only when
//! its version plus `innodb_encryption_rotate_key_age` (at least 1; 0 turns rotation off) is
//! below the latest: with even versions and an age of 1, one data-key rotation re-encrypts
//! everything. Odd versions do not exist (404), and the plugin never asks for one it was not
//! given.
//!
//! **Never an HTTP error to mariadbd.** A 403 or 5xx answered to a running server makes it abort
//! at its next page flush (§1b); closing the connection is safe. So a request with the node's
//! token is always answered with its key or a 404 for a version that never existed, and the
//! server simply stops listening when the node drops its keys (after mariadbd has stopped). Only
//! a caller without the token gets Vault's `403 {"errors":["permission denied"]}`.
//!
//! Written on hyper directly rather than axum: six lines of routing, and each plugin request is
//! a new TLS connection, answered without any middleware.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::RwLock;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::keystore::DataKeys;
use crate::secret::KeyBytes;

/// The KV v2 mount the plugin's URL names.
pub const MOUNT: &str = "atrest";

/// HKDF salt of the MariaDB root keys (a label: HKDF's salt need not be secret).
const ROOT_SALT: &[u8] = b"atrest mariadb key v1";

/// The MariaDB version of data key `g`.
pub fn version_of(generation: u32) -> u64 {
    2 * u64::from(generation)
}

/// What the key server holds: per data key, its MariaDB root key (derived, in memory only).
struct Keys {
    roots: BTreeMap<u32, KeyBytes>,
    current: u32,
}

impl Keys {
    fn derive(keys: &DataKeys) -> Keys {
        let salt = Salt::new(HKDF_SHA256, ROOT_SALT);
        let roots = keys
            .ids()
            .map(|g| {
                let data = keys.get(g).expect("ids() lists present keys");
                (g, hkdf(&salt, data.expose(), &[b"root"]))
            })
            .collect();
        Keys { roots, current: keys.current().0 }
    }

    /// The key (id, version) as 64 hex characters, if that version exists.
    fn hex(&self, key_id: u32, version: u64) -> Option<Zeroizing<String>> {
        if !version.is_multiple_of(2) {
            return None;
        }
        let root = self.roots.get(&u32::try_from(version / 2).ok()?)?;
        let salt = Salt::new(HKDF_SHA256, ROOT_SALT);
        let key = hkdf(&salt, root.expose(), &[b"key id\0", key_id.to_string().as_bytes()]);
        Some(Zeroizing::new(hex::encode(key.expose())))
    }
}

struct Len32;
impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn hkdf(salt: &Salt, ikm: &[u8], info: &[&[u8]]) -> KeyBytes {
    let mut out = Zeroizing::new([0u8; 32]);
    salt.extract(ikm).expand(info, Len32).and_then(|okm| okm.fill(&mut out[..])).expect("HKDF-SHA256 of 32 bytes");
    KeyBytes::from_slice(&out[..]).expect("32 bytes")
}

/// A running key server. Dropping it (or [`KeyServer::stop`]) stops listening and zeroizes the
/// keys.
pub struct KeyServer {
    addr: SocketAddr,
    ca_pem: String,
    keys: Arc<RwLock<Option<Keys>>>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set on stop: the accept loop ends and every open connection closes.
    stopped: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for KeyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// The per-node token the plugin sends as `X-Vault-Token`, compared in constant time.
#[derive(Clone)]
pub struct Token(Arc<Zeroizing<String>>);

impl Token {
    /// 32 random bytes as hex.
    pub fn random() -> Token {
        let k = KeyBytes::random().expect("the OS random generator");
        Token(Arc::new(Zeroizing::new(hex::encode(k.expose()))))
    }

    /// The token, for the plugin's environment. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(self.0.as_bytes(), presented).is_ok()
    }
}

impl KeyServer {
    /// Listens on `127.0.0.1:0` with a fresh CA and certificate (for `127.0.0.1`), serving keys
    /// derived from `keys` to callers presenting `token`.
    ///
    /// It runs on a thread and runtime of its own: mariadbd must never wait for a key (a stalled
    /// lookup blocks its statements for 4 × 15 s, §1b), whatever the node's own runtime is busy
    /// with; and the node calls [`crate::Engine::open`] from an async task, where a task spawned
    /// on the node's runtime could sit behind the very thread that waits for mariadbd to start.
    pub fn start(keys: &DataKeys, token: Token) -> std::io::Result<KeyServer> {
        let (ca_pem, tls) = tls_config().map_err(|e| std::io::Error::other(format!("key server TLS: {e}")))?;
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let keys = Arc::new(RwLock::new(Some(Keys::derive(keys))));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let served = keys.clone();
        let (stopped, _) = tokio::sync::watch::channel(false);
        let on_stop = stopped.clone();
        let mut stop_accepting = stopped.subscribe();
        let serve = async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop_accepting.wait_for(|s| *s) => return Ok::<(), std::io::Error>(()),
                };
                let Ok((tcp, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (acceptor, keys, token) = (acceptor.clone(), served.clone(), token.clone());
                let mut stop = on_stop.subscribe();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let (keys, token) = (keys.clone(), token.clone());
                        async move { answer(&req, &keys, &token) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
                    // Dropping the connection closes it: what a stop does to a kept-alive one.
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
        };
        let thread = std::thread::Builder::new().name("mariadb-key-server".into()).spawn(move || {
            if let Err(e) = runtime.block_on(serve) {
                tracing::error!(error = %e, "the MariaDB key server stopped");
            }
            // Dropping the runtime drops every connection still open.
        })?;
        Ok(KeyServer { addr, ca_pem, keys, thread: parking_lot::Mutex::new(Some(thread)), stopped })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The plugin's `vault-url`.
    pub fn vault_url(&self) -> String {
        format!("https://{}/v1/{MOUNT}", self.addr)
    }

    /// The CA certificate (PEM) the plugin's `vault-ca` must name.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Stops listening and drops the keys. Call only once mariadbd has stopped: to a running
    /// mariadbd a refused connection is safe, but it may still need a key it has not cached.
    pub fn stop(&self) {
        *self.keys.write() = None;
        self.stopped.send_replace(true);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a static response")
}

/// The keys were dropped while a connection was open: hyper closes it without an answer, which
/// is what a mariadbd can take (an HTTP error it cannot).
#[derive(Debug)]
struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the key server stopped")
    }
}

impl std::error::Error for Closed {}

fn answer(
    req: &Request<Incoming>,
    keys: &RwLock<Option<Keys>>,
    token: &Token,
) -> Result<Response<Full<Bytes>>, Closed> {
    let presented = req.headers().get("x-vault-token").map(|v| v.as_bytes()).unwrap_or_default();
    if req.method() != hyper::Method::GET || !token.matches(presented) {
        // What Vault answers a missing or wrong token (and, for simplicity, a non-GET).
        return Ok(json(StatusCode::FORBIDDEN, r#"{"errors":["permission denied"]}"#.into()));
    }
    let not_found = || Ok(json(StatusCode::NOT_FOUND, r#"{"errors":[]}"#.into()));
    let guard = keys.read();
    let Some(keys) = guard.as_ref() else { return Err(Closed) };
    let path = req.uri().path();
    if path == format!("/v1/sys/mounts/{MOUNT}/tune") {
        return Ok(json(StatusCode::OK, r#"{"options":{"version":"2"},"type":"kv"}"#.into()));
    }
    let Some(id) = path.strip_prefix(&format!("/v1/{MOUNT}/data/")) else { return not_found() };
    let Ok(key_id) = id.parse::<u32>() else { return not_found() };
    let asked = req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| kv.strip_prefix("version=")).map(|v| v.parse::<u64>().unwrap_or(u64::MAX))
    });
    let version = asked.unwrap_or(version_of(keys.current));
    let Some(hex) = keys.hex(key_id, version) else { return not_found() };
    // Built by hand, never in a serde_json::Value. The buffer hyper sends from is the one copy
    // of the key that is freed without being zeroized (hyper's body types do not zeroize).
    let body = Zeroizing::new(format!(
        r#"{{"data":{{"data":{{"data":"{}"}},"metadata":{{"version":{version},"destroyed":false,"deletion_time":""}}}}}}"#,
        hex.as_str()
    ));
    Ok(json(StatusCode::OK, body.as_str().to_owned()))
}

/// A fresh CA and a certificate for 127.0.0.1 signed by it (the plugin checks both the chain and
/// the host). Nothing of it is written but the CA certificate, which is public.
fn tls_config() -> Result<(String, Arc<rustls::ServerConfig>), Box<dyn std::error::Error + Send + Sync>> {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "atrest node key server CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    ca.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert.pem(), &ca_key)?;
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name.push(DnType::CommonName, "atrest node key server");
    leaf.subject_alt_names = vec![SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))];
    leaf.not_before = ca.not_before;
    leaf.not_after = ca.not_after;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    let chain = vec![CertificateDer::from(leaf_cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok((ca_cert.pem(), Arc::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ca_pem: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    async fn get(c: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut rb = c.get(url);
        if let Some(t) = token {
            rb = rb.header("X-Vault-Token", t);
        }
        let r = rb.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn serves_the_plugins_kv_v2_subset_to_the_token_holder_only() {
        let mut keys = DataKeys::single(KeyBytes::random().unwrap());
        let token = Token::random();
        let server = KeyServer::start(&keys, token.clone()).unwrap();
        let c = client(server.ca_pem());
        let base = server.vault_url();
        let root = format!("https://{}", server.addr());
        let t = Some(token.expose());

        let (s, v) = get(&c, &format!("{root}/v1/sys/mounts/{MOUNT}/tune"), t).await;
        assert_eq!((s, v["options"]["version"].as_str()), (200, Some("2")), "{v}");
        let (s, latest) = get(&c, &format!("{base}/data/1"), t).await;
        assert_eq!((s, latest["data"]["metadata"]["version"].as_u64()), (200, Some(2)), "{latest}");
        let hex1 = latest["data"]["data"]["data"].as_str().unwrap().to_string();
        assert_eq!(hex1.len(), 64);
        assert!(hex1.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!hex1.contains(&hex::encode(keys.current().1.expose())), "the data key itself is not served");
        // The same version asked for explicitly is the same key; another key id is another key.
        let (_, same) = get(&c, &format!("{base}/data/1?version=2"), t).await;
        assert_eq!(same["data"]["data"]["data"], hex1.as_str());
        let (s, other) = get(&c, &format!("{base}/data/7"), t).await;
        assert_eq!(s, 200);
        assert_ne!(other["data"]["data"]["data"], hex1.as_str());
        // Versions that never existed are Vault's 404, never another error.
        for v in ["1", "3", "4", "0", "x"] {
            let (s, body) = get(&c, &format!("{base}/data/1?version={v}"), t).await;
            assert_eq!((s, &body), (404, &serde_json::json!({"errors": []})), "version {v}");
        }
        for path in ["/v1/atrest/data/x", "/v1/other/data/1", "/v1/atrest/metadata/1"] {
            assert_eq!(get(&c, &format!("{root}{path}"), t).await.0, 404, "{path}");
        }
        // Without the token, or with another, Vault's 403.
        for wrong in [None, Some("nope"), Some(&token.expose()[1..])] {
            let (s, body) = get(&c, &format!("{base}/data/1"), wrong).await;
            assert_eq!((s, &body), (403, &serde_json::json!({"errors": ["permission denied"]})));
        }
        // The same data key on another server (after a restart) gives the same MariaDB keys;
        // another data key does not.
        let again = KeyServer::start(&keys, token.clone()).unwrap();
        let (_, v) = get(&client(again.ca_pem()), &format!("{}/data/1", again.vault_url()), t).await;
        assert_eq!(v["data"]["data"]["data"], hex1.as_str());
        keys = DataKeys::single(KeyBytes::random().unwrap());
        let rekeyed = KeyServer::start(&keys, token.clone()).unwrap();
        let (_, v) = get(&client(rekeyed.ca_pem()), &format!("{}/data/1", rekeyed.vault_url()), t).await;
        assert_ne!(v["data"]["data"]["data"], hex1.as_str());

        // Stopped: connections are refused (never an HTTP error to a running mariadbd).
        let addr = server.addr();
        server.stop();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(c.get(format!("{base}/data/1")).header("X-Vault-Token", token.expose()).send().await.is_err());
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening");
    }
}
