//! Mosquitto's password file: `user:hash` lines, as `mosquitto_passwd`
//! writes them and `password_file` in `mosquitto.conf` reads them.
//!
//! Blank lines and lines starting with `#` are ignored (and kept by
//! [`PasswordFile::save`]). A hash is one of the two formats Mosquitto 2
//! reads without the argon2 build option (`common/password_mosq.c`), each
//! field in standard base64 with padding:
//!
//! ```text
//! $6$<salt>$<SHA-512(password || salt)>
//! $7$<iterations>$<salt>$<PBKDF2-HMAC-SHA-512(password, salt, iterations, 64 bytes)>
//! ```
//!
//! The salt is 12 bytes (or 64, which later Mosquitto versions draw), the
//! hash 64; the password is hashed as the bytes the client sent. New entries
//! are written as `mosquitto_passwd` writes them by default: `$7$`, 101
//! iterations, a random 12-byte salt.
//!
//! Checks run in constant time, and an unknown user costs a hash computation
//! as a known one does, so that timing tells neither a password's bytes nor
//! which users exist.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::alphabet::STANDARD as ALPHABET;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use sha2::{Digest as _, Sha512};
use subtle::ConstantTimeEq as _;

/// The iterations `mosquitto_passwd` uses for `$7$` (`PW_DEFAULT_ITERATIONS`).
pub const DEFAULT_ITERATIONS: u32 = 101;
/// The salt length `mosquitto_passwd` 2.0 draws.
pub const SALT_LEN: usize = 12;
/// The length of a SHA-512 hash, and of every stored hash.
pub const HASH_LEN: usize = 64;
/// The salt lengths Mosquitto reads.
const SALT_LENS: [usize; 2] = [SALT_LEN, HASH_LEN];

/// Standard base64 with padding, as OpenSSL writes it; missing padding is
/// accepted when reading.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &ALPHABET,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What checking a username and password found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The user is in the file and the password matches.
    Ok,
    /// No such user (a hash was still computed).
    UnknownUser,
    /// The user is in the file, the password does not match.
    WrongPassword,
}

/// How a hash was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `$6$`: one SHA-512 of the password then the salt.
    Sha512,
    /// `$7$`: PBKDF2-HMAC-SHA-512.
    Pbkdf2 { iterations: u32 },
}

/// One user's stored password: scheme, salt and hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    scheme: Scheme,
    salt: Vec<u8>,
    hash: [u8; HASH_LEN],
}

impl PasswordHash {
    /// Reads a `$6$` or `$7$` hash, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<PasswordHash, &'static str> {
        let mut fields = text.split('$');
        if fields.next() != Some("") {
            return Err("the hash does not start with $6$ or $7$");
        }
        let scheme = match fields.next() {
            Some("6") => Scheme::Sha512,
            Some("7") => {
                let iterations = fields
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|n| *n > 0)
                    .ok_or("the iteration count of a $7$ hash is not a positive number")?;
                Scheme::Pbkdf2 { iterations }
            }
            Some(_) => return Err("unknown hash type: only $6$ and $7$ are supported"),
            None => return Err("the hash does not start with $6$ or $7$"),
        };
        let (Some(salt), Some(hash), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err("the hash does not have its fields: salt and hash, separated by $");
        };
        let salt = BASE64
            .decode(salt)
            .map_err(|_| "the salt is not valid base64")?;
        if !SALT_LENS.contains(&salt.len()) {
            return Err("the salt is neither 12 nor 64 bytes long");
        }
        let hash = BASE64
            .decode(hash)
            .map_err(|_| "the hash is not valid base64")?
            .try_into()
            .map_err(|_| "the hash is not 64 bytes long")?;
        Ok(PasswordHash { scheme, salt, hash })
    }

    /// A `$7$` hash of `password` with a random 12-byte salt and 101
    /// iterations, as `mosquitto_passwd` makes by default.
    pub fn generate(password: &[u8]) -> Result<PasswordHash, getrandom::Error> {
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt)?;
        Ok(PasswordHash::pbkdf2(password, &salt, DEFAULT_ITERATIONS))
    }

    /// The `$7$` hash of `password` with `salt` and `iterations`.
    ///
    /// # Panics
    ///
    /// If `iterations` is 0, or `salt` neither 12 nor 64 bytes long.
    pub fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> PasswordHash {
        assert!(iterations > 0, "PBKDF2 needs at least one iteration");
        assert!(
            SALT_LENS.contains(&salt.len()),
            "salt of {} bytes",
            salt.len()
        );
        let scheme = Scheme::Pbkdf2 { iterations };
        let hash = digest(scheme, password, salt);
        PasswordHash {
            scheme,
            salt: salt.to_vec(),
            hash,
        }
    }

    /// Whether `password` is the one hashed, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let computed = digest(self.scheme, password, &self.salt);
        computed.ct_eq(&self.hash).into()
    }
}

