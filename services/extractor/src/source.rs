//! Turning a source string into the files it names, inside the data roots.

use std::path::{Component, Path, PathBuf};

use quarry_core::{Error, Result};
use quarry_proto::SourceFormat;

/// The directories the extractor may read, canonicalised.
#[derive(Debug, Clone)]
pub struct DataRoots(Vec<PathBuf>);

impl DataRoots {
    pub fn new(roots: &[PathBuf]) -> Result<Self> {
        roots
            .iter()
            .map(|r| {
                r.canonicalize().map_err(|e| {
                    Error::config(format!(
                        "extractor.data_roots: cannot use {}: {e}",
                        r.display()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(DataRoots)
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.0
    }

    fn contains(&self, p: &Path) -> bool {
        self.0.iter().any(|r| p.starts_with(r))
    }

    /// Checks a path before touching it (lexically, so `..` cannot climb out)
    /// and after resolving symlinks. Returns the canonical path.
    pub fn check(&self, path: &Path) -> Result<PathBuf> {
        let refused = || {
            Error::PermissionDenied(format!(
                "{} is outside the extractor's data roots ({})",
                path.display(),
                self.describe()
            ))
        };
        let absolute = std::path::absolute(path)
            .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
        let lexical = normalize(&absolute);
        if !self.contains(&lexical) {
            return Err(refused());
        }
        let real = lexical
            .canonicalize()
            .map_err(|e| Error::input(format!("cannot open {}: {e}", path.display())))?;
        if !self.contains(&real) {
            return Err(refused());
        }
        Ok(real)
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|p| p.display().to_string())
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

/// The format a file extension stands for.
pub fn format_of(path: &Path) -> Option<SourceFormat> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "csv" | "tsv" | "txt" => SourceFormat::Csv,
        "parquet" | "pq" => SourceFormat::Parquet,
        "ndjson" | "jsonl" | "json" => SourceFormat::Ndjson,
        _ => return None,
    })
}

/// One file to read and its format.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub format: SourceFormat,
}

/// Expands a source (file, directory or glob) into files, sorted by path.
pub fn resolve(source: &str, format: SourceFormat, roots: &DataRoots) -> Result<Vec<SourceFile>> {
    if source.trim().is_empty() {
        return Err(Error::input("the source is empty"));
    }
    if source.contains("://") {
        return Err(Error::input(format!(
            "{source}: object-store sources are not supported by this extractor yet; use a local path"
        )));
    }
    let is_glob = source.contains(['*', '?', '[']);
    let mut paths = Vec::new();
    if is_glob {
        let options = glob::MatchOptions {
            require_literal_leading_dot: true,
            ..Default::default()
        };
        let entries = glob::glob_with(source, options)
            .map_err(|e| Error::input(format!("bad glob pattern {source:?}: {e}")))?;
        for entry in entries {
            let p = entry.map_err(|e| Error::input(format!("{source}: {e}")))?;
            if p.is_file() {
                paths.push(roots.check(&p)?);
            }
        }
        if paths.is_empty() {
            return Err(Error::input(format!("no files match {source}")));
        }
    } else {
        let p = roots.check(Path::new(source))?;
        if p.is_dir() {
            walk(&p, &mut paths, format)?;
            if paths.is_empty() {
                return Err(Error::input(format!(
                    "directory {source} holds no CSV, Parquet or NDJSON files"
                )));
            }
        } else {
            paths.push(p);
        }
    }
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .map(|path| {
            let format = match format {
                SourceFormat::Unspecified => format_of(&path).ok_or_else(|| {
                    Error::input(format!(
                        "cannot tell the format of {} from its extension; name it (csv, parquet or ndjson)",
                        path.display()
                    ))
                })?,
                f => f,
            };
            Ok(SourceFile { path, format })
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, format: SourceFormat) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::input(format!("cannot list {}: {e}", dir.display())))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::input(format!("cannot list {}: {e}", dir.display())))?;
        let p = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, out, format)?;
        } else if let Some(f) = format_of(&p)
            && (format == SourceFormat::Unspecified || format == f)
        {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(matches!(e, Error::PermissionDenied(_)), "{bad:?}: {e}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret.csv"), data.join("link.csv"))
                .unwrap();
            let e = roots.check(&data.join("link.csv")).unwrap_err();
            assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
        }
        let glob = format!("{}/../*.csv", data.display());
        assert!(matches!(
            resolve(&glob, SourceFormat::Unspecified, &roots).unwrap_err(),
            Error::PermissionDenied(_)
        ));
    }

    #[test]
    fn expands_directories_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        for f in [
            "b.csv",
            "a.parquet",
            "sub/c.jsonl",
            "notes.md",
            ".hidden.csv",
        ] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let roots = DataRoots::new(&[d.to_path_buf()]).unwrap();
        let names = |v: Vec<SourceFile>| {
            v.into_iter()
                .map(|f| {
                    f.path
                        .strip_prefix(roots.roots()[0].clone())
                        .unwrap()
                        .display()
                        .to_string()
                })
                .collect::<Vec<_>>()
        };
        let all = resolve(d.to_str().unwrap(), SourceFormat::Unspecified, &roots).unwrap();
        assert_eq!(names(all), ["a.parquet", "b.csv", "sub/c.jsonl"]);
        let csv = resolve(
            &format!("{}/*.csv", d.display()),
            SourceFormat::Unspecified,
            &roots,
        )
        .unwrap();
        assert_eq!(names(csv), ["b.csv"]);
        assert!(
            resolve(
                &format!("{}/*.xyz", d.display()),
                SourceFormat::Unspecified,
                &roots
            )
            .is_err()
        );
    }
}
