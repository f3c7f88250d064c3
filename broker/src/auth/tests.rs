use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use starling_proto::mqtt::ReasonCode;

use super::*;

// RFC 7677 section 3.
const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

const SECRET: [u8; 32] = [7; 32];

fn rfc_credentials() -> MemoryCredentials {
    let salt = BASE64.decode(RFC_SALT).unwrap();
    let mut credentials = MemoryCredentials::new();
    credentials.insert("user", ScramCredential::derive("pencil", &salt, 4096));
    credentials
}

fn rfc_server() -> ScramSha256 {
    ScramSha256::with_secret(rfc_credentials(), SECRET).with_server_nonce(RFC_SERVER_NONCE)
}

fn step(exchange: &mut dyn Exchange, data: &str) -> Step {
    exchange.step(Some(data.as_bytes()))
}

fn continued(step: Step) -> String {
    match step {
        Step::Continue(data) => String::from_utf8(data).unwrap(),
        other => panic!("expected Continue, got {other:?}"),
    }
}

fn failed(step: Step) -> ReasonCode {
    match step {
        Step::Failure(failure) => failure.code,
        other => panic!("expected Failure, got {other:?}"),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The client side, as RFC 5802 section 3 computes it.
struct Client {
    gs2_header: String,
    client_first_bare: String,
    password: String,
}

impl Client {
    fn new(gs2_header: &str, escaped_name: &str, nonce: &str, password: &str) -> Client {
        Client {
            gs2_header: gs2_header.to_owned(),
            client_first_bare: format!("n={escaped_name},r={nonce}"),
            password: password.to_owned(),
        }
    }

    fn first(&self) -> String {
        format!("{}{}", self.gs2_header, self.client_first_bare)
    }

    /// Client-final for `server_first`, and the server-final to expect.
    fn last(&self, server_first: &str) -> (String, String) {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attribute in server_first.split(',') {
            let (key, value) = attribute.split_at(2);
            match key {
                "r=" => nonce = Some(value),
                "s=" => salt = Some(BASE64.decode(value).unwrap()),
                "i=" => iterations = Some(value.parse::<u32>().unwrap()),
                _ => panic!("unexpected {attribute}"),
            }
        }
        let (nonce, salt, iterations) = (nonce.unwrap(), salt.unwrap(), iterations.unwrap());
        let client_nonce = self.client_first_bare.split(",r=").nth(1).unwrap();
        assert!(nonce.starts_with(client_nonce.split(',').next().unwrap()));
        let mut salted = [0; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(self.password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c={},r={nonce}", BASE64.encode(&self.gs2_header));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        (
            format!("{without_proof},p={}", BASE64.encode(proof)),
            format!("v={}", BASE64.encode(server_signature)),
        )
    }
}

#[test]
fn rfc7677_test_vector() {
    let server = rfc_server();
    let mut exchange = server.start("client-1");
    assert_eq!(
        continued(step(&mut *exchange, RFC_CLIENT_FIRST)),
        RFC_SERVER_FIRST
    );
    assert_eq!(
        step(&mut *exchange, RFC_CLIENT_FINAL),
        Step::Success {
            data: Some(RFC_SERVER_FINAL.as_bytes().to_vec()),
            username: "user".to_owned(),
        }
    );
    // The exchange is over.
    assert_eq!(
        failed(step(&mut *exchange, RFC_CLIENT_FINAL)),
        ReasonCode::ProtocolError
    );
}

#[test]
fn the_test_client_agrees_with_the_rfc() {
    let client = Client::new("n,,", "user", "rOprNGfwEbeRWgbNEkqO", "pencil");
    assert_eq!(client.first(), RFC_CLIENT_FIRST);
    let (client_final, server_final) = client.last(RFC_SERVER_FIRST);
    assert_eq!(client_final, RFC_CLIENT_FINAL);
    assert_eq!(server_final, RFC_SERVER_FINAL);
}

#[test]
fn full_exchange_with_random_nonce_and_escaped_name() {
    let credentials = MemoryCredentials::new().with_password("a,b=c", "s3cret é");
    let server = ScramSha256::new(credentials);
    let client = Client::new("n,,", "a=2Cb=3Dc", "fyko+d2lbbFgONRv9qkxdawL", "s3cret é");
    let mut exchange = server.start("c");
    let server_first = continued(step(&mut *exchange, &client.first()));
    let nonce = server_first.split(',').next().unwrap();
    let server_nonce = nonce.strip_prefix("r=fyko+d2lbbFgONRv9qkxdawL").unwrap();
    assert_eq!(server_nonce.len(), 32);
    assert_eq!(BASE64.decode(server_nonce).unwrap().len(), 24);
    assert!(server_first.ends_with(",i=4096"));

    let (client_final, server_final) = client.last(&server_first);
    assert_eq!(
        step(&mut *exchange, &client_final),
        Step::Success {
            data: Some(server_final.into_bytes()),
            username: "a,b=c".to_owned(),
        }
    );

    // Each exchange has its own server nonce.
    let mut other = server.start("c");
    let again = continued(step(&mut *other, &client.first()));
    assert_ne!(again, server_first);
}

#[test]
fn channel_binding_flag_y_and_authzid_are_accepted() {
    for gs2 in ["y,,", "n,a=user,"] {
        let server = rfc_server();
        let client = Client::new(gs2, "user", "abc", "pencil");
        let mut exchange = server.start("c");
        let server_first = continued(step(&mut *exchange, &client.first()));
        let (client_final, server_final) = client.last(&server_first);
        assert!(client_final.starts_with(&format!("c={},", BASE64.encode(gs2))));
        assert_eq!(
            step(&mut *exchange, &client_final),
            Step::Success {
                data: Some(server_final.into_bytes()),
                username: "user".to_owned(),
            },
            "{gs2}"
        );
    }
}

#[test]
fn another_authzid_is_not_authorized() {
    let mut exchange = rfc_server().start("c");
    assert_eq!(
        failed(step(&mut *exchange, "n,a=admin,n=user,r=abc")),
        ReasonCode::NotAuthorized
    );
}

#[test]
fn wrong_password_fails_at_the_proof() {
    let server = rfc_server();
    let client = Client::new("n,,", "user", "abc", "pencil2");
    let mut exchange = server.start("c");
    let server_first = continued(step(&mut *exchange, &client.first()));
    let (client_final, _) = client.last(&server_first);
    let Step::Failure(failure) = step(&mut *exchange, &client_final) else {
        panic!("a wrong password authenticated");
    };
    assert_eq!(failure.code, ReasonCode::NotAuthorized);
    assert_eq!(
        failed(step(&mut *exchange, &client_final)),
        ReasonCode::ProtocolError
    );
}

#[test]
fn unknown_user_fails_only_at_the_proof() {
    let server = rfc_server();
    let first = |name: &str| {
        let client = Client::new("n,,", name, "abc", "pencil");
        let mut exchange = server.start("c");
        let server_first = continued(step(&mut *exchange, &client.first()));
        (client, exchange, server_first)
    };
    let (client, mut exchange, server_first) = first("nobody");
    // A made-up salt like a real one, the same each time for a name.
    let salt = server_first.split(",s=").nth(1).unwrap();
    let salt = salt.strip_suffix(",i=4096").unwrap();
    assert_eq!(BASE64.decode(salt).unwrap().len(), 16);
    assert_eq!(first("nobody").2, server_first);
    assert_ne!(first("somebody").2, server_first);

    let (client_final, _) = client.last(&server_first);
    let Step::Failure(unknown) = step(&mut *exchange, &client_final) else {
        panic!("an unknown user authenticated");
    };
    assert_eq!(unknown.code, ReasonCode::NotAuthorized);

    // Indistinguishable from a wrong password.
    let client = Client::new("n,,", "user", "abc", "wrong");
    let mut exchange = server.start("c");
    let server_first = continued(step(&mut *exchange, &client.first()));
    let (client_final, _) = client.last(&server_first);
    assert_eq!(step(&mut *exchange, &client_final), Step::Failure(unknown));
}

#[test]
fn unknown_user_iterations_are_configurable() {
    let server = ScramSha256::with_secret(MemoryCredentials::new(), SECRET)
        .unknown_user_iterations(10_000)
        .with_server_nonce("xyz");
    let mut exchange = server.start("c");
    let server_first = continued(step(&mut *exchange, "n,,n=ghost,r=abc"));
    assert!(server_first.starts_with("r=abcxyz,s="));
    assert!(server_first.ends_with(",i=10000"));
}

#[test]
fn malformed_client_first_is_a_protocol_error() {
    let server = rfc_server();
    let cases: &[&[u8]] = &[
        b"",
        b"n",
        b"n,,",
        b"n,,r=abc",            // no username
        b"n,,n=,r=abc",         // empty username
        b"n,,n=user",           // no nonce
        b"n,,n=user,r=",        // empty nonce
        b"n,,n=user,x=abc",     // no nonce
        b"n,,n=user,r=a\x01c",  // unprintable nonce
        b"n,,n=user,r=abc,xyz", // bad extension
        b"n,,m=ext,n=user,r=abc",
        b"n,,n=us=er,r=abc", // bad escape
        b"n,,n=user=2,r=abc",
        b"n,,n=us\0er,r=abc",
        b"x,,n=user,r=abc", // bad gs2 flag
        b"n,n=user,r=abc",  // no authzid field
        b"n,b=user,n=user,r=abc",
        b",,n=user,r=abc",
        b"n,,n=\xff,r=abc", // not UTF-8
    ];
    for case in cases {
        let mut exchange = server.start("c");
        assert_eq!(
            failed(exchange.step(Some(case))),
            ReasonCode::ProtocolError,
            "{}",
            String::from_utf8_lossy(case)
        );
        // Failed for good.
        assert_eq!(
            failed(exchange.step(Some(RFC_CLIENT_FIRST.as_bytes()))),
            ReasonCode::ProtocolError
        );
    }
    let mut exchange = server.start("c");
    assert_eq!(failed(exchange.step(None)), ReasonCode::ProtocolError);
}

#[test]
fn channel_binding_is_refused() {
    let mut exchange = rfc_server().start("c");
    let Step::Failure(failure) = step(&mut *exchange, "p=tls-server-end-point,,n=user,r=abc")
    else {
        panic!("channel binding accepted");
    };
    assert_eq!(failure.code, ReasonCode::ProtocolError);
    assert!(failure.reason.contains("channel binding"));
}

/// An exchange for "user" at the RFC's first step, awaiting client-final.
fn challenged() -> Box<dyn Exchange> {
    let mut exchange = rfc_server().start("c");
    assert_eq!(
        continued(step(&mut *exchange, RFC_CLIENT_FIRST)),
        RFC_SERVER_FIRST
    );
    exchange
}

#[test]
fn client_final_with_wrong_nonce_is_not_authorized() {
    for nonce in [
        "rOprNGfwEbeRWgbNEkqO",
        "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k1",
        "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0x",
    ] {
        let message = format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert_eq!(
            failed(step(&mut *challenged(), &message)),
            ReasonCode::NotAuthorized,
            "{nonce}"
        );
    }
}

#[test]
fn client_final_with_other_channel_binding_is_not_authorized() {
    // "y,," and "n,a=user," instead of the "n,," sent.
    for binding in ["eSws", "bixhPXVzZXIs"] {
        let message = RFC_CLIENT_FINAL.replace("c=biws", &format!("c={binding}"));
        assert_eq!(
            failed(step(&mut *challenged(), &message)),
            ReasonCode::NotAuthorized,
            "{binding}"
        );
    }
}

#[test]
fn malformed_client_final_is_a_protocol_error() {
    let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    let cases = [
        String::new(),
        format!("c=biws,r={nonce}"),                        // no proof
        format!("c=biws,r={nonce},p="),                     // empty proof
        format!("c=biws,r={nonce},p=not base64!"),          // bad base64
        format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9"), // short proof
        format!("c=bi*s,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
        format!("r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
        "c=biws,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=".to_owned(),
        format!("c=biws,r={nonce},,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
    ];
    for case in &cases {
        assert_eq!(
            failed(step(&mut *challenged(), case)),
            ReasonCode::ProtocolError,
            "{case}"
        );
    }
    assert_eq!(failed(challenged().step(None)), ReasonCode::ProtocolError);
    assert_eq!(
        failed(challenged().step(Some(b"c=biws,r=\xff,p=AAAA"))),
        ReasonCode::ProtocolError
    );
}

#[test]
fn extensions_are_ignored() {
    let mut client = Client::new("n,,", "user", "abc", "pencil");
    // An extension in client-first is part of client-first-message-bare, so
    // of AuthMessage.
    client.client_first_bare.push_str(",x=1");
    let mut exchange = rfc_server().start("c");
    let server_first = continued(step(&mut *exchange, &client.first()));
    let (client_final, server_final) = client.last(&server_first);
    assert_eq!(
        step(&mut *exchange, &client_final),
        Step::Success {
            data: Some(server_final.into_bytes()),
            username: "user".to_owned(),
        }
    );

    // One in client-final is signed too: the server takes it into AuthMessage.
    let client = Client::new("n,,", "user", "abc", "pencil");
    let mut exchange = rfc_server().start("c");
    let server_first = continued(step(&mut *exchange, &client.first()));
    let (client_final, _) = client.last(&server_first);
    let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
    let extended = format!("{without_proof},y=2,p={proof}");
    assert_eq!(
        failed(step(&mut *exchange, &extended)),
        ReasonCode::NotAuthorized
    );
}

#[test]
fn registry_finds_methods_by_exact_name() {
    let authenticators = Authenticators::new().with(rfc_server());
    assert!(!authenticators.is_empty());
    assert_eq!(
        authenticators.methods().collect::<Vec<_>>(),
        vec!["SCRAM-SHA-256"]
    );
    let scram = authenticators.find("SCRAM-SHA-256").unwrap();
    assert_eq!(scram.method(), ScramSha256::METHOD);
    let mut exchange = scram.start("c");
    assert_eq!(
        continued(step(&mut *exchange, RFC_CLIENT_FIRST)),
        RFC_SERVER_FIRST
    );
    assert!(authenticators.find("scram-sha-256").is_none());
    assert!(authenticators.find("SCRAM-SHA-1").is_none());
    assert!(Authenticators::new().find("SCRAM-SHA-256").is_none());
}

#[test]
fn credentials_can_be_shared() {
    let credentials: Arc<dyn Credentials> = Arc::new(rfc_credentials());
    let server = ScramSha256::with_secret(credentials.clone(), SECRET);
    assert!(credentials.scram("user").is_some());
    assert!(credentials.scram("nobody").is_none());
    let mut exchange = server.start("c");
    assert!(matches!(
        step(&mut *exchange, RFC_CLIENT_FIRST),
        Step::Continue(_)
    ));
}

#[test]
fn credentials_derive_as_rfc_5802_says() {
    let salt = BASE64.decode(RFC_SALT).unwrap();
    let credential = ScramCredential::derive("pencil", &salt, 4096);
    let mut salted = [0; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(b"pencil", &salt, 4096, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    assert_eq!(
        credential.stored_key,
        <[u8; 32]>::from(Sha256::digest(client_key))
    );
    assert_eq!(credential.server_key, hmac(&salted, b"Server Key"));
    assert_eq!(credential.iterations, 4096);
    assert_eq!(credential.salt, salt);

    let generated = ScramCredential::generate("pencil", 4096).unwrap();
    assert_eq!(generated.salt.len(), ScramCredential::SALT_LEN);
    assert_ne!(generated, credential);
    let debug = format!("{generated:?}");
    assert!(debug.contains("<redacted>"));
    assert!(!debug.contains(&format!("{:?}", generated.stored_key)));
}

#[test]
fn memory_credentials() {
    let mut credentials = MemoryCredentials::new();
    assert!(credentials.is_empty());
    credentials.insert_password("alice", "one");
    let first = credentials.scram("alice").unwrap();
    credentials.insert_password("alice", "two");
    assert_eq!(credentials.len(), 1);
    assert_ne!(credentials.scram("alice").unwrap(), first);
    assert!(credentials.remove("alice"));
    assert!(!credentials.remove("alice"));
    assert!(credentials.scram("alice").is_none());
}
