//! MQTT over TLS and secure WebSocket: the rustls server configuration built
//! from the PEM files of `[tls]` (TLS 1.2 and 1.3 only, ring), swapped whole
//! when the files are read again, on [`crate::Broker::reload_tls`] or when
//! [`watch_loop`] sees them change; and the username a client certificate
//! gives its session. A connection keeps the configuration it was accepted
//! with, so a reload leaves open connections alone.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

use crate::config::TlsConfig;
use crate::timeouts;

/// What the TLS listeners share: the settings, and the server configuration
/// as last read from the files.
pub(crate) struct Tls {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// What the files looked like when they were last read; held while they
    /// are read, so that reloads do not overlap.
    read: Mutex<Stamps>,
}

/// Modification time and length of the certificate, key and CA files.
type Stamps = [Option<(SystemTime, u64)>; 3];

impl Tls {
    /// Reads the files of `settings`; an error names the key and file at fault.
    pub(crate) fn load(settings: TlsConfig) -> Result<Tls, String> {
        let stamps = stamps(&settings);
        let config = server_config(&settings)?;
        Ok(Tls {
            settings,
            current: RwLock::new(Arc::new(config)),
            read: Mutex::new(stamps),
        })
    }

    /// What accepts the next connection: the configuration as last read.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(current.clone())
    }

    /// Reads the files again and, if they make a configuration, accepts new
    /// connections with it; else the one in use stays. Logged either way.
    pub(crate) fn reload(&self, why: &str) -> Result<(), String> {
        let mut read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        // Taken before the files are read: a change while they are read is
        // seen by the next look.
        *read = stamps(&self.settings);
        match server_config(&self.settings) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
                tracing::info!(why, "TLS certificates reloaded");
                Ok(())
            }
            Err(error) => {
                tracing::error!(
                    why,
                    %error,
                    "TLS certificates not reloaded; the previous ones stay in use"
                );
                Err(error)
            }
        }
    }

    /// Whether a file changed since it was last read.
    fn changed(&self) -> bool {
        let read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        *read != stamps(&self.settings)
    }

    /// The username the client's certificate gives its session: `None` unless
    /// `use_identity_as_username` or `use_subject_alt_name_as_username` is
    /// set; an error when the certificate lacks what it names.
    pub(crate) fn identity(
        &self,
        peer: Option<&[CertificateDer<'_>]>,
    ) -> Result<Option<String>, &'static str> {
        identity(&self.settings, peer)
    }
}

fn identity(
    settings: &TlsConfig,
    peer: Option<&[CertificateDer<'_>]>,
) -> Result<Option<String>, &'static str> {
    let (cn, san) = (
        settings.use_identity_as_username,
        settings.use_subject_alt_name_as_username,
    );
    if !cn && !san {
        return Ok(None);
    }
    let Some(cert) = peer.and_then(<[_]>::first) else {
        return Err("no client certificate");
    };
    if cn {
        let name = common_name(cert).ok_or("no common name in the client certificate")?;
        return Ok(Some(name));
    }
    let name =
        first_alt_name(cert).ok_or("no DNS name or email address in the client certificate")?;
    Ok(Some(name))
}

/// Reads the files again whenever they change, until shutdown.
pub(crate) async fn watch_loop(tls: Arc<Tls>, mut shutdown: watch::Receiver<bool>) {
    let mut look = tokio::time::interval(timeouts::TLS_FILES);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now, right after they were read.
    look.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = look.tick() => {
                if tls.changed() {
                    let _ = tls.reload("the files changed");
                }
            }
        }
    }
}

fn stamps(settings: &TlsConfig) -> Stamps {
    [&settings.cert_file, &settings.key_file, &settings.ca_file].map(|path| {
        if path.as_os_str().is_empty() {
            return None;
        }
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    })
}

/// The server configuration the files of `settings` make.
fn server_config(settings: &TlsConfig) -> Result<ServerConfig, String> {
    let provider = Arc::new(provider());
    let certs = certificates("tls.cert_file", &settings.cert_file)?;
    let key_pem = read("tls.key_file", &settings.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "tls.key_file {}: no private key (PEM: PKCS#8, RSA or SEC1): {e}",
            settings.key_file.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if settings.ca_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for cert in certificates("tls.ca_file", &settings.ca_file)? {
            roots
                .add(cert)
                .map_err(|e| format!("tls.ca_file {}: {e}", settings.ca_file.display()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = match settings.require_client_certificate {
            true => verifier,
            false => verifier.allow_unauthenticated(),
        };
        let verifier = verifier
            .build()
            .map_err(|e| format!("tls.ca_file {}: {e}", settings.ca_file.display()))?;
        builder.with_client_cert_verifier(verifier)
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.cert_file and tls.key_file: {e}"))
}

/// rustls with ring, as on the cluster port (tonic's tls-ring): a far lighter
/// build than aws-lc-rs. rustls 0.23.48 deprecates it for its lack of
/// post-quantum key exchange; X25519 and the NIST curves remain.
#[allow(deprecated)]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The certificates of the PEM file at `path`: at least one.
fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))
}

/// The first common name (CN) of the certificate's subject.
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    let cert = Certificate::from_der(der).ok()?;
    let name = cert.tbs_certificate().subject().common_name().ok()??;
    Some(name.value().into_owned())
}

