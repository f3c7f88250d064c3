//! MQTT 5 enhanced authentication (sections 4.12 and 3.15 of the 5.0
//! specification), sans-IO: an [`Authenticator`] is one Authentication Method,
//! and each [`Exchange`] it starts turns the Authentication Data a client sends
//! (in CONNECT, then in AUTH packets) into the next [`Step`]. Nothing here reads
//! or writes a socket; the session code sends AUTH (0x18 Continue
//! authentication) for [`Step::Continue`], CONNACK 0x00 for [`Step::Success`]
//! and CONNACK with the failure's reason code for [`Step::Failure`].
//!
//! The one method so far is SCRAM-SHA-256 ([`scram::ScramSha256`], RFC 5802
//! and RFC 7677), which reads users' keys from [`Credentials`].
//!
//! Plain username and password (CONNECT's fields) are checked against a
//! Mosquitto password file ([`password::PasswordFile`]), as `[auth]`
//! ([`AuthConfig`]) says.

pub mod acl;
pub mod config;
pub mod files;
pub mod password;
pub mod scram;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use starling_proto::mqtt::ReasonCode;

pub use config::AuthConfig;
pub use files::AuthFiles;
pub use password::{PasswordFile, PasswordFileError, Verdict};
pub use scram::{ScramCredential, ScramSha256};

/// One Authentication Method, such as `SCRAM-SHA-256`.
pub trait Authenticator: Send + Sync {
    /// The Authentication Method property this authenticator answers to
    /// (compared exactly, as MQTT compares UTF-8 strings).
    fn method(&self) -> &str;

    /// Starts an exchange for a CONNECT (or a re-authentication, AUTH 0x19)
    /// of `client_id`. The Authentication Data of that packet, if any, goes to
    /// the exchange's first [`Exchange::step`].
    fn start(&self, client_id: &str) -> Box<dyn Exchange>;
}

/// One authentication in progress: a state machine fed with each packet's
/// Authentication Data.
pub trait Exchange: Send {
    /// Takes the Authentication Data of the next packet from the client
    /// (CONNECT first, then AUTH 0x18 packets) and says what to answer. Once
    /// it has returned [`Step::Success`] or [`Step::Failure`] the exchange is
    /// over, and any further call fails with Protocol Error.
    fn step(&mut self, data: Option<&[u8]>) -> Step;
}

/// What an [`Exchange`] asks the server to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send AUTH with reason code 0x18 (Continue authentication) carrying this
    /// Authentication Data, and wait for the client's next AUTH.
    Continue(Vec<u8>),
    /// Authenticated: send CONNACK 0x00 (or AUTH 0x00 after a
    /// re-authentication) carrying `data` as Authentication Data, if any.
    Success {
        data: Option<Vec<u8>>,
        /// Who the client proved to be.
        username: String,
    },
    /// Refused: send CONNACK (or DISCONNECT, during a re-authentication) with
    /// the failure's reason code and close the connection.
    Failure(Failure),
}

/// Why an exchange failed, as the MQTT reason code to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// [`ReasonCode::NotAuthorized`] (0x87) when the client failed to
    /// authenticate (a wrong proof, an unknown user), [`ReasonCode::ProtocolError`]
    /// (0x82) when its messages do not follow the method's protocol,
    /// [`ReasonCode::UnspecifiedError`] (0x80) when the server could not go on.
    pub code: ReasonCode,
    /// A short description for the server's log. It never tells an unknown
    /// user from a wrong password, but is not meant for the client either.
    pub reason: &'static str,
}

impl Failure {
    /// The client did not prove who it claims to be (0x87 Not authorized).
    pub fn not_authorized(reason: &'static str) -> Failure {
        Failure {
            code: ReasonCode::NotAuthorized,
            reason,
        }
    }

    /// The client's messages break the method's protocol (0x82 Protocol Error).
    pub fn protocol(reason: &'static str) -> Failure {
        Failure {
            code: ReasonCode::ProtocolError,
            reason,
        }
    }

    /// The server could not go on (0x80 Unspecified error).
    pub fn server(reason: &'static str) -> Failure {
        Failure {
            code: ReasonCode::UnspecifiedError,
            reason,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.reason, self.code)
    }
}

/// The authentication methods a server offers, by name.
#[derive(Default)]
pub struct Authenticators {
    methods: HashMap<String, Box<dyn Authenticator>>,
}

impl Authenticators {
    pub fn new() -> Authenticators {
        Authenticators::default()
    }

    /// Adds `authenticator` under its [`Authenticator::method`], replacing
    /// (and returning) any other of the same name.
    pub fn insert(
        &mut self,
        authenticator: Box<dyn Authenticator>,
    ) -> Option<Box<dyn Authenticator>> {
        self.methods
            .insert(authenticator.method().to_owned(), authenticator)
    }

    /// [`Authenticators::insert`], builder style.
    pub fn with(mut self, authenticator: impl Authenticator + 'static) -> Authenticators {
        self.insert(Box::new(authenticator));
        self
    }

    /// The authenticator of an Authentication Method, if the server offers it
    /// (if not, CONNACK 0x8C Bad authentication method).
    pub fn find(&self, method: &str) -> Option<&dyn Authenticator> {
        self.methods.get(method).map(|a| a.as_ref())
    }

    /// The names of the methods offered, in no particular order.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }
}

impl fmt::Debug for Authenticators {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.methods.keys()).finish()
    }
}

/// Where authenticators find users' secrets.
pub trait Credentials: Send + Sync {
    /// The SCRAM-SHA-256 credential of `username` (after SCRAM's `=2C`/`=3D`
    /// unescaping), or `None` for an unknown user.
    fn scram(&self, username: &str) -> Option<ScramCredential>;
}

impl<T: Credentials + ?Sized> Credentials for Arc<T> {
    fn scram(&self, username: &str) -> Option<ScramCredential> {
        (**self).scram(username)
    }
}

/// Credentials held in memory, username to credential: enough for tests and
/// until the broker reads a password file.
#[derive(Debug, Clone, Default)]
pub struct MemoryCredentials {
    users: HashMap<String, ScramCredential>,
}

impl MemoryCredentials {
    pub fn new() -> MemoryCredentials {
        MemoryCredentials::default()
    }

    /// Sets the credential of `username`, replacing any it had.
    pub fn insert(&mut self, username: impl Into<String>, credential: ScramCredential) {
        self.users.insert(username.into(), credential);
    }

    /// Sets the password of `username`: a credential with a fresh random salt
    /// and [`ScramCredential::DEFAULT_ITERATIONS`].
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    pub fn insert_password(&mut self, username: impl Into<String>, password: &str) {
        let credential = ScramCredential::generate(password, ScramCredential::DEFAULT_ITERATIONS)
            .expect("the operating system's random number generator failed");
        self.insert(username, credential);
    }

    /// [`MemoryCredentials::insert_password`], builder style.
    pub fn with_password(mut self, username: impl Into<String>, password: &str) -> Self {
        self.insert_password(username, password);
        self
    }

    /// Forgets `username`; true if it was known.
    pub fn remove(&mut self, username: &str) -> bool {
        self.users.remove(username).is_some()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

impl Credentials for MemoryCredentials {
    fn scram(&self, username: &str) -> Option<ScramCredential> {
        self.users.get(username).cloned()
    }
}
