//! Data directories: private (0700) and owned by one process at a time.
//!
//! Two servers on one directory overwrite each other's state, so a server takes an exclusive
//! `flock` on a lock file inside it for as long as it runs; a second one fails at once and names
//! the process that holds it. The lock is the kernel's (std's `File::try_lock`, `flock(2)` on
//! Linux): it goes away with the process however it ends, kill -9 included, so a stale lock
//! file never blocks a restart.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The lock file's name inside a locked directory.
pub const LOCK_FILE: &str = "atrest.lock";

/// Creates `dir` (and missing parents) with mode 0700, and tightens it to 0700 if it exists.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private (mode 0700)", dir.display()))?;
    }
    #[cfg(not(unix))]
    builder.create(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
    Ok(())
}

/// An exclusive lock on a data directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    file: std::fs::File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock on `dir` for `what` (e.g. "atrest up"), or fails at once naming the PID of
    /// the process that holds it.
    pub fn acquire(dir: &Path, what: &str) -> anyhow::Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = open_private_rw(&path).with_context(|| format!("opening the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() { "another process".to_owned() } else { format!("process {holder}") };
                anyhow::bail!(
                    "{} is in use: {who} holds {} (two servers on one data directory would overwrite each other's \
                     state). Stop it (`kill {}`) or give this {what} another data directory.",
                    dir.display(),
                    path.display(),
                    if holder.is_empty() { "<pid>" } else { holder }
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(DirLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Opens `path` for reading and writing, creating it with mode 0600 if missing (an existing file
/// is tightened to 0600); nothing is truncated.
pub(crate) fn open_private_rw(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}
