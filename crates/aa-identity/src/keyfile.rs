//! Keys kept on disk: one file per key holding the 32-byte secret as hex, created mode 0600
//! and refused if anyone but the owner may read it (as ssh refuses a loose private key).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use crate::error::IdentityError;
use crate::key::Keypair;

fn fail(path: &Path, reason: impl Into<String>) -> IdentityError {
    IdentityError::KeyFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Reads the key at `path`, or creates one there (and its folder) if there is none. Processes
/// racing to create the same key all end up with the one that was made first.
pub fn load_or_create(path: &Path) -> Result<Keypair, IdentityError> {
    match create(path) {
        Err(Created::AlreadyThere) => load(path),
        Err(Created::Failed(error)) => Err(error),
        Ok(key) => Ok(key),
    }
}

/// Reads the key at `path`; a missing file is an error (e.g. a parent's key, which only its
/// own registration creates).
pub fn load(path: &Path) -> Result<Keypair, IdentityError> {
    match fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(fail(
                    path,
                    format!(
                        "permissions {:o} are too open; run chmod 600 on it",
                        meta.permissions().mode() & 0o777
                    ),
                ));
            }
            let text = fs::read_to_string(path).map_err(|e| fail(path, e.to_string()))?;
            let secret = unhex32(text.trim())
                .ok_or_else(|| fail(path, "expected 64 hex digits (an Ed25519 secret)"))?;
            Ok(Keypair::from_secret(&secret))
        }
        Err(e) => Err(fail(path, e.to_string())),
    }
}

enum Created {
    AlreadyThere,
    Failed(IdentityError),
}

/// Creates a key at `path` unless one is there. The key is written whole to a file of its own
/// first and then linked into place, which fails if the name is taken: no process ever reads
/// a key half written, and a crash leaves no empty key behind that would block its agent.
fn create(path: &Path) -> Result<Keypair, Created> {
    if fs::symlink_metadata(path).is_ok() {
        return Err(Created::AlreadyThere);
    }
    let failed = |e: &dyn std::fmt::Display| Created::Failed(fail(path, e.to_string()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Owner-only, as a state directory is: the first process to make it may be an SDK's,
        // and the gateway's database and the runtime's outbox go in it later.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| failed(&e))?;
    }
    let key = Keypair::generate().map_err(Created::Failed)?;
    let hex: String = key.secret().iter().map(|b| format!("{b:02x}")).collect();
    // Named after the new key's public half: unique to this attempt, and no secret.
    let public: String = key.public().to_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let staged = path.with_file_name(format!(".{name}.{public}.new"));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .and_then(|mut file| {
            file.write_all(format!("{hex}\n").as_bytes())?;
            file.sync_all()
        });
    // Linking fails when the name is taken: two processes racing to create the key must not
    // both win.
    let linked = written.and_then(|()| fs::hard_link(&staged, path));
    let _ = fs::remove_file(&staged);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Created::AlreadyThere),
        Err(e) => Err(failed(&e)),
    }
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn creates_once_then_reads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/agent.key");
        let first = load_or_create(&path).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            mode(&dir.path().join("keys")),
            0o700,
            "the directory it made"
        );
        let again = load_or_create(&path).unwrap();
        assert_eq!(first.public(), again.public());
    }

    /// Processes (here threads) making the same new key at once all get the one made first;
    /// none fails, or reads it half written.
    #[test]
    fn racing_creators_all_get_the_same_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("agents/agent.key");
            let racers: Vec<_> = (0..6)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || load_or_create(&path).map(|k| k.public()))
                })
                .collect();
            let keys: Vec<_> = racers
                .into_iter()
                .map(|r| r.join().unwrap().unwrap())
                .collect();
            assert!(keys.windows(2).all(|w| w[0] == w[1]));
            assert_eq!(load_or_create(&path).unwrap().public(), keys[0]);
            let left: Vec<_> = fs::read_dir(path.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, ["agent.key"], "staged files are removed");
        }
    }

    #[test]
    fn refuses_loose_permissions_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("too open"), "{err}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not hex").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
