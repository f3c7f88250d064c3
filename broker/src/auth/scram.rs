//! SCRAM-SHA-256 (RFC 5802, with SHA-256 as RFC 7677 registers it), server
//! side, as the MQTT 5 Authentication Method `SCRAM-SHA-256`.
//!
//! The exchange, each message being one packet's Authentication Data:
//!
//! ```text
//! CONNECT  client-first  n,,n=user,r=<client nonce>
//! AUTH 18  server-first  r=<client nonce><server nonce>,s=<base64 salt>,i=<iterations>
//! AUTH 18  client-final  c=biws,r=<client nonce><server nonce>,p=<base64 ClientProof>
//! CONNACK  server-final  v=<base64 ServerSignature>
//! ```
//!
//! The server keeps no password, only [`ScramCredential`]: StoredKey to check
//! the client's proof and ServerKey to prove itself in turn.
//!
//! Channel binding is not offered (there is no `SCRAM-SHA-256-PLUS`): a client
//! asking for it (gs2 flag `p=`) is refused; `n` and `y` are accepted. An
//! authorization identity (`a=`) is accepted only when it names the user
//! authenticating. An unknown user gets a server-first message like any other,
//! with a salt derived from its name and a server secret, and fails only at the
//! proof, so that the exchange does not tell which users exist (RFC 5802
//! section 9).
//!
//! Names and passwords are not SASLprep-normalised (RFC 4013): they are
//! compared and hashed as the UTF-8 the client sent, which is the same thing
//! for the ASCII names and passwords of most deployments.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::{Authenticator, Credentials, Exchange, Failure, Step};

type HmacSha256 = Hmac<Sha256>;

/// The length of SHA-256 output, and so of every SCRAM-SHA-256 key.
pub const KEY_LEN: usize = 32;
/// Random bytes in a server nonce (sent as base64, 32 characters).
const NONCE_LEN: usize = 24;

/// What a server stores of a user's password for SCRAM-SHA-256 (RFC 5802
/// section 3):
///
/// ```text
/// SaltedPassword = Hi(password, salt, iterations)   (PBKDF2-HMAC-SHA-256)
/// ClientKey      = HMAC(SaltedPassword, "Client Key")
/// StoredKey      = H(ClientKey)
/// ServerKey      = HMAC(SaltedPassword, "Server Key")
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; KEY_LEN],
    pub server_key: [u8; KEY_LEN],
}

impl ScramCredential {
    /// The iteration count RFC 7677 asks for at least.
    pub const DEFAULT_ITERATIONS: u32 = 4096;
    /// The length of salts [`ScramCredential::generate`] draws.
    pub const SALT_LEN: usize = 16;

    /// The credential of `password` with `salt` and `iterations`.
    ///
    /// # Panics
    ///
    /// If `iterations` is 0.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramCredential {
        assert!(iterations > 0, "SCRAM needs at least one iteration");
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        ScramCredential {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// The credential of `password` with a fresh random salt of
    /// [`ScramCredential::SALT_LEN`] bytes.
    ///
    /// # Panics
    ///
    /// If `iterations` is 0.
    pub fn generate(password: &str, iterations: u32) -> Result<ScramCredential, getrandom::Error> {
        let mut salt = [0; Self::SALT_LEN];
        getrandom::fill(&mut salt)?;
        Ok(ScramCredential::derive(password, &salt, iterations))
    }
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("salt", &BASE64.encode(&self.salt))
            .field("iterations", &self.iterations)
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

/// RFC 5802's Hi(): PBKDF2 with HMAC-SHA-256, one block.
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let mut out = [0; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

/// HMAC-SHA-256 of the concatenation of `parts`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

/// The `SCRAM-SHA-256` authentication method.
#[derive(Clone)]
pub struct ScramSha256 {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    credentials: Arc<dyn Credentials>,
    /// Key of the salts and keys made up for unknown users.
    secret: [u8; KEY_LEN],
    /// The iteration count announced for unknown users.
    unknown_iterations: u32,
    #[cfg(test)]
    fixed_nonce: Option<String>,
}

impl ScramSha256 {
    /// The Authentication Method's name.
    pub const METHOD: &'static str = "SCRAM-SHA-256";

    /// The method, with users' keys from `credentials` and a random secret for
    /// the salts of unknown users: the same name gets the same salt as long
    /// as this value lives (see [`ScramSha256::with_secret`] to keep it across
    /// restarts).
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    pub fn new(credentials: impl Credentials + 'static) -> ScramSha256 {
        let mut secret = [0; KEY_LEN];
        getrandom::fill(&mut secret)
            .expect("the operating system's random number generator failed");
        ScramSha256::with_secret(credentials, secret)
    }

    /// The method with a given secret for the salts of unknown users. Keep the
    /// secret secret, and the same across restarts, or a client asking twice
    /// could tell a made-up salt from a real one.
    pub fn with_secret(credentials: impl Credentials + 'static, secret: [u8; KEY_LEN]) -> Self {
        ScramSha256 {
            inner: Arc::new(Inner {
                credentials: Arc::new(credentials),
                secret,
                unknown_iterations: ScramCredential::DEFAULT_ITERATIONS,
                #[cfg(test)]
                fixed_nonce: None,
            }),
        }
    }

    /// The iteration count announced to unknown users (by default
    /// [`ScramCredential::DEFAULT_ITERATIONS`]): make it the one real
    /// credentials use.
    pub fn unknown_user_iterations(mut self, iterations: u32) -> ScramSha256 {
        Arc::make_mut(&mut self.inner).unknown_iterations = iterations.max(1);
        self
    }

    /// Every exchange uses `nonce` as the server's part of the nonce.
    #[cfg(test)]
    pub(crate) fn with_server_nonce(mut self, nonce: &str) -> ScramSha256 {
        Arc::make_mut(&mut self.inner).fixed_nonce = Some(nonce.to_owned());
        self
    }
}

impl fmt::Debug for ScramSha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSha256")
            .field("unknown_iterations", &self.inner.unknown_iterations)
            .finish_non_exhaustive()
    }
}

impl Authenticator for ScramSha256 {
    fn method(&self) -> &str {
        Self::METHOD
    }

