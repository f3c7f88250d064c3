//! The password and ACL files of `[auth]` as a node last read them. Both are
//! replaced whole when they are read again: on SIGHUP, or on every node when
//! a reload is committed through the cluster (`Command::ReloadAuth`). A file
//! that cannot be read or has a bad line leaves the ones in use in place.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::acl::{AclError, AclFile};
use super::{AuthConfig, PasswordFile, PasswordFileError};

/// The files `[auth]` names, read.
struct Loaded {
    passwords: Option<Arc<PasswordFile>>,
    acl: Option<Arc<AclFile>>,
}

/// Why the files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    PasswordFile(#[from] PasswordFileError),
    #[error(transparent)]
    AclFile(#[from] AclError),
}

/// The files in use on this node.
#[derive(Debug)]
pub struct AuthFiles {
    config: AuthConfig,
    passwords: RwLock<Option<Arc<PasswordFile>>>,
    acl: RwLock<Option<Arc<AclFile>>>,
    /// Whether `acl` holds rules: read for every delivery without touching
    /// the lock when it does not.
    has_acl: AtomicBool,
}

impl AuthFiles {
    /// Reads the files `config` names; an error names the file and the line.
    pub fn load(config: &AuthConfig) -> Result<AuthFiles, LoadError> {
        let loaded = read(config)?;
        Ok(AuthFiles {
            config: config.clone(),
            has_acl: AtomicBool::new(loaded.acl.is_some()),
            passwords: RwLock::new(loaded.passwords),
            acl: RwLock::new(loaded.acl),
        })
    }

    /// Reads the files only, to see whether a reload would succeed.
    pub fn check(&self) -> Result<(), LoadError> {
        read(&self.config).map(drop)
    }

    /// Reads the files again and puts them in use, for the connections that
    /// authenticate, publish, subscribe or receive from now on. On error the
    /// ones in use stay.
    pub fn reload(&self) -> Result<(), LoadError> {
        let loaded = read(&self.config)?;
        self.install(loaded);
        Ok(())
    }

    fn install(&self, loaded: Loaded) {
        *self
            .passwords
            .write()
            .unwrap_or_else(PoisonError::into_inner) = loaded.passwords;
        let present = loaded.acl.is_some();
        *self.acl.write().unwrap_or_else(PoisonError::into_inner) = loaded.acl;
        self.has_acl.store(present, Ordering::Release);
    }

    pub fn passwords(&self) -> Option<Arc<PasswordFile>> {
        Option::clone(
            &self
                .passwords
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    pub fn acl(&self) -> Option<Arc<AclFile>> {
        if !self.has_acl.load(Ordering::Acquire) {
            return None;
        }
        Option::clone(&self.acl.read().unwrap_or_else(PoisonError::into_inner))
    }
}

fn read(config: &AuthConfig) -> Result<Loaded, LoadError> {
    let passwords = match config.password_path() {
        Some(path) => {
            let file = PasswordFile::load(path)?;
            tracing::info!(path = %path.display(), users = file.len(), "password file loaded");
            Some(Arc::new(file))
        }
        None => None,
    };
    let acl = match config.acl_path() {
        Some(path) => {
            let acl = AclFile::load(path)?;
            tracing::info!(path = %path.display(), "ACL file loaded");
            Some(Arc::new(acl))
        }
        None => None,
    };
    Ok(Loaded { passwords, acl })
}
