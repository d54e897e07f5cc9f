//! Compressed text files: gzip, zstd and bzip2, decompressed as they are read.
//!
//! The content decides: a file is decompressed when its first bytes are a
//! codec's magic number, whatever it is called, and a file whose name says
//! `.gz`, `.zst` or `.bz2` but whose bytes do not is refused rather than
//! parsed as text. The name says the format inside (`trades.csv.gz` is CSV).
//! Concatenated members (`cat a.gz b.gz`, multi-frame zstd, pbzip2 output)
//! are read to the end. A stream that is corrupt or cut short fails the file
//! with the codec named; the readers add the line it reached.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use quarry_core::{Error, Result};

/// A compression Quarry reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Gzip,
    Zstd,
    Bzip2,
}

/// Suffixes of compressions Quarry does not read, for a message that says so.
const UNSUPPORTED: [&str; 5] = ["xz", "lz4", "zip", "snappy", "sz"];

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
            Codec::Bzip2 => "bzip2",
        }
    }

    fn of_extension(ext: &str) -> Option<Codec> {
        match ext.to_ascii_lowercase().as_str() {
            "gz" | "gzip" => Some(Codec::Gzip),
            "zst" | "zstd" => Some(Codec::Zstd),
            "bz2" => Some(Codec::Bzip2),
            _ => None,
        }
    }

    /// The codec whose magic number `head` (a file's first bytes) starts with.
    fn sniff(head: &[u8]) -> Option<Codec> {
        match head {
            [0x1f, 0x8b, ..] => Some(Codec::Gzip),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Codec::Zstd),
            // "BZh", the block size '1'..'9', then the first block's magic (π)
            // or the end-of-stream magic (√π) of an empty stream: ten bytes
            // no CSV header starts with.
            [b'B', b'Z', b'h', b'1'..=b'9', rest @ ..]
                if rest.starts_with(&[0x31, 0x41, 0x59, 0x26, 0x53, 0x59])
                    || rest.starts_with(&[0x17, 0x72, 0x45, 0x38, 0x50, 0x90]) =>
            {
                Some(Codec::Bzip2)
            }
            _ => None,
        }
    }
}

/// What a file name says: the compression of its last suffix (if any) and
/// the name without it (`trades.csv.gz` → gzip, `trades.csv`).
pub fn split_name(path: &Path) -> (Option<Codec>, &Path) {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .and_then(Codec::of_extension)
    {
        Some(codec) => (Some(codec), path.file_stem().map_or(path, Path::new)),
        None => (None, path),
    }
}

/// Why a file named with a compression suffix Quarry does not read is not
/// read, or `None` when its suffix is not one of them.
pub fn unsupported(ext: &str) -> Option<String> {
    UNSUPPORTED
        .contains(&ext.to_ascii_lowercase().as_str())
        .then(|| {
            format!("compressed input (.{ext}) is not supported: Quarry reads gzip, zstd and bzip2")
        })
}

/// Reads up to `buf.len()` bytes (fewer only at the end of the stream).
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The codec of content starting with `head`, checked against the name.
pub fn check(path: &Path, head: &[u8]) -> Result<Option<Codec>> {
    let found = Codec::sniff(head);
    match (split_name(path).0, found) {
        (Some(named), found) if found != Some(named) => Err(Error::input(format!(
            "{}: the name says {} but the content is {}",
            path.display(),
            named.name(),
            found.map_or("not compressed", Codec::name)
        ))),
        _ => Ok(found),
    }
}

/// The first bytes of a file, for the magic numbers: up to 10.
fn head(path: &Path, reader: &mut impl Read) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 10];
    let n = fill(reader, &mut buf)
        .map_err(|e| Error::input(format!("cannot read {}: {e}", path.display())).with_source(e))?;
    buf.truncate(n);
    Ok(buf)
}

/// The codec of an open file (from its first bytes, checked against its
/// name); the file is rewound.
pub fn detect(path: &Path, file: &mut File) -> Result<Option<Codec>> {
    let head = head(path, file)?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::input(format!("cannot read {}: {e}", path.display())).with_source(e))?;
    check(path, &head)
}