    fn start(&self, _client_id: &str) -> Box<dyn Exchange> {
        Box::new(ScramExchange {
            inner: self.inner.clone(),
            state: State::Start,
        })
    }
}

impl Inner {
    fn server_nonce(&self) -> Option<String> {
        #[cfg(test)]
        if let Some(nonce) = &self.fixed_nonce {
            return Some(nonce.clone());
        }
        let mut bytes = [0; NONCE_LEN];
        getrandom::fill(&mut bytes).ok()?;
        Some(BASE64.encode(bytes))
    }

    /// A credential for a user that does not exist: stable for a name, looking
    /// like any other, and matching no proof.
    fn unknown_user(&self, username: &str) -> ScramCredential {
        let name = username.as_bytes();
        let salt = hmac(&self.secret, &[b"salt\0", name]);
        ScramCredential {
            salt: salt[..ScramCredential::SALT_LEN].to_vec(),
            iterations: self.unknown_iterations,
            stored_key: hmac(&self.secret, &[b"stored key\0", name]),
            server_key: hmac(&self.secret, &[b"server key\0", name]),
        }
    }
}

/// One SCRAM-SHA-256 exchange.
pub struct ScramExchange {
    inner: Arc<Inner>,
    state: State,
}

enum State {
    /// Waiting for client-first.
    Start,
    /// Server-first sent, waiting for client-final.
    Challenged(Box<Challenged>),
    /// Succeeded or failed.
    Done,
}

struct Challenged {
    username: String,
    /// `n,,` or `y,,` (with any authorization identity), which client-final
    /// must repeat in `c=`.
    gs2_header: String,
    /// Client and server nonce together.
    nonce: String,
    /// client-first-message-bare "," server-first-message ",": the start of
    /// AuthMessage.
    auth_prefix: String,
    credential: ScramCredential,
    /// False when `credential` is made up for an unknown user.
    known: bool,
}

impl fmt::Debug for ScramExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Start => "start",
            State::Challenged(_) => "challenged",
            State::Done => "done",
        };
        f.debug_struct("ScramExchange")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl Exchange for ScramExchange {
    fn step(&mut self, data: Option<&[u8]>) -> Step {
        let result = match std::mem::replace(&mut self.state, State::Done) {
            State::Start => self.client_first(data).map(|(challenged, server_first)| {
                self.state = State::Challenged(Box::new(challenged));
                Step::Continue(server_first.into_bytes())
            }),
            State::Challenged(challenged) => client_final(&challenged, data),
            State::Done => Err(Failure::protocol("SCRAM exchange already over")),
        };
        result.unwrap_or_else(Step::Failure)
    }
}

