//! `msh profile show`: a profile as a table, with source lines when the object still
//! exists, matches the profile's build-id and has debug info.
use crate::elf::ObjectImage;
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
}

impl SourceLines {
    fn open(path: &Path, build_id: &str) -> SourceLines {
        match ObjectImage::open(path) {
            Err(_) => SourceLines {
                loader: None,
                note: Some("object not readable here: no source lines".into()),
            },
            Ok(image) if image.build_id != build_id => SourceLines {
                loader: None,
                note: Some(format!(
                    "the file now has build-id {}: it changed since profiling, no source lines",
                    image.build_id
                )),
            },
            Ok(_) => SourceLines {
                loader: addr2line::Loader::new(path).ok(),
                note: None,
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
