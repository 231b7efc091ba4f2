//! The embedded engine: JSON documents in SQLCipher 4 (AES-256 pages with a per-page HMAC),
//! keyed with the node's current data key as a raw key (`x'…'`: no PBKDF2 at open).
//!
//! SQLCipher works at SQLite's pager, so the database file, its WAL and the WAL index hold only
//! ciphertext page images; temporary tables stay in memory (`temp_store = MEMORY`). The
//! plaintext tests grep every file to confirm it rather than trusting this paragraph.
//!
//! One connection behind a mutex: SQLite serialises writers anyway, and a single connection
//! keeps the key in exactly one place. `close` drops it, and SQLCipher wipes its key context.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use zeroize::Zeroizing;

use super::{Engine, EngineError, Health};
use crate::keystore::DataKeys;

/// The database file's name inside the node's data dir.
pub const DB_FILE: &str = "data.db";

/// Whether pages are encrypted. `Unencrypted` exists for one purpose: the storage-overhead
/// benchmark's baseline, the same code without a key. The node never constructs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    Encrypted,
    Unencrypted,
}

/// SQLite's `synchronous` setting under WAL. `Normal` (the default) survives a crash of the
/// process: a committed transaction is in the WAL before `commit` returns. `Full` also survives
/// a power loss, at an fsync per commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Normal,
    Full,
}

/// A stored document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub id: String,
    /// 1 at creation, +1 per replacement.
    pub version: i64,
    /// Unix milliseconds of the last write.
    pub updated_at_ms: i64,
    /// The JSON text as written.
    pub body: String,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub documents: Vec<Document>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// One operation of an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put { collection: String, id: String, body: String },
    Delete { collection: String, id: String },
}

/// The result of one batch operation, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchResult {
    Put { version: i64 },
    Delete { existed: bool },
}

