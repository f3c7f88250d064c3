//! Who may connect, as it appears under `[auth]` in the config file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Settings of client authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A Mosquitto password file ("user:hash" lines, as `mosquitto_passwd` and
    /// `starling passwd` write them): a client that gives a username must give
    /// its password. Read at start and again on SIGHUP. Empty: none.
    pub password_file: PathBuf,
    /// Whether clients may connect without authenticating: with no username
    /// (or with one but no password file to check it against) and no MQTT 5
    /// enhanced authentication. Unset: true when neither a password file nor
    /// client certificates are configured, false otherwise, as in Mosquitto 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// A Mosquitto ACL file: which topics each client may publish and
    /// subscribe to. Empty: none.
    pub acl_file: PathBuf,
}

impl AuthConfig {
    /// The password file, if one is configured.
    pub fn password_path(&self) -> Option<&Path> {
        non_empty(&self.password_file)
    }

    /// The ACL file, if one is configured.
    pub fn acl_path(&self) -> Option<&Path> {
        non_empty(&self.acl_file)
    }

    /// Whether clients that did not authenticate may connect, given whether a
    /// listener asks clients for certificates: `allow_anonymous`, or when it
    /// is unset, whether neither that nor a password file is configured.
    pub fn anonymous_allowed(&self, client_certificates: bool) -> bool {
        self.allow_anonymous
            .unwrap_or(self.password_path().is_none() && !client_certificates)
    }
}

/// `path`, unless it is empty (or only spaces).
fn non_empty(path: &Path) -> Option<&Path> {
    let text = path.as_os_str().to_string_lossy();
    (!text.trim().is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_clients_are_allowed_only_where_nothing_else_is_set() {
        let open = AuthConfig::default();
        assert!(open.anonymous_allowed(false));
        assert!(!open.anonymous_allowed(true));
        let with_file = AuthConfig {
            password_file: "/etc/starling/passwd".into(),
            ..AuthConfig::default()
        };
        assert!(!with_file.anonymous_allowed(false));
        for (set, certificates) in [(true, true), (false, false)] {
            let config = AuthConfig {
                allow_anonymous: Some(set),
                ..with_file.clone()
            };
            assert_eq!(config.anonymous_allowed(certificates), set);
        }
    }

    #[test]
    fn empty_paths_mean_none() {
        let config = AuthConfig {
            password_file: " ".into(),
            acl_file: "acl".into(),
            ..AuthConfig::default()
        };
        assert_eq!(config.password_path(), None);
        assert_eq!(config.acl_path(), Some(Path::new("acl")));
    }
}
