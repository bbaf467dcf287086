//! The server's three secrets (internal API key, JWT signing secret, cache token secret):
//! read from the environment or a config file, otherwise generated once (32 random bytes,
//! hex) and kept 0600 in `<state-dir>/secrets/`, reused on later starts.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Shortest secret accepted from the environment or a config file.
pub const MIN_SECRET_LEN: usize = 16;

/// Errors while loading or creating secrets.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{name} is shorter than {MIN_SECRET_LEN} bytes")]
    TooShort { name: &'static str },
    #[error("{path} is readable by group or others (mode {mode:o}); refusing to use it")]
    InsecureFile { path: PathBuf, mode: u32 },
}

/// Where a secret came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Env,
    Config,
    /// Read back from the state directory.
    File,
    /// Generated during this start and written to the state directory.
    Generated,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Env => "env",
            Source::Config => "config",
            Source::File => "file",
            Source::Generated => "generated",
        }
    }
}

/// One secret value with its origin. `Debug` never prints the value.
#[derive(Clone)]
pub struct Secret {
    pub value: String,
    pub source: Source,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secret({}, {})",
            self.source.as_str(),
            self.fingerprint()
        )
    }
}

impl Secret {
    /// First 8 hex digits of SHA-256 of the value: safe to log and store.
    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.value.as_bytes())[..4])
    }
}

/// The server's secrets.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub internal_api_key: Secret,
    pub jwt_secret: Secret,
    pub cache_secret: Secret,
    /// JWT issuer (`jwt_issuer` in the config file, `JOBCELL_JWT_ISSUER`), default `jobcell`.
    pub jwt_issuer: String,
}

/// Keys of the optional TOML config file (all optional).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    internal_api_key: Option<String>,
    jwt_secret: Option<String>,
    cache_secret: Option<String>,
    jwt_issuer: Option<String>,
}

/// One secret: its name (also the state file's), and the environment variables that may supply it.
struct Spec {
    name: &'static str,
    env: &'static [&'static str],
}

const INTERNAL_API_KEY: Spec = Spec {
    name: "internal_api_key",
    env: &["JOBCELL_INTERNAL_API_KEY", "INTERNAL_API_KEY"],
};
const JWT_SECRET: Spec = Spec {
    name: "jwt_secret",
    env: &["JOBCELL_JWT_SECRET"],
};
const CACHE_SECRET: Spec = Spec {
    name: "cache_secret",
    env: &["JOBCELL_CACHE_SECRET"],
};

impl Secrets {
    /// Loads secrets with precedence environment > config file > state directory file >
    /// newly generated (then persisted 0600).
    pub fn load(state_dir: &Path, config: Option<&Path>) -> Result<Secrets, SecretsError> {
        Self::load_with(state_dir, config, |k| std::env::var(k).ok())
    }