/// The decompressed content of `reader`, the content of `path` from its start.
pub fn decoded(path: &Path, mut reader: impl Read + 'static) -> Result<Box<dyn Read>> {
    let head = head(path, &mut reader)?;
    let codec = check(path, &head)?;
    let whole = std::io::Cursor::new(head).chain(reader);
    let Some(codec) = codec else {
        return Ok(Box::new(whole));
    };
    let inner: Box<dyn Read> = match codec {
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(whole).map_err(|e| {
            Error::input(format!("{}: cannot start zstd: {e}", path.display())).with_source(e)
        })?),
        Codec::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(whole)),
    };
    Ok(Box::new(Decoding { inner, codec }))
}

/// A decoder whose errors say which codec failed: "gzip data is corrupt or
/// cut short: …" reads better after a line number than the decoder's own words.
struct Decoding {
    inner: Box<dyn Read>,
    codec: Codec,
}

impl Read for Decoding {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} data is corrupt or cut short: {e}", self.codec.name()),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const TEXT: &[u8] = b"timestamp,user_id\n2024-01-01 00:00:00,U1\n";

    fn compress(codec: Codec, data: &[u8]) -> Vec<u8> {
        match codec {
            Codec::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Codec::Zstd => zstd::stream::encode_all(data, 3).unwrap(),
            Codec::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), Default::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
        }
    }

    fn read_all(path: &Path) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        decoded(path, File::open(path).unwrap())?
            .read_to_end(&mut out)
            .map_err(|e| Error::input(e.to_string()))?;
        Ok(out)
    }

    #[test]
    fn reads_every_codec_by_its_bytes_and_concatenated_members() {
        let dir = tempfile::tempdir().unwrap();
        for codec in [Codec::Gzip, Codec::Zstd, Codec::Bzip2] {
            // Two members back to back, as `cat a.gz b.gz` writes them.
            let mut bytes = compress(codec, TEXT);
            bytes.extend(compress(codec, b"2024-01-02 00:00:00,U2\n"));
            for name in ["t.csv.gz", "t.csv.zst", "t.csv.bz2", "t.csv"] {
                let path = dir.path().join(name);
                std::fs::write(&path, &bytes).unwrap();
                let named = split_name(&path).0;
                match read_all(&path) {
                    Ok(out) => {
                        assert!(named.is_none() || named == Some(codec), "{name}");
                        assert!(out.starts_with(TEXT) && out.ends_with(b"U2\n"), "{name}");
                    }
                    Err(e) => {
                        assert!(named.is_some() && named != Some(codec), "{name}: {e}");
                        assert!(e.to_string().contains("the name says"), "{e}");
                    }
                }
            }
        }
        let plain = dir.path().join("p.csv.gz");
        std::fs::write(&plain, TEXT).unwrap();
        let e = read_all(&plain).unwrap_err().to_string();
        assert!(
            e.ends_with("the name says gzip but the content is not compressed"),
            "{e}"
        );
        // A CSV header that starts like bzip2's magic is still text.
        let bz = dir.path().join("bz.csv");
        std::fs::write(&bz, b"BZh9,x\n1,2\n").unwrap();
        assert_eq!(read_all(&bz).unwrap(), b"BZh9,x\n1,2\n");
    }

    #[test]
    fn a_stream_cut_short_is_an_error_naming_the_codec() {
        let dir = tempfile::tempdir().unwrap();
        let text = TEXT.repeat(2000);
        for (codec, name) in [
            (Codec::Gzip, "t.csv.gz"),
            (Codec::Zstd, "t.csv.zst"),
            (Codec::Bzip2, "t.csv.bz2"),
        ] {
            let bytes = compress(codec, &text);
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            let e = read_all(&path).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{} data is corrupt or cut short", codec.name())),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn names_split_into_codec_and_inner_name() {
        let (c, inner) = split_name(Path::new("d/trades.ndjson.zst"));
        assert_eq!((c, inner), (Some(Codec::Zstd), Path::new("trades.ndjson")));
        assert_eq!(split_name(Path::new("a.csv")), (None, Path::new("a.csv")));
        assert!(unsupported("xz").is_some() && unsupported("csv").is_none());
    }
}
