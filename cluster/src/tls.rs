//! Mutual TLS between the members: every connection of the cluster port, Raft,
//! proposals, membership requests and forwarded publishes alike, is TLS 1.2 or
//! 1.3 with a certificate from the cluster's own CA on both ends. A node
//! without one cannot join, replicate, propose or forward.

use std::fmt;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A member's certificate and key, and the CA that signs every member's.
#[derive(Clone)]
pub struct ClusterTls {
    /// PEM: this node's certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM: its private key.
    pub key_pem: Vec<u8>,
    /// PEM: the CA every member's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// The name every member's certificate holds (as a DNS subject alternative
    /// name) and that this node checks when it dials one, whatever address it
    /// dials: members are told apart by their CA, not by their address.
    pub server_name: String,
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTls")
            .field("server_name", &self.server_name)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// What the cluster server asks of those who connect: a certificate from
    /// the CA.
    pub(crate) fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// What this node shows and checks when it dials another member.
    pub(crate) fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(self.server_name.clone())
    }
}

/// How this node dials other members: from which address, and with which TLS.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    pub(crate) source: Option<std::net::IpAddr>,
    pub(crate) tls: Option<ClientTlsConfig>,
}

impl Dialer {
    /// Connections start from `source` (see [`crate::source_for`]) and use
    /// `tls` when given.
    pub fn new(source: Option<std::net::IpAddr>, tls: Option<&ClusterTls>) -> Dialer {
        Dialer {
            source,
            tls: tls.map(ClusterTls::client),
        }
    }
}