/// The embedded engine.
pub struct SqlCipherEngine {
    path: PathBuf,
    encryption: Encryption,
    durability: Durability,
    conn: Mutex<Option<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
";

/// The page format of a database.
#[derive(Clone, Copy)]
enum CipherFormat {
    /// [`CURRENT_CIPHER_SETTINGS`]: every database created since.
    Current,
    /// SQLCipher 4's defaults (HMAC-SHA512), which atrest used first; such databases still open.
    Sqlcipher4Defaults,
}

/// SQLCipher 4's defaults (AES-256-CBC pages, a random IV per page write, a per-page HMAC
/// keyed separately from the cipher) except the HMAC's hash: HMAC-SHA256 instead of
/// HMAC-SHA512. Both are full-strength MACs (untruncated 32- and 64-byte tags); SHA-256
/// runs on the CPU's SHA extensions where SHA-512 cannot, which made the page HMAC the largest
/// single cost of a small write (see BENCHMARKS.md, storage overhead). Applied after `PRAGMA
/// key`, before the first read, as SQLCipher requires.
const CURRENT_CIPHER_SETTINGS: &str = "PRAGMA cipher_hmac_algorithm = HMAC_SHA256;";

/// SQLite's page cache per database, in KiB (64 MiB).
const CACHE_KIB: u32 = 64 * 1024;

/// The largest code point, as UTF-8: appended to a prefix it bounds every id that starts with
/// the prefix (ids may not contain noncharacters, so no id reaches it).
const PREFIX_BOUND: char = '\u{10FFFF}';

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn storage(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Storage { what: what.to_string(), detail: e.to_string() }
}

impl SqlCipherEngine {
    /// An engine whose database is `dir/data.db`. Nothing is opened until [`Engine::open`].
    pub fn new(dir: &Path, encryption: Encryption, durability: Durability) -> Self {
        Self { path: dir.join(DB_FILE), encryption, durability, conn: Mutex::new(None) }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(&self, keys: &DataKeys) -> Result<Connection, EngineError> {
        if self.encryption == Encryption::Unencrypted {
            return self.keyed(keys, None);
        }
        let existed = std::fs::metadata(&self.path).is_ok_and(|m| m.len() > 0);
        match self.keyed(keys, Some(CipherFormat::Current)) {
            // A database written before the current format (SQLCipher 4's defaults, HMAC-SHA512)
            // fails page 1's HMAC under the current settings: it opens with its own.
            Err(EngineError::WrongKey { .. }) if existed => {
                let conn = self.keyed(keys, Some(CipherFormat::Sqlcipher4Defaults))?;
                tracing::info!(db = %self.path.display(), "the database uses SQLCipher 4's default page HMAC (HMAC-SHA512); new databases use HMAC-SHA256");
                Ok(conn)
            }
            other => other,
        }
    }

    /// A connection to the database, keyed with the current data key in `format` (`None`: no
    /// key, the benchmark's baseline), with page 1 read to prove the key.
    fn keyed(&self, keys: &DataKeys, format: Option<CipherFormat>) -> Result<Connection, EngineError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(&self.path, flags).map_err(|e| storage(&self.path.display().to_string(), e))?;
        // SQLCipher's version pragma answers only if the library is SQLCipher. A build that
        // linked plain SQLite would ignore `PRAGMA key` and write clear pages: refuse it.
        let cipher: Option<String> = conn
            .query_row("PRAGMA cipher_version", [], |r| r.get(0))
            .optional()
            .map_err(|e| storage("PRAGMA cipher_version", e))?;
        if cipher.is_none() {
            return Err(EngineError::NotEncrypting(
                "this atrest build links SQLite without SQLCipher; rebuild with rusqlite's bundled-sqlcipher feature"
                    .into(),
            ));
        }
        // SQLCipher logs each failed page authentication to stderr itself (a process-wide
        // setting). atrest reports those as [`EngineError::WrongKey`], which says what to do,
        // and opening a database of the older format fails once by design.
        conn.execute_batch("PRAGMA cipher_log_level = NONE;").map_err(|e| storage("PRAGMA cipher_log_level", e))?;
        if let Some(format) = format {
            let (_, key) = keys.current();
            // The statement text holds the key in hex for as long as SQLite parses it; the
            // buffer is wiped on drop.
            let mut pragma = Zeroizing::new(String::with_capacity(80));
            pragma.push_str("PRAGMA key = \"x'");
            pragma.push_str(&hex::encode(key.expose()));
            pragma.push_str("'\";");
            conn.execute_batch(&pragma).map_err(|e| storage("PRAGMA key", e))?;
            if let CipherFormat::Current = format {
                conn.execute_batch(CURRENT_CIPHER_SETTINGS).map_err(|e| storage("PRAGMA cipher_hmac_algorithm", e))?;
            }
        }
        // The first read decrypts page 1: a wrong key fails here with SQLITE_NOTADB.
        match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == ErrorCode::NotADatabase => {
                return Err(EngineError::WrongKey {
                    what: self.path.display().to_string(),
                    detail: "SQLCipher could not authenticate page 1 (the file was written with another key, or is not an atrest database)".into(),
                });
            }
            Err(e) => return Err(storage(&self.path.display().to_string(), e)),
        }
        let synchronous = match self.durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        // A page read from disk costs SQLCipher an AES decryption and an HMAC; one found in
        // SQLite's page cache costs nothing. The default cache (2 MiB) makes a working set of a
        // few MiB pay that on every read, so the cache is sized for the working set (the
        // decrypted pages live only in this process's memory, like every engine's buffer pool).
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA temp_store = MEMORY; PRAGMA foreign_keys = ON; PRAGMA cache_size = -{};",
            CACHE_KIB
        ))
        .map_err(|e| storage("PRAGMA journal_mode", e))?;
        conn.execute_batch(SCHEMA).map_err(|e| storage("schema", e))?;
        Ok(conn)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error>) -> Result<T, EngineError> {
        let mut guard = self.conn.lock();
        let conn = guard.as_mut().ok_or(EngineError::Closed)?;
        f(conn).map_err(|e| storage(&self.path.display().to_string(), e))
    }

    /// Creates or replaces a document; returns its new version.
    pub fn put(&self, collection: &str, id: &str, body: &str) -> Result<i64, EngineError> {
        self.with(|c| put_on(c, collection, id, body))
    }

    /// Reads a document.
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Document>, EngineError> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT id, version, updated_at_ms, body FROM documents WHERE collection = ?1 AND id = ?2",
            )?
            .query_row(params![collection, id], row_to_document)
            .optional()
        })
    }

    /// Deletes a document; whether it existed.
    pub fn delete(&self, collection: &str, id: &str) -> Result<bool, EngineError> {
        self.with(|c| delete_on(c, collection, id))
    }

    /// Documents of `collection` whose id starts with `prefix`, in id order, after `after`.
    pub fn list(&self, collection: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, EngineError> {
        let bound = format!("{prefix}{PREFIX_BOUND}");
        let start = after.filter(|a| *a >= prefix).unwrap_or(prefix).to_string();
        let inclusive = after.is_none_or(|a| a < prefix);
        self.with(|c| {
            let sql = if inclusive {
                "SELECT id, version, updated_at_ms, body FROM documents WHERE collection = ?1 AND id >= ?2 AND id < ?3 ORDER BY id LIMIT ?4"
            } else {
                "SELECT id, version, updated_at_ms, body FROM documents WHERE collection = ?1 AND id > ?2 AND id < ?3 ORDER BY id LIMIT ?4"
            };
            let mut stmt = c.prepare_cached(sql)?;
            let mut documents: Vec<Document> = stmt
                .query_map(params![collection, start, bound, (limit + 1) as i64], row_to_document)?
                .collect::<Result<_, _>>()?;
            let next = if documents.len() > limit {
                documents.truncate(limit);
                documents.last().map(|d| d.id.clone())
            } else {
                None
            };
            Ok(Page { documents, next })
        })
    }

    /// Applies `ops` in one transaction: all or none.
    pub fn batch(&self, ops: &[BatchOp]) -> Result<Vec<BatchResult>, EngineError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                results.push(match op {
                    BatchOp::Put { collection, id, body } => {
                        BatchResult::Put { version: put_on(&tx, collection, id, body)? }
                    }
                    BatchOp::Delete { collection, id } => {
                        BatchResult::Delete { existed: delete_on(&tx, collection, id)? }
                    }
                });
            }
            tx.commit()?;
            Ok(results)
        })
    }

    /// How many documents `collection` holds.
    pub fn count(&self, collection: &str) -> Result<i64, EngineError> {
        self.with(|c| c.query_row("SELECT count(*) FROM documents WHERE collection = ?1", [collection], |r| r.get(0)))
    }
}