/// The hash of `password` with `salt` under `scheme`.
fn digest(scheme: Scheme, password: &[u8], salt: &[u8]) -> [u8; HASH_LEN] {
    match scheme {
        Scheme::Sha512 => {
            let mut hasher = Sha512::new();
            hasher.update(password);
            hasher.update(salt);
            hasher.finalize().into()
        }
        Scheme::Pbkdf2 { iterations } => {
            let mut out = [0u8; HASH_LEN];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
            out
        }
    }
}

impl fmt::Display for PasswordHash {
    /// The hash as the file holds it: `$6$salt$hash` or `$7$n$salt$hash`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let salt = BASE64.encode(&self.salt);
        let hash = BASE64.encode(self.hash);
        match self.scheme {
            Scheme::Sha512 => write!(f, "$6${salt}${hash}"),
            Scheme::Pbkdf2 { iterations } => write!(f, "$7${iterations}${salt}${hash}"),
        }
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHash")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// Why a password file could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read password file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password file {}, line {line}: {reason}", .path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot write password file {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid username {0:?}: it must be non-empty, without ':' or control characters")]
    InvalidUser(String),
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
}

/// One line of the file, kept as read so that saving changes only the
/// entries that were set.
#[derive(Debug, Clone)]
struct Line {
    text: String,
    /// The user this line holds the entry of, if it is one.
    user: Option<String>,
}

/// A Mosquitto password file in memory: every user's hash, and the lines
/// as read, comments included.
#[derive(Clone)]
pub struct PasswordFile {
    lines: Vec<Line>,
    users: HashMap<String, PasswordHash>,
    /// What an unknown user's password is checked against, so that it costs
    /// what a known user's does.
    decoy: PasswordHash,
}

impl Default for PasswordFile {
    fn default() -> Self {
        PasswordFile {
            lines: Vec::new(),
            users: HashMap::new(),
            decoy: PasswordHash::pbkdf2(b"", &[0x5a; SALT_LEN], DEFAULT_ITERATIONS),
        }
    }
}

impl fmt::Debug for PasswordFile {
    /// The number of users; no hash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// An empty file, with no user.
    pub fn new() -> PasswordFile {
        PasswordFile::default()
    }

