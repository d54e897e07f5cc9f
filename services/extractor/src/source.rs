//! Turning a source string into the files it names, inside the data roots.
//!
//! Every file is resolved (symlinks followed) and checked against the roots
//! before it is opened: a link inside a root that points outside it is
//! refused, whether it is named directly, matched by a glob or met while
//! walking a directory. Only regular files are read: a FIFO or a device
//! would block or never end. Files of a directory or glob whose extension
//! names no supported format are skipped and reported, never read.
//! Compressed files are named by the format inside and the codec
//! (`trades.csv.gz`); see `readers::compression`.

use std::collections::HashSet;
use std::fs::Metadata;
use std::path::{Component, Path, PathBuf};

use quarry_core::{Error, ErrorKind, Result};
use quarry_proto::{SkippedFile, SourceFormat};

use crate::objects::{self, ObjectRoots, ObjectUrl, Stores};
use crate::postgres::{self, PgRoots, PgSource};
use crate::readers::compression;

/// The directories the extractor may read, canonicalised, the object
/// prefixes (`s3://bucket/prefix/`) and the PostgreSQL databases
/// (`postgresql://host:5432/db`) it may read.
#[derive(Debug, Clone)]
pub struct DataRoots {
    dirs: Vec<PathBuf>,
    objects: ObjectRoots,
    databases: PgRoots,
}