fn row_to_document(r: &rusqlite::Row<'_>) -> rusqlite::Result<Document> {
    Ok(Document { id: r.get(0)?, version: r.get(1)?, updated_at_ms: r.get(2)?, body: r.get(3)? })
}

fn put_on(c: &Connection, collection: &str, id: &str, body: &str) -> rusqlite::Result<i64> {
    c.prepare_cached(
        "INSERT INTO documents (collection, id, version, updated_at_ms, body) VALUES (?1, ?2, 1, ?3, ?4)
         ON CONFLICT (collection, id) DO UPDATE SET version = version + 1, updated_at_ms = excluded.updated_at_ms, body = excluded.body
         RETURNING version",
    )?
    .query_row(params![collection, id, now_ms(), body], |r| r.get(0))
}

fn delete_on(c: &Connection, collection: &str, id: &str) -> rusqlite::Result<bool> {
    Ok(c.prepare_cached("DELETE FROM documents WHERE collection = ?1 AND id = ?2")?.execute(params![collection, id])?
        > 0)
}

impl Engine for SqlCipherEngine {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn open(&self, keys: &DataKeys) -> Result<(), EngineError> {
        let mut guard = self.conn.lock();
        if guard.is_none() {
            *guard = Some(self.connect(keys)?);
        }
        Ok(())
    }

    fn close(&self) -> Result<(), EngineError> {
        // Dropping the connection closes it (checkpointing nothing new) and SQLCipher frees and
        // wipes its key context.
        if let Some(conn) = self.conn.lock().take() {
            conn.close().map_err(|(_, e)| storage("close", e))?;
        }
        Ok(())
    }

    fn health(&self) -> Health {
        let guard = self.conn.lock();
        match guard.as_ref() {
            None => Health::Closed,
            Some(c) => match c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
                Ok(_) => Health::Serving,
                Err(e) => Health::Failing(format!("{}: {e}", self.path.display())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::KeyBytes;

    fn raw(path: &Path, keys: &DataKeys, settings: &str) -> Connection {
        let conn = Connection::open(path).unwrap();
        let hex = Zeroizing::new(hex::encode(keys.current().1.expose()));
        conn.execute_batch(&format!("PRAGMA key = \"x'{}'\"; {settings}", hex.as_str())).unwrap();
        conn
    }

    #[test]
    fn new_databases_use_hmac_sha256_pages_and_older_ones_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let keys = DataKeys::single(KeyBytes::random().unwrap());
        let engine = SqlCipherEngine::new(dir.path(), Encryption::Encrypted, Durability::Normal);
        engine.open(&keys).unwrap();
        engine.put("c", "new", "{\"a\":1}").unwrap();
        engine.close().unwrap();
        // The pages carry HMAC-SHA256: SQLCipher 4's defaults (HMAC-SHA512) refuse them, and the
        // current settings read them.
        let path = dir.path().join(DB_FILE);
        let defaults = raw(&path, &keys, "");
        assert!(defaults.query_row("SELECT count(*) FROM documents", [], |r| r.get::<_, i64>(0)).is_err());
        drop(defaults);
        let current = raw(&path, &keys, CURRENT_CIPHER_SETTINGS);
        assert_eq!(current.query_row("SELECT count(*) FROM documents", [], |r| r.get::<_, i64>(0)).unwrap(), 1);
        drop(current);

        // A database written with SQLCipher 4's defaults (atrest's first format) opens, keeps its
        // format, and takes writes.
        let old = tempfile::tempdir().unwrap();
        let conn = raw(&old.path().join(DB_FILE), &keys, "");
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute("INSERT INTO documents VALUES ('c', 'old', 1, 0, '{\"b\":2}')", []).unwrap();
        drop(conn);
        let engine = SqlCipherEngine::new(old.path(), Encryption::Encrypted, Durability::Normal);
        engine.open(&keys).unwrap();
        assert_eq!(engine.get("c", "old").unwrap().unwrap().body, "{\"b\":2}");
        engine.put("c", "more", "{}").unwrap();
        engine.close().unwrap();
        let conn = raw(&old.path().join(DB_FILE), &keys, "");
        assert_eq!(conn.query_row("SELECT count(*) FROM documents", [], |r| r.get::<_, i64>(0)).unwrap(), 2);
        drop(conn);

        // Another key opens neither.
        let other = DataKeys::single(KeyBytes::random().unwrap());
        for d in [dir.path(), old.path()] {
            let e = SqlCipherEngine::new(d, Encryption::Encrypted, Durability::Normal);
            assert!(matches!(e.open(&other), Err(EngineError::WrongKey { .. })), "{}", d.display());
        }
    }
}
