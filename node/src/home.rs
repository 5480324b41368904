//! The moxnet home: `identity.key` (the ed25519 seed, mode 0600) and `store/`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use catalog::Catalog;
use protocol::SecretKey;
use store::Store;

const KEY_FILE: &str = "identity.key";
const STORE_DIR: &str = "store";

/// 32 random bytes from the OS, as 64 hex characters.
pub fn random_hex() -> Result<String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(hex::encode(secret))
}

/// Writes `secret` and a newline to `path`, readable and writable by the owner only (0600),
/// atomically: a temporary file, fsynced, then renamed over `path`.
pub fn write_secret(path: &Path, secret: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", tmp.display())),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(secret.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("creating {}", path.display()))
}

/// Where the home is when neither `--home` nor `MOXNET_HOME` says.
pub fn default_dir() -> Result<PathBuf> {
    dirs::data_dir()
        .map(|d| d.join("moxnet"))
        .context("no data directory for this user (set --home or MOXNET_HOME)")
}

/// An open home.
pub struct Home {
    /// The identity that signs what this home publishes.
    pub key: std::sync::Arc<SecretKey>,
    /// The blob store.
    pub store: std::sync::Arc<Store>,
    /// Every manifest this home knows, verified once, and which models are local.
    pub catalog: std::sync::Arc<Catalog>,
    /// The home's folder.
    pub dir: std::path::PathBuf,
}

impl Home {
    /// Creates the home if needed; returns it and whether it was new.
    pub fn init(dir: &Path) -> Result<(Home, bool)> {
        let key_path = dir.join(KEY_FILE);
        let new = !key_path.exists();
        if new {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", dir.display()))?;
            write_secret(&key_path, &random_hex()?)?;
        }
        Ok((Home::open(dir)?, new))
    }

    /// Opens an existing home.
    pub fn open(dir: &Path) -> Result<Home> {
        let key_path = dir.join(KEY_FILE);
        if !key_path.exists() {
            bail!(
                "{} is not a moxnet home (no {KEY_FILE}); run `moxnet init` first, or pass --home",
                dir.display()
            );
        }
        let key = load_key(&key_path)?;
        let store = std::sync::Arc::new(
            Store::open(dir.join(STORE_DIR))
                .with_context(|| format!("opening the store in {}", dir.display()))?,
        );
        let catalog = std::sync::Arc::new(
            Catalog::open(store.clone())
                .with_context(|| format!("opening the catalogue in {}", dir.display()))?,
        );
        Ok(Home {
            key: std::sync::Arc::new(key),
            store,
            catalog,
            dir: dir.to_path_buf(),
        })
    }
}

fn load_key(path: &Path) -> Result<SecretKey> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| {
        anyhow::anyhow!(
            "{} is not a moxnet identity key (64 hex characters expected)",
            path.display()
        )
    })?;
    Ok(SecretKey::from_seed(&seed))
}