    /// Reads the file at `path`. An unreadable file, or a line that is
    /// neither blank, nor a comment, nor a `user:hash` entry Mosquitto would
    /// read, is an error naming the file (and the line).
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        PasswordFile::parse(&text).map_err(|(line, reason)| PasswordFileError::Malformed {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// Reads `text`, a password file's content; an error gives the line
    /// number (from 1) and what is wrong with it.
    pub fn parse(text: &str) -> Result<PasswordFile, (usize, String)> {
        let mut file = PasswordFile::new();
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        for (at, raw) in text.lines().enumerate() {
            let number = at + 1;
            // `lines` takes "\r\n" for a line end, but leaves a "\r" before it
            // ("a\r\r\n") or at the end of the text ("a\r"): dropped here too,
            // or `to_text` would write "a\r\n", which reads back as "a", and
            // the file would change at every save.
            let raw = raw.trim_end_matches('\r');
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                file.lines.push(Line {
                    text: raw.to_owned(),
                    user: None,
                });
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err((number, "not a user:hash entry".to_owned()));
            };
            let user = user.trim();
            if user.is_empty() {
                return Err((number, "the username is empty".to_owned()));
            }
            let hash = PasswordHash::parse(hash.trim())
                .map_err(|reason| (number, format!("user {user:?}: {reason}")))?;
            if let Some(first) = first_seen.insert(user.to_owned(), number) {
                return Err((
                    number,
                    format!("user {user:?} was already listed on line {first}"),
                ));
            }
            file.users.insert(user.to_owned(), hash);
            file.lines.push(Line {
                text: raw.to_owned(),
                user: Some(user.to_owned()),
            });
        }
        Ok(file)
    }

    /// Checks `password` for `user`. An unknown user's password is hashed
    /// all the same, so that the answer takes as long.
    pub fn verify(&self, user: &str, password: &[u8]) -> Verdict {
        match self.users.get(user) {
            Some(hash) if hash.verify(password) => Verdict::Ok,
            Some(_) => Verdict::WrongPassword,
            None => {
                std::hint::black_box(self.decoy.verify(password));
                Verdict::UnknownUser
            }
        }
    }

    /// Sets the password of `user` (a new `$7$` entry at the end for a new
    /// user, or its line replaced); other lines stay as they are.
    pub fn set(&mut self, user: &str, password: &[u8]) -> Result<(), PasswordFileError> {
        if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
            return Err(PasswordFileError::InvalidUser(user.to_owned()));
        }
        let hash = PasswordHash::generate(password).map_err(PasswordFileError::Random)?;
        let text = format!("{user}:{hash}");
        match self
            .lines
            .iter_mut()
            .find(|line| line.user.as_deref() == Some(user))
        {
            Some(line) => line.text = text,
            None => self.lines.push(Line {
                text,
                user: Some(user.to_owned()),
            }),
        }
        self.users.insert(user.to_owned(), hash);
        Ok(())
    }