    /// [`Secrets::load`] with an injectable environment (for tests).
    pub fn load_with(
        state_dir: &Path,
        config: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Secrets, SecretsError> {
        let cfg = match config {
            None => ConfigFile::default(),
            Some(p) => {
                let text = fs::read_to_string(p).map_err(|source| SecretsError::Io {
                    path: p.to_path_buf(),
                    source,
                })?;
                let cfg: ConfigFile = toml::from_str(&text).map_err(|e| SecretsError::Config {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?;
                // A config file that carries a secret must be as private as the state files.
                if cfg.internal_api_key.is_some()
                    || cfg.jwt_secret.is_some()
                    || cfg.cache_secret.is_some()
                {
                    refuse_if_shared(p)?;
                }
                cfg
            }
        };
        let dir = state_dir.join("secrets");
        // Precedence: the first non-empty environment variable, the config file, the state file.
        let pick = |spec: &Spec, from_cfg: Option<String>| -> Result<Secret, SecretsError> {
            let secret = if let Some(v) = spec
                .env
                .iter()
                .filter_map(|k| env(k))
                .find(|v| !v.is_empty())
            {
                Secret {
                    value: v,
                    source: Source::Env,
                }
            } else if let Some(v) = from_cfg {
                Secret {
                    value: v,
                    source: Source::Config,
                }
            } else {
                load_or_generate(&dir, spec.name)?
            };
            if secret.value.len() < MIN_SECRET_LEN {
                return Err(SecretsError::TooShort { name: spec.name });
            }
            Ok(secret)
        };
        let internal_api_key = pick(&INTERNAL_API_KEY, cfg.internal_api_key)?;
        let jwt_secret = pick(&JWT_SECRET, cfg.jwt_secret)?;
        let cache_secret = pick(&CACHE_SECRET, cfg.cache_secret)?;
        let jwt_issuer = env("JOBCELL_JWT_ISSUER")
            .or(cfg.jwt_issuer)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "jobcell".to_string());
        Ok(Secrets {
            internal_api_key,
            jwt_secret,
            cache_secret,
            jwt_issuer,
        })
    }

    /// Name, source and fingerprint of each secret (for the store's metadata table).
    pub fn metadata(&self) -> [(&'static str, &Secret); 3] {
        [
            ("internal_api_key", &self.internal_api_key),
            ("jwt_secret", &self.jwt_secret),
            ("cache_secret", &self.cache_secret),
        ]
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SecretsError + '_ {
    move |source| SecretsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses a file holding a secret that its group or others may read or write.
fn refuse_if_shared(path: &Path) -> Result<(), SecretsError> {
    let mode = fs::metadata(path)
        .map_err(io_err(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretsError::InsecureFile {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn load_or_generate(dir: &Path, name: &str) -> Result<Secret, SecretsError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(v) => {
            refuse_if_shared(&path)?;
            return Ok(Secret {
                value: v.trim().to_string(),
                source: Source::File,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    let bytes: [u8; 32] = rand::random();
    let value = hex::encode(bytes);
    // Write to a temporary name created 0600 and exclusive, then rename: a crash never
    // leaves a half-written secret under the real name.
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(value.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    // hard_link fails if another process created the secret meanwhile: then use theirs.
    match fs::hard_link(&tmp, &path) {
        Ok(()) => {
            let _ = fs::remove_file(&tmp);
            Ok(Secret {
                value,
                source: Source::Generated,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&tmp);
            load_or_generate(dir, name)
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Secrets::load_with(dir.path(), None, |_| None).unwrap();
        assert_eq!(a.jwt_secret.source, Source::Generated);
        assert_eq!(a.jwt_secret.value.len(), 64);
        for f in ["internal_api_key", "jwt_secret", "cache_secret"] {
            let m = fs::metadata(dir.path().join("secrets").join(f)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
        }
        let b = Secrets::load_with(dir.path(), None, |_| None).unwrap();
        assert_eq!(b.jwt_secret.source, Source::File);
        assert_eq!(a.jwt_secret.value, b.jwt_secret.value);
        assert_eq!(a.internal_api_key.value, b.internal_api_key.value);
        assert_ne!(a.jwt_secret.value, a.cache_secret.value);
    }

    #[test]
    fn env_then_config_precedence_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        fs::write(
            &cfg,
            "jwt_secret = \"from-config-0123456789\"\njwt_issuer = \"me\"\n",
        )
        .unwrap();
        // A config file carrying a secret must be private, like the state files.
        assert!(matches!(
            Secrets::load_with(dir.path(), Some(&cfg), |_| None),
            Err(SecretsError::InsecureFile { .. })
        ));
        fs::set_permissions(&cfg, fs::Permissions::from_mode(0o600)).unwrap();
        // An empty JOBCELL_INTERNAL_API_KEY does not hide a set INTERNAL_API_KEY.
        let s = Secrets::load_with(dir.path(), Some(&cfg), |k| match k {
            "JOBCELL_INTERNAL_API_KEY" => Some(String::new()),
            "INTERNAL_API_KEY" => Some("from-env-0123456789".to_string()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.internal_api_key.value, "from-env-0123456789");
        assert_eq!(s.jwt_secret.value, "from-config-0123456789");
        assert_eq!(s.jwt_issuer, "me");
        assert_eq!(s.cache_secret.source, Source::Generated);
        let short = Secrets::load_with(dir.path(), None, |k| {
            (k == "JOBCELL_JWT_SECRET").then(|| "short".to_string())
        });
        assert!(matches!(short, Err(SecretsError::TooShort { .. })));
        let p = dir.path().join("secrets/cache_secret");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Secrets::load_with(dir.path(), None, |_| None),
            Err(SecretsError::InsecureFile { .. })
        ));
    }
}
