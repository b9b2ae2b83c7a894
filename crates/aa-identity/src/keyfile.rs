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

/// Reads the key at `path`, or creates one there (and its folder) if there is none.
pub fn load_or_create(path: &Path) -> Result<Keypair, IdentityError> {
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(fail(path, e.to_string())),
    }
}

fn create(path: &Path) -> Result<Keypair, IdentityError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Owner-only, as a state directory is: the first process to make it may be an SDK's,
        // and the gateway's database and the runtime's outbox go in it later.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(path, e.to_string()))?;
    }
    let key = Keypair::generate()?;
    let hex: String = key.secret().iter().map(|b| format!("{b:02x}")).collect();
    // create_new: two processes racing to create the key must not both win.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(path, e.to_string()))?;
    file.write_all(format!("{hex}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| fail(path, e.to_string()))?;
    Ok(key)
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