    /// Whether `user` has an entry.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// How many users the file holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The file's content: its lines as read, with the entries set since.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            text.push_str(&line.text);
            text.push('\n');
        }
        text
    }

    /// Writes the file to `path`: to a temporary file beside it, flushed, then
    /// renamed over it, so that a reader sees the old file or the new one. A
    /// new file is readable by its owner only; an existing one keeps its
    /// permissions.
    pub fn save(&self, path: &Path) -> Result<(), PasswordFileError> {
        let error = |source| PasswordFileError::Write {
            path: path.to_owned(),
            source,
        };
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".tmp{}", std::process::id()));
        let temp = path.with_file_name(name);
        let write = || -> std::io::Result<()> {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temp)?;
            if let Ok(existing) = std::fs::metadata(path) {
                file.set_permissions(existing.permissions())?;
            }
            file.write_all(self.to_text().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            error(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by Debian's mosquitto 2.0.11:
    /// `mosquitto_passwd -H sha512 -c -b FILE alice secret`.
    const SHA512_ALICE: &str = "alice:$6$/AxA35LSzzuQf0Vs$lwhJVaZq9mELA538f0GE9AtX/klLTyzTVq0n/W67\
                                gGrrdZUoYKB09tL05kYR5uaC45hGBzq9hBQGv2lLskGwFg==";
    /// `mosquitto_passwd -c -b FILE bob hunter2` (the default, `$7$`).
    const PBKDF2_BOB: &str = "bob:$7$101$4h+XtbRu17tqD3/Q$Cc9LKLfxzEqn1eYU6XLu17t3H2pE+ouiITYDEn\
                              H62TRchDRXVdu/F7WNpjFg+HwLIr7kEap3V7MdlB9ulhBaoQ==";
    /// Python's hashlib: a 64-byte salt (0, 1, .., 63), 1000 iterations,
    /// a non-ASCII password ("pässwörd" in UTF-8).
    const PBKDF2_CAROL: &str = "carol:$7$1000$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCU\
                                mJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==$u2kfHFunJisdrj5AoASSxyQMBdD5\
                                HWfqWMNhZ/x2w1spBDSBFIfJUbercEctC0Fe0XP9cJqgPO/7oe8IhnY2XA==";

    fn file(lines: &[&str]) -> PasswordFile {
        PasswordFile::parse(&lines.join("\n")).expect("valid file")
    }

    #[test]
    fn mosquitto_sha512_entries_verify() {
        let file = file(&[SHA512_ALICE]);
        assert_eq!(file.verify("alice", b"secret"), Verdict::Ok);
        assert_eq!(file.verify("alice", b"Secret"), Verdict::WrongPassword);
        assert_eq!(file.verify("alice", b""), Verdict::WrongPassword);
        assert_eq!(file.verify("bob", b"secret"), Verdict::UnknownUser);
    }

    #[test]
    fn mosquitto_pbkdf2_entries_verify() {
        let file = file(&[PBKDF2_BOB, PBKDF2_CAROL]);
        assert_eq!(file.verify("bob", b"hunter2"), Verdict::Ok);
        assert_eq!(file.verify("bob", b"hunter3"), Verdict::WrongPassword);
        assert_eq!(file.verify("carol", "pässwörd".as_bytes()), Verdict::Ok);
        assert_eq!(file.verify("carol", b"passwoerd"), Verdict::WrongPassword);
        assert_eq!(file.verify("Bob", b"hunter2"), Verdict::UnknownUser);
    }

    #[test]
    fn hashes_are_written_as_mosquitto_writes_them() {
        // Python: pbkdf2_hmac("sha512", b"pw", bytes(range(12)), 101).
        let expected = "$7$101$AAECAwQFBgcICQoL$l8zqSPOVOsX6BzXddvHVSUz51tfFGYiwZgYMerEYSK2km\
                        FD86m93us2E5cM8HAComZhsUAqG/9HmFNzmBd+GRQ==";
        let salt: Vec<u8> = (0..12).collect();
        let hash = PasswordHash::pbkdf2(b"pw", &salt, DEFAULT_ITERATIONS);
        assert_eq!(hash.to_string(), expected);
        assert_eq!(PasswordHash::parse(expected), Ok(hash));
        for entry in [SHA512_ALICE, PBKDF2_BOB, PBKDF2_CAROL] {
            let (_, text) = entry.split_once(':').unwrap();
            assert_eq!(PasswordHash::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn generated_hashes_are_pbkdf2_with_a_fresh_12_byte_salt() {
        let one = PasswordHash::generate(b"pw").unwrap();
        let two = PasswordHash::generate(b"pw").unwrap();
        assert_ne!(one, two, "each hash has its own salt");
        let text = one.to_string();
        let fields: Vec<&str> = text.split('$').collect();
        assert_eq!(fields[..3], ["", "7", "101"]);
        assert_eq!(BASE64.decode(fields[3]).unwrap().len(), SALT_LEN);
        assert_eq!(BASE64.decode(fields[4]).unwrap().len(), HASH_LEN);
        assert!(one.verify(b"pw") && two.verify(b"pw"));
        assert!(!one.verify(b"pw "));
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let text = format!("# users\n\n   \n{PBKDF2_BOB}\r\n  # indented comment\n");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 1);
        assert_eq!(file.verify("bob", b"hunter2"), Verdict::Ok);
    }

    #[test]
    fn malformed_lines_are_named() {
        let good = PBKDF2_BOB;
        let (_, hash) = good.split_once(':').unwrap();
        let cases = [
            ("just-a-name", "not a user:hash"),
            (":$6$x$y", "username is empty"),
            ("eve:plaintext", "does not start"),
            ("eve:$5$abc$def", "unknown hash type"),
            ("eve:$7$0$AAECAwQFBgcICQoL$AAAA", "iteration count"),
            ("eve:$7$x$AAECAwQFBgcICQoL$AAAA", "iteration count"),
            ("eve:$6$AAECAwQFBgcICQoL", "fields"),
            ("eve:$6$AAEC$AAAA", "salt is neither"),
            ("eve:$6$!!!!$AAAA", "salt is not valid base64"),
            ("eve:$6$AAECAwQFBgcICQoL$AAAA", "not 64 bytes"),
            ("eve:$6$AAECAwQFBgcICQoL$@@", "hash is not valid base64"),
        ];
        for (line, reason) in cases {
            let text = format!("# header\n{good}\n{line}\n");
            let (number, why) = PasswordFile::parse(&text).unwrap_err();
            assert_eq!(number, 3, "{line}");
            assert!(why.contains(reason), "{line}: {why}");
        }
        let twice = format!("{good}\nbob:{hash}\n");
        let (number, why) = PasswordFile::parse(&twice).unwrap_err();
        assert_eq!(number, 2);
        assert!(why.contains("line 1"), "{why}");
    }

    #[test]
    fn load_names_the_file_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, format!("{PBKDF2_BOB}\nbroken\n")).unwrap();
        let e = PasswordFile::load(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("line 2"),
            "{e}"
        );
        let missing = dir.path().join("missing");
        let e = PasswordFile::load(&missing).unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.contains("missing"), "{e}");
    }

    #[test]
    fn set_and_save_keep_the_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let original = format!("# managed by hand\n{SHA512_ALICE}\n\n{PBKDF2_BOB}\n");
        std::fs::write(&path, &original).unwrap();
        let mut file = PasswordFile::load(&path).unwrap();
        file.set("bob", b"new password").unwrap();
        file.set("dave", b"d").unwrap();
        file.save(&path).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(lines[..3], ["# managed by hand", SHA512_ALICE, ""]);
        assert!(lines[3].starts_with("bob:$7$101$"), "{text}");
        assert!(lines[4].starts_with("dave:$7$101$"), "{text}");
        let reread = PasswordFile::load(&path).unwrap();
        assert_eq!(reread.verify("alice", b"secret"), Verdict::Ok);
        assert_eq!(reread.verify("bob", b"new password"), Verdict::Ok);
        assert_eq!(reread.verify("bob", b"hunter2"), Verdict::WrongPassword);
        assert_eq!(reread.verify("dave", b"d"), Verdict::Ok);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }

    #[cfg(unix)]
    #[test]
    fn a_new_file_is_private_and_an_old_one_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let mut file = PasswordFile::new();
        file.set("u", b"p").unwrap();
        file.save(&path).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        file.save(&path).unwrap();
        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn invalid_usernames_are_refused() {
        let mut file = PasswordFile::new();
        for user in ["", "a:b", "new\nline"] {
            assert!(file.set(user, b"p").is_err(), "{user:?}");
        }
        assert!(file.is_empty());
    }

    /// Found by the `auth_files` fuzz target: a last line ending in "\r" (or
    /// any line in "\r\r\n") was written back ending in "\r\n", which reads
    /// back without the "\r", so the file changed at every save.
    #[test]
    fn a_last_line_ending_in_a_carriage_return_is_written_back_as_read() {
        for text in [
            "\r",
            "# note\r",
            "# a\r\r\r\n#b",
            &format!("{PBKDF2_BOB}\r"),
        ] {
            let file = PasswordFile::parse(text).expect("valid file");
            let written = file.to_text();
            let again = PasswordFile::parse(&written).expect("written file reads");
            assert_eq!(again.to_text(), written, "{text:?}");
            assert_eq!(again.len(), file.len());
        }
    }

    #[test]
    fn hashes_are_not_printed_by_debug() {
        let file = file(&[PBKDF2_BOB]);
        let debug = format!("{file:?}");
        assert!(!debug.contains("Cc9LKLfx"), "{debug}");
    }
}
