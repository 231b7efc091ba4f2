//! Durable, atomic file replacement for the keystore.
//!
//! Written by hand on `std::fs` because the sequence is the point: temp file (0600) → write →
//! fsync → rename over the target → fsync the directory. Until the rename, the previous file is
//! untouched; after the directory fsync, the new one survives a crash or power loss. Crates such
//! as `tempfile::persist` stop at the rename and leave the two fsyncs to the caller.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and parents) with mode 0700 if missing, and tightens it to 0700 if it exists.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Stops the process at a named step when `ATREST_FAILPOINT` names it, the way kill -9 would
/// (an abort runs no destructor and flushes nothing). The crash tests (`crates/cli/tests/
/// node_crash.rs`) run `atrest node` with it set, once per step. The same mechanism as
/// `atrest_control::bootstrap::failpoint`, which this crate cannot depend on; hand-written rather
/// than the `fail` crate because one environment lookup per step of a rare operation (first
/// start, a rotation) needs no registry or cargo feature.
pub fn failpoint(step: &str) {
    if std::env::var_os("ATREST_FAILPOINT").is_some_and(|v| v == step) {
        eprintln!("ATREST_FAILPOINT: aborting at {step}");
        std::process::abort();
    }
}

/// Replaces `dir/name` with `bytes`, atomically and durably (see the module docs). The file is
/// mode 0600. A stale `dir/name.tmp` from an earlier crash is overwritten, never read.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_atomic_at(dir, name, bytes, None)
}

/// [`write_atomic`] with two named failpoints: `{step}-tmp-written` (the temp file is durable,
/// the target untouched) and `{step}-renamed` (the new file is in place and durable).
pub fn write_atomic_at(dir: &Path, name: &str, bytes: &[u8], step: Option<&str>) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        // An existing temp file keeps its old mode through `open`: set it again.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    if let Some(step) = step {
        failpoint(&format!("{step}-tmp-written"));
    }
    fs::rename(&tmp, &target)?;
    File::open(dir)?.sync_all()?;
    if let Some(step) = step {
        failpoint(&format!("{step}-renamed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_with_mode_0600_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("node");
        private_dir(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        write_atomic(&d, "keystore.json", b"one").unwrap();
        // A stale, world-readable temp file from a crash is replaced, not trusted.
        fs::write(d.join("keystore.json.tmp"), b"stale").unwrap();
        fs::set_permissions(d.join("keystore.json.tmp"), fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&d, "keystore.json", b"two").unwrap();
        assert_eq!(fs::read(d.join("keystore.json")).unwrap(), b"two");
        assert!(!d.join("keystore.json.tmp").exists());
        assert_eq!(fs::metadata(d.join("keystore.json")).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