impl ScramExchange {
    /// Reads client-first, answers server-first.
    fn client_first(&self, data: Option<&[u8]>) -> Result<(Challenged, String), Failure> {
        let message = utf8(data, "no SCRAM client-first message")?;
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = message
            .split_once(',')
            .ok_or(Failure::protocol("SCRAM client-first without gs2 header"))?;
        match flag {
            "n" | "y" => {}
            _ if flag.starts_with("p=") => {
                return Err(Failure::protocol("SCRAM channel binding is not supported"))
            }
            _ => return Err(Failure::protocol("bad SCRAM gs2 channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(Failure::protocol("SCRAM client-first without gs2 header"))?;
        let gs2_header = &message[..message.len() - bare.len()];
        let authzid = match authzid {
            "" => None,
            _ => {
                Some(saslname(authzid.strip_prefix("a=").ok_or(
                    Failure::protocol("bad SCRAM authorization identity"),
                )?)?)
            }
        };
        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let mut attributes = bare.split(',');
        let name = attributes.next().unwrap_or_default();
        if name.starts_with("m=") {
            return Err(Failure::protocol("SCRAM mandatory extension not supported"));
        }
        let username = saslname(
            name.strip_prefix("n=")
                .ok_or(Failure::protocol("SCRAM client-first without username"))?,
        )?;
        let client_nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(Failure::protocol("SCRAM client-first without nonce"))?;
        check_nonce(client_nonce)?;
        attributes.try_for_each(check_extension)?;
        if authzid.is_some_and(|authzid| authzid != username) {
            return Err(Failure::not_authorized(
                "SCRAM authorization identity is not the username",
            ));
        }

        let server_nonce = self
            .inner
            .server_nonce()
            .ok_or(Failure::server("no random numbers for the SCRAM nonce"))?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let (credential, known) = match self.inner.credentials.scram(&username) {
            Some(credential) => (credential, true),
            None => (self.inner.unknown_user(&username), false),
        };
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credential.salt),
            credential.iterations
        );
        let challenged = Challenged {
            username,
            gs2_header: gs2_header.to_owned(),
            nonce,
            auth_prefix: format!("{bare},{server_first},"),
            credential,
            known,
        };
        Ok((challenged, server_first))
    }
}

/// Reads client-final: checks the proof, answers server-final.
fn client_final(challenged: &Challenged, data: Option<&[u8]>) -> Result<Step, Failure> {
    let message = utf8(data, "no SCRAM client-final message")?;
    // client-final-message = channel-binding "," nonce ["," extensions] "," proof
    let (without_proof, proof) = message
        .rsplit_once(",p=")
        .ok_or(Failure::protocol("SCRAM client-final without proof"))?;
    let mut attributes = without_proof.split(',');
    let binding = attributes
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or(Failure::protocol(
            "SCRAM client-final without channel binding",
        ))?;
    let nonce = attributes
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(Failure::protocol("SCRAM client-final without nonce"))?;
    attributes.try_for_each(check_extension)?;
    let binding = BASE64
        .decode(binding)
        .map_err(|_| Failure::protocol("SCRAM channel binding is not base64"))?;
    let proof: [u8; KEY_LEN] = BASE64
        .decode(proof)
        .map_err(|_| Failure::protocol("SCRAM proof is not base64"))?
        .try_into()
        .map_err(|_| Failure::protocol("SCRAM proof of the wrong length"))?;
    if binding != challenged.gs2_header.as_bytes() {
        return Err(Failure::not_authorized(
            "SCRAM channel binding does not repeat the gs2 header",
        ));
    }
    if nonce != challenged.nonce {
        return Err(Failure::not_authorized("SCRAM nonce is not the exchange's"));
    }

    let credential = &challenged.credential;
    let auth_message = [challenged.auth_prefix.as_bytes(), without_proof.as_bytes()];
    let client_signature = hmac(&credential.stored_key, &auth_message);
    let mut client_key = proof;
    for (k, s) in client_key.iter_mut().zip(client_signature) {
        *k ^= s;
    }
    let matches = sha256(&client_key).ct_eq(&credential.stored_key)
        & Choice::from(u8::from(challenged.known));
    if !bool::from(matches) {
        // The same failure for an unknown user as for a wrong password.
        return Err(Failure::not_authorized("SCRAM authentication failed"));
    }
    let server_signature = hmac(&credential.server_key, &auth_message);
    Ok(Step::Success {
        data: Some(format!("v={}", BASE64.encode(server_signature)).into_bytes()),
        username: challenged.username.clone(),
    })
}

fn utf8<'a>(data: Option<&'a [u8]>, missing: &'static str) -> Result<&'a str, Failure> {
    let data = data.ok_or(Failure::protocol(missing))?;
    std::str::from_utf8(data).map_err(|_| Failure::protocol("SCRAM message is not UTF-8"))
}

/// Unescapes a saslname (`=2C` is `,` and `=3D` is `=`; any other `=` is an
/// error, RFC 5802 section 5.1).
fn saslname(escaped: &str) -> Result<String, Failure> {
    let bad = || Failure::protocol("bad SCRAM name");
    if escaped.is_empty() || escaped.contains('\0') {
        return Err(bad());
    }
    let mut name = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(at) = rest.find('=') {
        name.push_str(&rest[..at]);
        let escape = rest.get(at + 1..at + 3).ok_or_else(bad)?;
        name.push(match escape {
            "2C" => ',',
            "3D" => '=',
            _ => return Err(bad()),
        });
        rest = &rest[at + 3..];
    }
    name.push_str(rest);
    Ok(name)
}

/// A nonce is printable ASCII but `,`.
fn check_nonce(nonce: &str) -> Result<(), Failure> {
    match !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        true => Ok(()),
        false => Err(Failure::protocol("bad SCRAM nonce")),
    }
}

/// An optional extension, `<letter>=<value>`, which the server ignores.
fn check_extension(attribute: &str) -> Result<(), Failure> {
    match attribute.as_bytes() {
        [letter, b'=', ..] if letter.is_ascii_alphabetic() => Ok(()),
        _ => Err(Failure::protocol("bad SCRAM attribute")),
    }
}
