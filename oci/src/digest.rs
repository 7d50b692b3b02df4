//! Content digests (`sha256:<hex>`): parsing, and readers and writers that hash what passes
//! through them so that a blob is checked while it is copied, not read twice.

use std::fmt;
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::Error;

/// A validated `sha256:<64 lowercase hex>` digest (the only algorithm registries use).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<hex>`; anything else is refused, naming the text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = || Error::BadDigest(text.into());
        let (algorithm, hex) = text.split_once(':').ok_or_else(bad)?;
        if algorithm != "sha256" {
            return Err(Error::UnsupportedDigest(text.into()));
        }
        Self::from_hex(hex).ok_or_else(bad)
    }

    /// A digest from its 64 lowercase hex digits, if they are that.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let valid = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| Self { hex: hex.into() })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Self {
        Self {
            hex: format!("{:x}", hasher.finalize()),
        }
    }

    /// The 64 hex digits (the blob's file name in the cache).
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Hashes and counts what is read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Reads what is left, then returns the digest and length of everything read.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_hasher(self.hasher), self.len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Hashes and counts what is written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The writer, and the digest and length of everything written.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sha256_only() {
        let hex = "a".repeat(64);
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.hex(), hex);
        assert_eq!(d.to_string(), format!("sha256:{hex}"));
        assert!(matches!(
            Digest::parse(&format!("sha512:{hex}")),
            Err(Error::UnsupportedDigest(_))
        ));
        for bad in [
            "sha256:abc",
            "sha256",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(
                matches!(Digest::parse(bad), Err(Error::BadDigest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn hashes_what_passes() {
        let expected = Digest::of(b"hello");
        assert_eq!(
            expected.hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let mut reader = HashingReader::new(&b"hello"[..]);
        let mut first = [0u8; 2];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(reader.finish().unwrap(), (expected.clone(), 5));
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"hello").unwrap();
        let (bytes, digest, len) = writer.finish();
        assert_eq!(
            (bytes.as_slice(), digest, len),
            (&b"hello"[..], expected, 5)
        );
    }
}
