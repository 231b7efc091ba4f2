//! The node's key hierarchy against a real emulator over real TLS: the platform app (certificate
//! credential) in its own tenant, a customer tenant whose vault grants the platform's service
//! principal exactly the seeds' minimum key permissions (`get`, `encrypt`, `decrypt`) through an
//! access policy, and the embedded SQLCipher engine keyed from the keystore.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use secrecy::SecretString;
use serde_json::json;

use atrest_azure::{
    AzureClient, CertificateCredential, ClientConfig, ClientCredential, ErrorKind, KeyVaultClient, RetryPolicy,
    TransportConfig,
};
use atrest_domain::KeyIdentifier;
use atrest_emulator::scenario::{self, Azure, Customer, VaultAuth};
use atrest_emulator::{Emulator, EmulatorConfig};
use atrest_node::{
    DataKeys, Durability, Encryption, Engine, EngineError, Health, KeyBytes, Keystore, KeystoreError, SqlCipherEngine,
};

const MARKER: &str = "MARKER-7f3a9c-plaintext-must-not-reach-disk";

/// Every log line of this test binary, at trace level (every crate: the node, the azure client,
/// hyper, rustls), kept to grep for key material.
static LOGS: std::sync::LazyLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::LazyLock::new(|| {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = buf.clone();
    let writer = move || LogSink(sink.clone());
    let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(writer).finish();
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber per test binary");
    buf
});

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct World {
    _dir: tempfile::TempDir,
    _emu: Emulator,
    customer: Customer,
    sp: String,
    vault: String,
    vault_id: String,
    kid: KeyIdentifier,
    kv: KeyVaultClient,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(EmulatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("emulator")))
        .await
        .unwrap();
    let transport = TransportConfig::with_override(emu.addr(), emu.ca_pem());
    let http = atrest_azure::Transport::new(&transport).unwrap().http().clone();
    let az = Azure::new(http);
    let platform = scenario::create_platform(&az, &emu.info().bootstrap).await.unwrap();
    let customer = Customer::create(&az, &emu.info().bootstrap, "Contoso").await.unwrap();
    let sp = customer.create_service_principal(&platform.app_id).await.unwrap();
    customer.create_resource_group("rg").await.unwrap();
    let vault = format!("node{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let vault_id = customer.create_vault("rg", &vault, VaultAuth::AccessPolicies, true).await.unwrap();
    // An access-policy vault grants nothing to anyone: the customer's admin gives itself key
    // management first, as `az keyvault set-policy --upn <admin>` would.
    let admin = customer.admin_object_id().await.unwrap();
    customer
        .set_access_policy(
            &vault_id,
            &admin,
            &["get", "list", "create", "update", "delete", "rotate", "encrypt", "decrypt"],
        )
        .await
        .unwrap();
    let kid: KeyIdentifier = customer.create_key(&vault, "cmk", None).await.unwrap().parse().unwrap();
    customer.set_access_policy(&vault_id, &sp, &["get", "encrypt", "decrypt"]).await.unwrap();

    let cert =
        CertificateCredential::from_pem(&platform.cert_pem, &SecretString::from(platform.key_pem.clone())).unwrap();
    let retry = RetryPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_retry_after: Duration::from_secs(1),
        total: Duration::from_secs(3),
        max_attempts: 4,
    };
    let client = AzureClient::new(
        &ClientConfig { transport, retry },
        ClientCredential::certificate(platform.app_id.parse().unwrap(), cert),
    )
    .unwrap();
    let kv = client.key_vault(customer.tenant_id().parse().unwrap());
    World { _dir: dir, _emu: emu, customer, sp, vault, vault_id, kid, kv }
}

fn node_dir(w: &World) -> std::path::PathBuf {
    w._dir.path().join("node-1")
}

fn engine(dir: &Path) -> SqlCipherEngine {
    SqlCipherEngine::new(dir, Encryption::Encrypted, Durability::Normal)
}

