//! The user a client's TLS certificate names (`[tls] use_identity_as_username`):
//! set before CONNECT, it stands whatever CONNECT says.

use super::*;
use crate::auth::PasswordFile;

#[test]
fn a_certificate_identity_names_the_user_whatever_connect_says() {
    for mut c in [Client::new(), Client::v5()] {
        // Only alice may connect, with her password, and no one anonymously.
        let mut passwords = PasswordFile::new();
        passwords.set("alice", b"secret").unwrap();
        c.node.passwords = Some(Arc::new(passwords));
        c.node.allow_anonymous = false;
        c.session.set_identity(Arc::from("sensor-17"));
        let version = c.version;
        c.send(Packet::Connect(Connect {
            protocol: version,
            clean_session: true,
            keep_alive: 30,
            client_id: "c".into(),
            will: None,
            username: Some("alice".into()),
            password: Some(Bytes::from_static(b"not hers")),
            properties: Properties::default().into(),
        }));
        assert_accepted(&mut c);
        assert_eq!(c.session.username.as_deref(), Some("sensor-17"));
    }
}
