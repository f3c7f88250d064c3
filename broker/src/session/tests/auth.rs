//! CONNECT's username and password against the password file, and anonymous
//! clients.

use super::*;
use crate::auth::{Authenticator, Exchange, PasswordFile, Step};

/// A node whose password file holds alice (password "secret").
fn node(client: Client, allow_anonymous: bool) -> Client {
    let mut passwords = PasswordFile::new();
    passwords.set("alice", b"secret").unwrap();
    let mut client = client;
    client.node.passwords = Some(Arc::new(passwords));
    client.node.allow_anonymous = allow_anonymous;
    client
}

fn connect(version: ProtocolVersion, username: Option<&str>, password: Option<&str>) -> Packet {
    Packet::Connect(Connect {
        protocol: version,
        clean_session: true,
        keep_alive: 30,
        client_id: "c".into(),
        will: None,
        username: username.map(str::to_owned),
        password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
        properties: Properties::default().into(),
    })
}

/// The bytes sent back, which must be the CONNACK refusing with `code` (as
/// the client's protocol writes it), and the connection ending.
fn assert_refused(c: &mut Client, connack: &[u8]) {
    assert_eq!(c.session.transmit(), connack);
    assert_eq!(c.session.end(), Some(End::Lost));
    assert!(c.actions().is_empty(), "nothing is committed");
}

fn failures(c: &Client, reason: &str) -> u64 {
    c.node
        .metrics
        .auth_failures
        .with_label_values(&[reason])
        .get()
}

#[test]
fn the_right_password_connects_and_names_the_user() {
    for mut c in [node(Client::new(), false), node(Client::v5(), false)] {
        let version = c.version;
        c.send(connect(version, Some("alice"), Some("secret")));
        assert_accepted(&mut c);
        assert_eq!(c.session.username.as_deref(), Some("alice"));
    }
}

#[test]
fn a_wrong_password_is_connack_4_or_0x86() {
    let mut c = node(Client::new(), true);
    c.send(connect(V311, Some("alice"), Some("Secret")));
    assert_refused(&mut c, &[0x20, 2, 0, 4]);
    assert_eq!(failures(&c, "wrong_password"), 1);

    let mut c = node(Client::v5(), true);
    c.send(connect(ProtocolVersion::V5, Some("alice"), Some("wrong")));
    // Session present 0, reason 0x86, no properties.
    assert_refused(&mut c, &[0x20, 3, 0, 0x86, 0]);
    assert!(c.session.username.as_ref().is_none());
}

#[test]
fn an_unknown_user_or_a_missing_password_is_refused_alike() {
    let mut c = node(Client::new(), true);
    c.send(connect(V311, Some("mallory"), Some("secret")));
    assert_refused(&mut c, &[0x20, 2, 0, 4]);
    assert_eq!(failures(&c, "unknown_user"), 1);

    let mut c = node(Client::v5(), true);
    c.send(connect(ProtocolVersion::V5, Some("alice"), None));
    assert_refused(&mut c, &[0x20, 3, 0, 0x86, 0]);
    assert_eq!(failures(&c, "wrong_password"), 1);
}

#[test]
fn anonymous_clients_get_connack_5_or_0x87_where_not_allowed() {
    let mut c = node(Client::new(), false);
    c.send(connect(V311, None, None));
    assert_refused(&mut c, &[0x20, 2, 0, 5]);
    assert_eq!(failures(&c, "anonymous"), 1);

    let mut c = node(Client::v5(), false);
    c.send(connect(ProtocolVersion::V5, None, Some("secret")));
    assert_refused(&mut c, &[0x20, 3, 0, 0x87, 0]);
}

#[test]
fn anonymous_clients_connect_where_allowed() {
    let mut c = node(Client::new(), true);
    c.send(connect(V311, None, None));
    assert_accepted(&mut c);
    assert!(c.session.username.as_ref().is_none());
}

#[test]
fn without_a_password_file_a_username_proves_nothing() {
    let mut c = Client::new();
    c.node.allow_anonymous = false;
    c.send(connect(V311, Some("alice"), Some("secret")));
    assert_refused(&mut c, &[0x20, 2, 0, 5]);

    let mut c = Client::new();
    c.send(connect(V311, Some("alice"), Some("anything")));
    assert_accepted(&mut c);
    assert!(c.session.username.as_ref().is_none(), "not authenticated");
}

/// An enhanced authentication method that lets everybody in as "bob".
struct Welcome;

struct Welcomed;

impl Authenticator for Welcome {
    fn method(&self) -> &str {
        "WELCOME"
    }
    fn start(&self, _client_id: &str) -> Box<dyn Exchange> {
        Box::new(Welcomed)
    }
}

impl Exchange for Welcomed {
    fn step(&mut self, _data: Option<&[u8]>) -> Step {
        Step::Success {
            data: None,
            username: "bob".into(),
        }
    }
}

#[test]
fn enhanced_authentication_counts_as_authenticated() {
    let mut c = node(Client::v5(), false);
    c.node.authenticators = crate::auth::Authenticators::new().with(Welcome);
    let Packet::Connect(mut packet) = connect(ProtocolVersion::V5, None, None) else {
        unreachable!()
    };
    packet.properties.authentication_method = Some("WELCOME".into());
    c.send(Packet::Connect(packet));
    assert_accepted(&mut c);
    assert_eq!(c.session.username.as_deref(), Some("bob"));
    assert_eq!(failures(&c, "anonymous"), 0);
}