/// Every byte under `dir`, file by file.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_restart_and_no_plaintext_on_disk() {
    let logs = LOGS.clone();
    let w = world().await;
    let dir = node_dir(&w);
    assert!(Keystore::load(&dir).unwrap().is_none(), "no keystore before the first start");

    let (store, unlocked) = Keystore::create(&dir, "node-1", &w.kv, &w.kid, 0).await.unwrap();
    assert_eq!(
        store.key_identifier(),
        &w.kid,
        "the versioned key identifier that encrypted the master key is recorded"
    );
    let db = engine(&dir);
    assert_eq!(db.health(), Health::Closed);
    db.open(unlocked.data_keys()).unwrap();
    assert_eq!(db.health(), Health::Serving);
    for i in 0..500 {
        let body = json!({"n": i, "note": MARKER, "pad": "x".repeat(200)}).to_string();
        db.put("orders", &format!("order-{i:04}"), &body).unwrap();
    }
    assert_eq!(db.put("orders", "order-0000", &json!({"note": MARKER, "v": 2}).to_string()).unwrap(), 2);

    // While open (the WAL holds the recent pages) and after close, no file under the node's
    // dir holds the marker, the master key or the data key, raw or in hex.
    let (_, data_key) = unlocked.data_keys().current();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("marker", MARKER.as_bytes().to_vec()),
        ("master key", unlocked.master().expose().to_vec()),
        ("data key", data_key.expose().to_vec()),
        ("master key hex", hex::encode(unlocked.master().expose()).into_bytes()),
        ("data key hex", hex::encode(data_key.expose()).into_bytes()),
    ];
    let check_disk = |when: &str| {
        let all = files(&dir);
        let names: Vec<&str> = all.iter().map(|(n, _)| n.rsplit('/').next().unwrap()).collect();
        assert!(names.contains(&"data.db") && names.contains(&"keystore.json"), "{when}: {names:?}");
        for (name, bytes) in &all {
            for (what, needle) in &secrets {
                assert!(!contains(bytes, needle), "{when}: {what} found in {name}");
            }
        }
        names.len()
    };
    let open_files = check_disk("open");
    assert!(open_files >= 3, "the WAL is on disk while open, and it was grepped");
    db.close().unwrap();
    assert_eq!(db.health(), Health::Closed);
    assert!(matches!(db.get("orders", "order-0001"), Err(EngineError::Closed)), "nothing is served once closed");
    check_disk("closed");

    // Restart: the keystore opens with one decrypt, and the data is all there.
    drop(unlocked);
    let store = Keystore::load(&dir).unwrap().expect("keystore");
    let unlocked = store.unlock(&w.kv).await.unwrap();
    let db = engine(&dir);
    db.open(unlocked.data_keys()).unwrap();
    assert_eq!(db.count("orders").unwrap(), 500);
    let doc = db.get("orders", "order-0000").unwrap().unwrap();
    assert_eq!(doc.version, 2);
    assert!(doc.body.contains(MARKER));
    store.check(&w.kv, &unlocked).await.unwrap();

    // Nor does any log line: the master key travelled to Key Vault's encrypt in base64url, and
    // the client, hyper and rustls logged at trace level throughout.
    let logged = logs.lock().unwrap().clone();
    assert!(logged.len() > 10_000, "the test captured no logs ({} bytes)", logged.len());
    let (_, data_key) = unlocked.data_keys().current();
    let b64 = |k: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k).into_bytes();
    for (what, needle) in [
        ("marker", MARKER.as_bytes().to_vec()),
        ("master key", unlocked.master().expose().to_vec()),
        ("master key hex", hex::encode(unlocked.master().expose()).into_bytes()),
        ("master key base64url", b64(unlocked.master().expose())),
        ("data key", data_key.expose().to_vec()),
        ("data key hex", hex::encode(data_key.expose()).into_bytes()),
        ("data key base64url", b64(data_key.expose())),
    ] {
        assert!(!contains(&logged, &needle), "{what} found in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_never_opens_the_data() {
    let w = world().await;
    let dir = node_dir(&w);
    let (_, unlocked) = Keystore::create(&dir, "node-1", &w.kv, &w.kid, 0).await.unwrap();
    let db = engine(&dir);
    db.open(unlocked.data_keys()).unwrap();
    db.put("c", "a", "{}").unwrap();
    db.close().unwrap();

    let other = engine(&dir);
    let err = other.open(&DataKeys::single(KeyBytes::random().unwrap())).unwrap_err();
    assert!(matches!(err, EngineError::WrongKey { .. }), "{err}");
    assert_eq!(other.health(), Health::Closed);
    // Nothing was lost by the failed open.
    db.open(unlocked.data_keys()).unwrap();
    assert!(db.get("c", "a").unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_grant_fails_checks_and_starts_as_denied() {
    let w = world().await;
    let dir = node_dir(&w);
    let (store, unlocked) = Keystore::create(&dir, "node-1", &w.kv, &w.kid, 0).await.unwrap();
    store.check(&w.kv, &unlocked).await.unwrap();

    // `az keyvault delete-policy --name <vault> --object-id <sp>`.
    w.customer.remove_access_policy(&w.vault_id, &w.sp).await.unwrap();
    let err = store.check(&w.kv, &unlocked).await.unwrap_err();
    match &err {
        KeystoreError::KeyVault(e) => assert_eq!(e.kind(), ErrorKind::Denied, "{e}"),
        other => panic!("expected a Key Vault denial, got {other}"),
    }
    let err = Keystore::load(&dir).unwrap().unwrap().unlock(&w.kv).await.unwrap_err();
    assert!(matches!(&err, KeystoreError::KeyVault(e) if e.kind() == ErrorKind::Denied), "{err}");
    // The denial changed nothing on disk: restoring the grant restores access.
    w.customer.set_access_policy(&w.vault_id, &w.sp, &["get", "encrypt", "decrypt"]).await.unwrap();
    let back = Keystore::load(&dir).unwrap().unwrap().unlock(&w.kv).await.unwrap();
    assert!(back.master().ct_eq(unlocked.master()));

    // A disabled key is a denial of another kind: the key cannot be used.
    let version = w.kid.version().unwrap().to_string();
    w.customer.update_key(&w.vault, "cmk", &version, json!({"attributes": {"enabled": false}})).await.unwrap();
    let err = store.check(&w.kv, &unlocked).await.unwrap_err();
    assert!(matches!(&err, KeystoreError::KeyVault(e) if e.kind() == ErrorKind::Disabled), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_key_rotation_rewraps_only_and_the_old_version_can_then_be_disabled() {
    let w = world().await;
    let dir = node_dir(&w);
    let (mut store, unlocked) = Keystore::create(&dir, "node-1", &w.kv, &w.kid, 0).await.unwrap();
    let db = engine(&dir);
    db.open(unlocked.data_keys()).unwrap();
    db.put("c", "before", "{\"a\":1}").unwrap();
    let db_before = std::fs::metadata(dir.join("data.db")).unwrap().len();

    // A new version of the same key (`az keyvault key rotate`), then the node re-wraps.
    let new_kid: KeyIdentifier = w.customer.create_key(&w.vault, "cmk", None).await.unwrap().parse().unwrap();
    assert_ne!(new_kid, w.kid);
    store.rewrap(&w.kv, &unlocked, &new_kid.unversioned()).await.unwrap();
    assert_eq!(store.key_identifier(), &new_kid, "an unversioned id records the version Key Vault used");
    assert_eq!(Keystore::load(&dir).unwrap().unwrap().key_identifier(), &new_kid, "durable");
    assert_eq!(std::fs::metadata(dir.join("data.db")).unwrap().len(), db_before, "no page was rewritten");
    assert!(!dir.join("keystore.json.tmp").exists());

    // The old version disabled: the node still starts and reads everything.
    let old = w.kid.version().unwrap().to_string();
    w.customer.update_key(&w.vault, "cmk", &old, json!({"attributes": {"enabled": false}})).await.unwrap();
    db.close().unwrap();
    let unlocked = Keystore::load(&dir).unwrap().unwrap().unlock(&w.kv).await.unwrap();
    db.open(unlocked.data_keys()).unwrap();
    assert_eq!(db.get("c", "before").unwrap().unwrap().body, "{\"a\":1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_key_rotation_reseals_data_keys_without_touching_pages() {
    let w = world().await;
    let dir = node_dir(&w);
    let (mut store, mut unlocked) = Keystore::create(&dir, "node-1", &w.kv, &w.kid, 0).await.unwrap();
    let db = engine(&dir);
    db.open(unlocked.data_keys()).unwrap();
    db.put("c", "x", "{}").unwrap();
    db.close().unwrap();
    let pages = std::fs::read(dir.join("data.db")).unwrap();
    let old_master = KeyBytes::from_slice(unlocked.master().expose()).unwrap();

    store.rotate_master(&w.kv, &mut unlocked, 1).await.unwrap();
    assert_eq!(store.generation(), 2);
    assert!(!unlocked.master().ct_eq(&old_master), "a new master key");
    assert_eq!(std::fs::read(dir.join("data.db")).unwrap(), pages, "no page rewritten");

    let reopened = Keystore::load(&dir).unwrap().unwrap();
    assert_eq!(reopened.generation(), 2);
    // The request it carried out is recorded with the new master key, in the same write.
    assert_eq!(reopened.rotation_nonce(), 1);
    let again = reopened.unlock(&w.kv).await.unwrap();
    assert!(again.master().ct_eq(unlocked.master()));
    db.open(again.data_keys()).unwrap();
    assert!(db.get("c", "x").unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_foreign_keystore_is_refused_with_a_reason() {
    let w = world().await;
    let dir = node_dir(&w);
    let (_, _) = Keystore::create(&dir, "node-1", &w.kv, &w.kid, 0).await.unwrap();
    let path = Keystore::path_in(&dir);
    let original = std::fs::read_to_string(&path).unwrap();

    // Another node's identity on this node's sealed data keys: the AAD no longer matches.
    std::fs::write(&path, original.replace("\"node-1\"", "\"node-2\"")).unwrap();
    let err = Keystore::load(&dir).unwrap().unwrap().unlock(&w.kv).await.unwrap_err();
    assert!(matches!(err, KeystoreError::WrongKey { .. }), "{err}");

    // Not JSON, an unknown format, an unversioned key id: refused at load, naming the file.
    for (bad, needle) in [
        ("{not json".to_string(), "unreadable"),
        (original.replace("\"format\": 1", "\"format\": 9"), "format 9"),
        (original.replace(&format!("/{}\"", w.kid.version().unwrap()), "\""), "no version"),
    ] {
        std::fs::write(&path, &bad).unwrap();
        let err = Keystore::load(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(needle) && msg.contains("keystore.json"), "{msg}");
    }
    std::fs::write(&path, &original).unwrap();
    assert!(Keystore::load(&dir).unwrap().unwrap().unlock(&w.kv).await.is_ok(), "the original still opens");
}
