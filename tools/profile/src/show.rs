//! `msh profile show`: a profile as a table, with source lines when the object still
//! exists, matches the profile's build-id and has debug info.
use crate::schema::Profile;
use std::fmt::Write;
use std::path::Path;

/// Renders the top `top` sites of each object.
pub fn render(profile: &Profile, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "backend: {}  objects: {}",
        profile.backend,
        profile.objects.len()
    );
    if profile.objects.is_empty() {
        let _ = writeln!(out, "no delinquent loads");
    }
    for object in &profile.objects {
        let _ = writeln!(out, "\n{}  (build-id {})", object.path, object.build_id);
        let lines = SourceLines::open(Path::new(&object.path), &object.build_id);
        if let Some(note) = &lines.note {
            let _ = writeln!(out, "  ({note})");
        }
        let events = if profile.backend == "sim" {
            "misses"
        } else {
            "samples"
        };
        let _ = writeln!(
            out,
            "  {:>3}  {:>6}  {:>9}  {:>6}  {:>5}  {:<12}  {:<28}  {:<30}  source",
            "#", "share", events, "miss%", "dram%", "offset", "symbol", "instruction"
        );
        for (rank, site) in object.sites.iter().take(top).enumerate() {
            let miss = site
                .miss_ratio
                .map_or("-".to_owned(), |r| format!("{:.0}%", r * 100.0));
            // How much of a DRAM access an execution costs, estimated from the footprint.
            let dram = site
                .est_miss_ratio
                .map_or("-".to_owned(), |r| format!("{:.0}%", r * 100.0));
            let source = site
                .address()
                .ok()
                .and_then(|a| lines.lookup(a))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:>3}  {:>5.1}%  {:>9}  {:>6}  {:>5}  {:<12}  {:<28}  {:<30}  {}",
                rank + 1,
                site.share * 100.0,
                site.samples,
                miss,
                dram,
                site.offset,
                site.symbol,
                site.insn,
                source
            );
        }
        if object.sites.len() > top {
            let _ = writeln!(out, "  … {} more (--top)", object.sites.len() - top);
        }
    }
    out
}

struct SourceLines {
    loader: Option<addr2line::Loader>,
    note: Option<String>,
    /// The object as checked and read; the loader reads it through this descriptor.
    _file: Option<std::fs::File>,
}

impl SourceLines {
    /// Opens the object once: the file whose build-id is compared is the file the
    /// debug info is read from, even if the path is swapped (for a FIFO, /dev/zero)
    /// meanwhile.
    fn open(path: &Path, build_id: &str) -> SourceLines {
        let unreadable = || SourceLines {
            loader: None,
            note: Some("object not readable here: no source lines".into()),
            _file: None,
        };
        let Ok((file, bytes)) =
            msh_files::read_regular_open(path, "object", msh_binary::MAX_OBJECT_BYTES)
        else {
            return unreadable();
        };
        match msh_binary::Binary::parse(bytes) {
            Err(_) => unreadable(),
            Ok(binary) if binary.build_id != build_id => SourceLines {
                loader: None,
                note: Some(format!(
                    "the file now has build-id {}: it changed since profiling, no source lines",
                    binary.build_id
                )),
                _file: None,
            },
            Ok(_) => SourceLines {
                loader: addr2line::Loader::new(msh_files::fd_path(&file)).ok(),
                note: None,
                _file: Some(file),
            },
        }
    }

    fn lookup(&self, address: u64) -> Option<String> {
        let location = self.loader.as_ref()?.find_location(address).ok()??;
        let file = location.file?;
        let name = Path::new(file)
            .file_name()
            .map_or(file.into(), |n| n.to_string_lossy());
        Some(match location.line {
            Some(line) => format!("{name}:{line}"),
            None => name.into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_info_is_read_from_the_file_checked_not_a_path_swapped_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let object = dir.path().join("prog");
        std::fs::copy("/bin/true", &object).unwrap();
        let build_id = msh_binary::Binary::open(&object).unwrap().build_id;
        let (file, _) = msh_files::read_regular_open(&object, "object", 1 << 30).unwrap();
        // Swap the path for /dev/zero after the check, as a racing user could.
        std::fs::remove_file(&object).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &object).unwrap();
        let through_fd = addr2line::Loader::new(msh_files::fd_path(&file));
        assert!(through_fd.is_ok(), "the checked file stays readable");
        assert!(
            addr2line::Loader::new(&object).is_err(),
            "reopening by path would read /dev/zero"
        );
        // And show itself refuses the swapped path in one note, without blocking.
        let lines = SourceLines::open(&object, &build_id);
        assert!(lines.loader.is_none());
        assert!(lines.note.unwrap().contains("not readable"));
    }
}
