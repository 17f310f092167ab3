//! The identity a profile records for an object: its GNU build-id in lowercase hex or,
//! when it has none, `sha256:` and the hex SHA-256 of the whole file. A profile is
//! applied only to a file with the same identity.
use anyhow::{Context, Result};
use object::Object;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The identity of a parsed object whose bytes are `data`.
pub fn of(file: &object::File, data: &[u8]) -> String {
    match file.build_id().ok().flatten() {
        Some(id) if !id.is_empty() => hex(id),
        _ => format!("sha256:{}", hex(&Sha256::digest(data))),
    }
}

/// The identity of the ELF file at `path`.
pub fn build_id(path: &Path) -> Result<String> {
    let data = crate::read_object(path)?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{} is not an ELF object", path.display()))?;
    Ok(of(&file, &data))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_without_a_build_id_get_a_content_hash() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("x.c");
        std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
        let exe = dir.path().join("x");
        let built = std::process::Command::new("cc")
            .args(["-Wl,--build-id=none", "-o"])
            .arg(&exe)
            .arg(&source)
            .status()
            .expect("cc runs");
        assert!(built.success(), "cc failed");
        let id = build_id(&exe).unwrap();
        assert!(id.starts_with("sha256:") && id.len() == 7 + 64, "{id}");
        let with_id = build_id(&std::env::current_exe().unwrap()).unwrap();
        assert!(!with_id.starts_with("sha256:") && !with_id.is_empty());
    }

    #[test]
    fn rejects_non_elf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"not an elf").unwrap();
        assert!(build_id(&path).is_err());
    }
}