/// The first DNS name or email address among the certificate's subject
/// alternative names.
pub(crate) fn first_alt_name(der: &[u8]) -> Option<String> {
    let cert = Certificate::from_der(der).ok()?;
    let (_, SubjectAltName(names)) = cert.tbs_certificate().get_extension().ok()??;
    names.into_iter().find_map(|name| match name {
        GeneralName::DnsName(name) | GeneralName::Rfc822Name(name) => {
            Some(AsRef::<str>::as_ref(&name).to_owned())
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Starling tests");
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    fn email(name: &str) -> SanType {
        SanType::Rfc822Name(name.try_into().unwrap())
    }

    #[test]
    fn the_common_name_is_found() {
        let der = cert(Some("sensor-17"), vec![dns("a.example")]);
        assert_eq!(common_name(&der).as_deref(), Some("sensor-17"));
        assert_eq!(common_name(&cert(None, vec![dns("a.example")])), None);
    }

    #[test]
    fn the_first_dns_name_or_email_is_found() {
        let ip = SanType::IpAddress([127, 0, 0, 1].into());
        let der = cert(
            Some("cn"),
            vec![ip.clone(), email("dev@example.org"), dns("b.example")],
        );
        assert_eq!(first_alt_name(&der).as_deref(), Some("dev@example.org"));
        let der = cert(Some("cn"), vec![ip.clone(), dns("b.example")]);
        assert_eq!(first_alt_name(&der).as_deref(), Some("b.example"));
        assert_eq!(first_alt_name(&cert(Some("cn"), vec![ip])), None);
        assert_eq!(first_alt_name(&cert(Some("cn"), vec![])), None);
    }

    #[test]
    fn garbage_gives_no_name() {
        let der = cert(Some("sensor-17"), vec![dns("a.example")]);
        for bad in [&der[..der.len() / 2], &[][..], &[0x30, 0x82, 0xff][..]] {
            assert_eq!(common_name(bad), None);
            assert_eq!(first_alt_name(bad), None);
        }
    }

    #[test]
    fn identity_follows_the_options() {
        let der = CertificateDer::from(cert(Some("sensor-17"), vec![dns("a.example")]));
        let bare = CertificateDer::from(cert(None, vec![]));
        let options = |cn, san| TlsConfig {
            use_identity_as_username: cn,
            use_subject_alt_name_as_username: san,
            ..TlsConfig::default()
        };
        let peer = Some(std::slice::from_ref(&der));
        assert_eq!(identity(&options(false, false), peer), Ok(None));
        assert_eq!(identity(&options(false, false), None), Ok(None));
        assert_eq!(
            identity(&options(true, false), peer),
            Ok(Some("sensor-17".into()))
        );
        assert_eq!(
            identity(&options(false, true), peer),
            Ok(Some("a.example".into()))
        );
        assert!(identity(&options(true, false), None).is_err());
        let bare = Some(std::slice::from_ref(&bare));
        assert!(identity(&options(true, false), bare).is_err());
        assert!(identity(&options(false, true), bare).is_err());
    }

    #[test]
    fn files_are_read_and_their_faults_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let settings = TlsConfig {
            enabled: true,
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            ..TlsConfig::default()
        };
        let tls = Tls::load(settings.clone()).expect("a valid certificate and key");
        assert!(!tls.changed());

        // A key that is not the certificate's: refused, the old one stays.
        let other = KeyPair::generate().unwrap();
        std::fs::write(&key_file, other.serialize_pem()).unwrap();
        let before = Arc::as_ptr(&tls.current.read().unwrap());
        let error = tls.reload("test").unwrap_err();
        assert!(error.contains("tls.cert_file and tls.key_file"), "{error}");
        assert_eq!(Arc::as_ptr(&tls.current.read().unwrap()), before);

        let missing = TlsConfig {
            ca_file: dir.path().join("nowhere.pem"),
            ..settings.clone()
        };
        let error = Tls::load(missing).err().unwrap();
        assert!(error.starts_with("tls.ca_file"), "{error}");
        std::fs::write(&key_file, "not PEM").unwrap();
        let error = Tls::load(settings).err().unwrap();
        assert!(error.starts_with("tls.key_file"), "{error}");
    }
}
