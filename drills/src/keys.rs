//! The cluster signing key on disk: a 32-byte Ed25519 seed as 64 hex characters and a
//! newline, in a file only its owner can read. The only module of this crate that does
//! I/O.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use thiserror::Error;

/// Why a key could not be created, read or parsed.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error(
        "refusing to overwrite the existing key file {path}: reports signed with it would no \
         longer verify against a new key; move it away first if you really mean to replace it"
    )]
    AlreadyExists { path: PathBuf },
    #[error("cannot create the key file {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the key file {path} does not exist: generate the cluster signing key first")]
    Missing { path: PathBuf },
    #[error("cannot read the key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the key file {path} holds {found} characters, expected 64 hex characters (a 32-byte \
         Ed25519 seed) and a newline; it is damaged or not a metrodr key"
    )]
    WrongLength { path: PathBuf, found: usize },
    #[error(
        "the key file {path} is not hex (character {position} is {found:?}); it is damaged or \
         not a metrodr key"
    )]
    NotHex {
        path: PathBuf,
        position: usize,
        found: char,
    },
    #[error(
        "{found:?} is not an Ed25519 public key: expected 64 hex characters ({problem}); copy \
         the key from a signed report's footer or from the cluster"
    )]
    BadPublicKey {
        found: String,
        problem: &'static str,
    },
    #[error("the operating system could not supply random bytes for a new key")]
    Random(#[source] getrandom::Error),
}

/// Creates a new signing key at `path` (mode 0600, never overwriting) and returns its
/// public half.
pub fn generate_key_file(path: &Path) -> Result<VerifyingKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(KeyError::Random)?;
    let key = SigningKey::from_bytes(&seed);
    let mut contents = hex::encode(seed);
    seed.fill(0);
    contents.push('\n');

    let mut options = OpenOptions::new();
    // create_new: fails if anything exists at the path, atomically (no check-then-create race).
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => KeyError::AlreadyExists {
            path: path.to_owned(),
        },
        _ => KeyError::Create {
            path: path.to_owned(),
            source,
        },
    })?;
    let written = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all());
    contents.clear();
    if let Err(source) = written {
        // Do not leave a half-written key behind for the next run to refuse or misread.
        let _ = fs::remove_file(path);
        return Err(KeyError::Create {
            path: path.to_owned(),
            source,
        });
    }
    Ok(key.verifying_key())
}

/// Reads the signing key written by [`generate_key_file`].
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let contents = fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => KeyError::Missing {
            path: path.to_owned(),
        },
        _ => KeyError::Read {
            path: path.to_owned(),
            source,
        },
    })?;
    // One trailing newline (LF or CRLF) is expected; anything else is not a key file.
    let digits = contents
        .strip_suffix(b"\n")
        .map(|d| d.strip_suffix(b"\r").unwrap_or(d))
        .unwrap_or(&contents);
    if let Some(position) = digits.iter().position(|b| !b.is_ascii_hexdigit()) {
        let found = String::from_utf8_lossy(&digits[position..])
            .chars()
            .next()
            .unwrap_or(char::REPLACEMENT_CHARACTER);
        return Err(KeyError::NotHex {
            path: path.to_owned(),
            position: position + 1,
            found,
        });
    }
    let mut seed = [0u8; 32];
    if digits.len() != 64 || hex::decode_to_slice(digits, &mut seed).is_err() {
        return Err(KeyError::WrongLength {
            path: path.to_owned(),
            found: digits.len(),
        });
    }
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

/// The public key as 64 lowercase hex characters, as it appears in signed reports.
pub fn public_key_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

/// Parses a public key given as 64 hex characters (surrounding whitespace ignored).
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, KeyError> {
    let trimmed = hex_key.trim();
    let bad = |problem| KeyError::BadPublicKey {
        found: trimmed.to_owned(),
        problem,
    };
    if trimmed.len() != 64 {
        return Err(bad("wrong length"));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(trimmed, &mut bytes).map_err(|_| bad("not hex"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a point on the curve"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_roundtrip_with_owner_only_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.key");
        let public = generate_key_file(&path).expect("generate");
        let contents = fs::read_to_string(&path).expect("read");
        assert_eq!(contents.len(), 65);
        assert!(contents.ends_with('\n'));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let key = load_signing_key(&path).expect("load");
        assert_eq!(key.verifying_key(), public);
        let hex = public_key_hex(&public);
        assert_eq!(
            parse_public_key(&format!(" {hex}\n")).expect("parse"),
            public
        );
    }

    #[test]
    fn two_generated_keys_differ() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = generate_key_file(&dir.path().join("a")).expect("a");
        let b = generate_key_file(&dir.path().join("b")).expect("b");
        assert_ne!(a, b);
    }

    #[test]
    fn refuses_to_overwrite_an_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.key");
        fs::write(&path, "precious\n").expect("write");
        let err = generate_key_file(&path).expect_err("must refuse");
        assert!(matches!(err, KeyError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("refusing to overwrite"));
        assert_eq!(fs::read_to_string(&path).expect("read"), "precious\n");
    }

    #[test]
    fn bad_key_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let err = load_signing_key(&path).expect_err("missing");
        assert!(matches!(err, KeyError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("does not exist"));

        fs::write(&path, "abcd\n").expect("write");
        let err = load_signing_key(&path).expect_err("short");
        assert!(
            matches!(err, KeyError::WrongLength { found: 4, .. }),
            "{err}"
        );

        fs::write(&path, format!("{}\n\n", "a".repeat(64))).expect("write");
        let err = load_signing_key(&path).expect_err("extra line");
        assert!(
            matches!(
                err,
                KeyError::NotHex {
                    position: 65,
                    found: '\n',
                    ..
                }
            ),
            "{err}"
        );

        fs::write(&path, format!("{}xz\n", "a".repeat(62))).expect("write");
        let err = load_signing_key(&path).expect_err("not hex");
        assert!(
            matches!(
                err,
                KeyError::NotHex {
                    position: 63,
                    found: 'x',
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("is not hex (character 63 is 'x')"));

        // CRLF, as an editor on another OS may save it, is fine.
        fs::write(&path, format!("{}\r\n", "A".repeat(64))).expect("write");
        load_signing_key(&path).expect("CRLF and uppercase hex");
    }

    #[test]
    fn bad_public_keys_are_refused() {
        assert!(parse_public_key("abc").is_err());
        assert!(parse_public_key(&"g".repeat(64)).is_err());
        let err = parse_public_key(&"a".repeat(63)).expect_err("short");
        assert!(
            err.to_string()
                .contains("expected 64 hex characters (wrong length)")
        );
    }
}