impl DataRoots {
    pub fn new(roots: &[PathBuf]) -> Result<Self> {
        let (databases, roots): (Vec<String>, Vec<_>) = roots
            .iter()
            .map(|r| r.to_string_lossy().into_owned())
            .partition(|r| postgres::is_source(r));
        let (urls, dirs): (Vec<_>, Vec<_>) = roots.iter().partition(|r| objects::is_url(r));
        let dirs = dirs
            .iter()
            .map(|r| {
                Path::new(r).canonicalize().map_err(|e| {
                    Error::config(format!("extractor.data_roots: cannot use {r}: {e}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let urls: Vec<String> = urls.into_iter().cloned().collect();
        Ok(Self {
            dirs,
            objects: ObjectRoots::new(&urls)?,
            databases: PgRoots::new(&databases)?,
        })
    }

    /// Refuses a PostgreSQL source whose database is not a root.
    pub fn check_postgres(&self, source: &PgSource) -> Result<()> {
        self.databases.check(source, || self.describe())
    }

    fn contains(&self, p: &Path) -> bool {
        self.dirs.iter().any(|r| p.starts_with(r))
    }

    /// Refuses an object URL outside the object roots.
    pub fn check_object(&self, url: &ObjectUrl) -> Result<()> {
        self.objects.check(url, || self.describe())
    }

    /// Checks a path before touching it (lexically, so `..` cannot climb out)
    /// and after resolving symlinks. Returns the canonical path. An object
    /// URL is checked against the object roots and returned as given.
    pub fn check(&self, path: &Path) -> Result<PathBuf> {
        if let Some(url) = objects::url_of(path) {
            let url = url?;
            self.check_object(&url)?;
            return Ok(url.as_path());
        }
        let refused = || {
            Error::permission_denied(format!(
                "{} is outside the extractor's data roots ({})",
                path.display(),
                self.describe()
            ))
        };
        let absolute = std::path::absolute(path)
            .map_err(|e| Error::input(format!("{}: {e}", path.display())).with_source(e))?;
        let lexical = normalize(&absolute);
        if !self.contains(&lexical) {
            return Err(refused());
        }
        let real = lexical.canonicalize().map_err(|e| {
            Error::input(format!("cannot open {}: {e}", path.display())).with_source(e)
        })?;
        if !self.contains(&real) {
            return Err(refused());
        }
        Ok(real)
    }

    fn describe(&self) -> String {
        self.dirs
            .iter()
            .map(|p| p.display().to_string())
            .chain(self.objects.describe())
            .chain(self.databases.describe())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Resolves `.` and `..` without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The format a file name stands for: `.csv`/`.tsv`, `.parquet`,
/// `.ndjson`/`.jsonl`, each also compressed as a whole (`trades.csv.gz`,
/// `.zst`, `.bz2`) except Parquet, which compresses its own pages.
pub fn format_of(path: &Path) -> Option<SourceFormat> {
    let (codec, inner) = compression::split_name(path);
    let ext = inner.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "csv" | "tsv" => SourceFormat::Csv,
        "parquet" if codec.is_none() => SourceFormat::Parquet,
        "ndjson" | "jsonl" => SourceFormat::Ndjson,
        _ => return None,
    })
}

/// Why a file whose name says no format Quarry reads is not read.
fn unknown_format(path: &Path) -> String {
    let (codec, inner) = compression::split_name(path);
    let inner_ext = inner.extension().and_then(|e| e.to_str());
    match (codec, path.extension().and_then(|e| e.to_str())) {
        (Some(c), _) if inner_ext.is_some_and(|e| e.eq_ignore_ascii_case("parquet")) => format!(
            "a {}-compressed Parquet file: Parquet compresses its own pages, decompress it first",
            c.name()
        ),
        (Some(c), _) => format!(
            "{}-compressed, but the name does not say the format inside (e.g. trades.csv.{})",
            c.name(),
            path.extension().and_then(|e| e.to_str()).unwrap_or("gz")
        ),
        (None, Some(ext)) => {
            compression::unsupported(ext).unwrap_or_else(|| format!("unknown extension .{ext}"))
        }
        (None, None) => "no extension".into(),
    }
}

/// What kind of file `meta` describes, for messages.
fn kind_of(meta: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Refuses anything but a regular file: a FIFO would block the planner's
/// first read and be empty for the second, a device may never end.
pub fn check_regular(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::input(format!("cannot open {}: {e}", path.display())).with_source(e))?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(Error::input(format!(
            "{} is {}: Quarry reads regular files only",
            path.display(),
            kind_of(&meta)
        )))
    }
}

/// One file to read and its format.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub format: SourceFormat,
}

/// The files a source names, and those it holds but that are not read.
#[derive(Debug, Default)]
pub struct Resolved {
    pub files: Vec<SourceFile>,
    pub skipped: Vec<SkippedFile>,
}

impl Resolved {
    fn skip(&mut self, path: &Path, reason: impl Into<String>) {
        self.skipped.push(SkippedFile {
            file: path.display().to_string(),
            reason: reason.into(),
        });
    }

    /// Takes a regular file met in a directory or glob: read when its
    /// extension (or the requested format) says how, otherwise reported.
    fn offer(&mut self, path: PathBuf, requested: SourceFormat) {
        match (requested, format_of(&path)) {
            (SourceFormat::Unspecified, Some(format)) => {
                self.files.push(SourceFile { path, format })
            }
            (SourceFormat::Unspecified, None) => {
                let reason = unknown_format(&path);
                self.skip(&path, reason);
            }
            (requested, Some(f)) if f != requested => {
                self.skip(&path, format!("not {}", format_name(requested)));
            }
            (requested, _) => self.files.push(SourceFile {
                path,
                format: requested,
            }),
        }
    }
}

fn format_name(f: SourceFormat) -> &'static str {
    match f {
        SourceFormat::Csv => "CSV",
        SourceFormat::Parquet => "Parquet",
        SourceFormat::Ndjson => "NDJSON",
        SourceFormat::Postgres => "PostgreSQL",
        SourceFormat::Unspecified => "a known format",
    }
}

/// Expands a source (file, directory or glob; object, prefix or key glob)
/// into files, sorted by path.
pub fn resolve(
    source: &str,
    format: SourceFormat,
    roots: &DataRoots,
    stores: &Stores,
) -> Result<Resolved> {
    if source.trim().is_empty() {
        return Err(Error::input("the source is empty"));
    }
    let mut out = if objects::is_url(source) {
        resolve_objects(source, format, roots, stores)?
    } else {
        resolve_paths(source, format, roots)?
    };
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    out.files.dedup_by(|a, b| a.path == b.path);
    out.skipped.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// The objects of an object source, each checked against the roots.
fn resolve_objects(
    source: &str,
    format: SourceFormat,
    roots: &DataRoots,
    stores: &Stores,
) -> Result<Resolved> {
    let url = ObjectUrl::parse(source)?;
    roots.check_object(&url)?;
    let mut out = Resolved::default();
    let listed = stores.list(&url)?;
    if listed.is_empty() {
        return Err(Error::input(if url.key.contains(['*', '?', '[']) {
            format!("no objects match {source}")
        } else {
            format!("{source}: no such object, and no objects under it")
        }));
    }
    let single = matches!(listed.as_slice(), [(u, _)] if *u == url);
    for (object, _) in listed {
        roots.check_object(&object)?;
        if !objects::is_hidden(&object) {
            out.offer(object.as_path(), format);
        }
    }
    if out.files.is_empty() {
        return Err(Error::input(match (single, out.skipped.first()) {
            (true, Some(s)) => format!(
                "cannot tell the format of {source}: {}; name it with --format (csv, parquet or ndjson)",
                s.reason
            ),
            _ => format!(
                "no readable objects match {source}{}",
                skipped_note(&out.skipped)
            ),
        }));
    }
    Ok(out)
}

/// The files of a local source.
fn resolve_paths(source: &str, format: SourceFormat, roots: &DataRoots) -> Result<Resolved> {
    let mut out = Resolved::default();
    if source.contains(['*', '?', '[']) {
        let options = glob::MatchOptions {
            require_literal_leading_dot: true,
            ..Default::default()
        };
        let entries = glob::glob_with(source, options).map_err(|e| {
            Error::input(format!("bad glob pattern {source:?}: {e}")).with_source(e)
        })?;
        for entry in entries {
            let p = entry.map_err(|e| Error::input(format!("{source}: {e}")).with_source(e))?;
            let real = roots.check(&p)?;
            let meta = metadata(&real)?;
            if meta.is_file() {
                out.offer(real, format);
            } else if !meta.is_dir() {
                out.skip(&real, kind_of(&meta));
            }
        }
        if out.files.is_empty() {
            return Err(Error::input(format!(
                "no readable files match {source}{}",
                skipped_note(&out.skipped)
            )));
        }
    } else {
        let p = roots.check(Path::new(source))?;
        let meta = metadata(&p)?;
        if meta.is_dir() {
            let mut visited = HashSet::from([p.clone()]);
            walk(&p, roots, format, &mut out, &mut visited)?;
            if out.files.is_empty() {
                return Err(Error::input(format!(
                    "directory {source} holds no CSV, Parquet or NDJSON files{}",
                    skipped_note(&out.skipped)
                )));
            }
        } else {
            check_regular(&p)?;
            let format = match format {
                SourceFormat::Unspecified => format_of(&p).ok_or_else(|| {
                    Error::input(format!(
                        "cannot tell the format of {}: {}; name it with --format (csv, parquet or ndjson)",
                        p.display(),
                        unknown_format(&p)
                    ))
                })?,
                f => f,
            };
            out.files.push(SourceFile { path: p, format });
        }
    }
    Ok(out)
}

fn metadata(path: &Path) -> Result<Metadata> {
    std::fs::metadata(path)
        .map_err(|e| Error::input(format!("cannot open {}: {e}", path.display())).with_source(e))
}

fn skipped_note(skipped: &[SkippedFile]) -> String {
    match skipped.first() {
        None => String::new(),
        Some(s) => format!(
            " ({} skipped, e.g. {}: {})",
            skipped.len(),
            s.file,
            s.reason
        ),
    }
}

/// Walks `dir` (canonical, inside the roots). Every entry is resolved before
/// anything is opened; a symlink leaving the roots fails the whole source.
/// `visited` holds the canonical directories seen, so a link back up the
/// tree is not walked twice (or for ever).
fn walk(
    dir: &Path,
    roots: &DataRoots,
    format: SourceFormat,
    out: &mut Resolved,
    visited: &mut HashSet<PathBuf>,
) -> Result<()> {
    let list_err = |e: std::io::Error| Error::input(format!("cannot list {}: {e}", dir.display()));
    let mut entries = std::fs::read_dir(dir)
        .map_err(list_err)?
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(list_err)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let p = entry.path();
        let is_link = entry.file_type().map_err(list_err)?.is_symlink();
        let real = if is_link {
            match roots.check(&p) {
                Ok(real) => real,
                Err(e) if e.kind() == ErrorKind::PermissionDenied => return Err(e),
                // A dangling link: nothing to read, say so.
                Err(_) => {
                    out.skip(&p, "a broken symbolic link");
                    continue;
                }
            }
        } else {
            p
        };
        let meta = metadata(&real)?;
        if meta.is_dir() {
            if visited.insert(real.clone()) {
                walk(&real, roots, format, out, visited)?;
            }
        } else if meta.is_file() {
            out.offer(real, format);
        } else {
            out.skip(&real, kind_of(&meta));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local source, resolved with no object stores.
    fn local(source: &str, roots: &DataRoots) -> Result<Resolved> {
        resolve(source, SourceFormat::Unspecified, roots, &Stores::default())
    }

    #[test]
    fn refuses_paths_outside_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("a.csv"), "x").unwrap();
        std::fs::write(dir.path().join("secret.csv"), "x").unwrap();
        let roots = DataRoots::new(std::slice::from_ref(&data)).unwrap();
        assert!(roots.check(&data.join("a.csv")).is_ok());
        for bad in [
            dir.path().join("secret.csv"),
            data.join("../secret.csv"),
            data.join("../../etc/passwd"),
            PathBuf::from("/etc/passwd"),
        ] {
            let e = roots.check(&bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{bad:?}: {e}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret.csv"), data.join("link.csv"))
                .unwrap();
            let e = roots.check(&data.join("link.csv")).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        }
        let glob = format!("{}/../*.csv", data.display());
        assert_eq!(
            local(&glob, &roots).unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_walk_refuses_links_out_of_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let d = data.join("d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("a.csv"), "x").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret.csv"), "x").unwrap();
        let roots = DataRoots::new(std::slice::from_ref(&data)).unwrap();
        let source = d.display().to_string();

        // A link to a file outside, then a link to a directory outside.
        let link = d.join("passwd.csv");
        std::os::unix::fs::symlink(outside.join("secret.csv"), &link).unwrap();
        let e = local(&source, &roots).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert!(e.to_string().contains("passwd.csv"), "{e}");
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("sub")).unwrap();
        let e = local(&source, &roots).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        std::fs::remove_file(d.join("sub")).unwrap();

        // Links inside the roots are followed once, even in a loop.
        std::os::unix::fs::symlink(&data, d.join("up")).unwrap();
        std::os::unix::fs::symlink(d.join("a.csv"), d.join("again.csv")).unwrap();
        let r = local(&source, &roots).unwrap();
        assert_eq!(r.files.len(), 1, "{r:?}");
    }

    #[test]
    fn expands_directories_and_globs_and_reports_what_it_skips() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        for f in [
            "b.csv",
            "a.parquet",
            "sub/c.jsonl",
            "notes.md",
            "notes.txt",
            "old.csv.gz",
            "old.parquet.zst",
            "archive.tar.xz",
            ".hidden.csv",
        ] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let roots = DataRoots::new(&[d.to_path_buf()]).unwrap();
        let root = d.canonicalize().unwrap();
        let name = |p: &str| {
            Path::new(p)
                .strip_prefix(&root)
                .unwrap()
                .display()
                .to_string()
        };
        let all = local(d.to_str().unwrap(), &roots).unwrap();
        let files: Vec<_> = all
            .files
            .iter()
            .map(|f| name(f.path.to_str().unwrap()))
            .collect();
        assert_eq!(files, ["a.parquet", "b.csv", "old.csv.gz", "sub/c.jsonl"]);
        let skipped: Vec<_> = all
            .skipped
            .iter()
            .map(|s| format!("{}: {}", name(&s.file), s.reason))
            .collect();
        assert_eq!(
            skipped,
            [
                "archive.tar.xz: compressed input (.xz) is not supported: Quarry reads gzip, zstd and bzip2",
                "notes.md: unknown extension .md",
                "notes.txt: unknown extension .txt",
                "old.parquet.zst: a zstd-compressed Parquet file: Parquet compresses its own pages, decompress it first"
            ]
        );
        let csv = local(&format!("{}/*.csv", d.display()), &roots).unwrap();
        assert_eq!(csv.files.len(), 1);
        assert!(local(&format!("{}/*.xyz", d.display()), &roots).is_err());
        // Named directly, a compressed file of no known format gets a message that says so.
        std::fs::write(d.join("dump.gz"), "x").unwrap();
        let e = local(d.join("dump.gz").to_str().unwrap(), &roots)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gzip-compressed, but the name does not say the format"),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fifo = d.join("f.csv");
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::write(d.join("g.csv"), "x").unwrap();
        let roots = DataRoots::new(&[d.to_path_buf()]).unwrap();
        let e = local(fifo.to_str().unwrap(), &roots)
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.csv is a FIFO"), "{e}");
        let r = local(d.to_str().unwrap(), &roots).unwrap();
        assert_eq!(r.files.len(), 1);
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0].reason, "a FIFO");
    }
}
