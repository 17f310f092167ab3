//! Everything checked before qemu starts: where qemu-x86_64 and the plugin are, and
//! whether the program is something qemu-x86_64 can run. Each refusal is one line that
//! names the cause and what to do.
use anyhow::{bail, Context, Result};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The plugin's file name, as cargo builds it.
pub const PLUGIN_FILE: &str = "libmsh_tracer_plugin.so";
/// Overrides where the plugin is looked for.
pub const PLUGIN_ENV: &str = "MSH_TRACER_PLUGIN";
/// The QEMU user-mode emulator for x86-64 guests.
pub const QEMU: &str = "qemu-x86_64";

/// Finds `program` in `path` (a `PATH` value) the way a shell would; a name with a
/// slash is taken as is.
pub fn find_in_path(program: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    let program_path = Path::new(program);
    if program_path.components().count() > 1 {
        return is_executable(program_path).then(|| program_path.to_path_buf());
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// qemu-x86_64: the given path, else the one on `path`.
pub fn find_qemu(given: Option<&Path>, path: Option<&OsStr>) -> Result<PathBuf> {
    if let Some(given) = given {
        if is_executable(given) {
            return Ok(given.to_path_buf());
        }
        bail!("{} is not an executable qemu-x86_64", given.display());
    }
    find_in_path(OsStr::new(QEMU), path).with_context(|| {
        format!("{QEMU} is not installed (not on PATH): the tracer runs programs under it; install it with `apt-get install qemu-user`")
    })
}

/// The plugin: the given path, `$MSH_TRACER_PLUGIN`, else next to the running
/// executable or in the cargo target directory it was built in.
pub fn find_plugin(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(PLUGIN_ENV).map(PathBuf::from))
    {
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "the tracer plugin {} does not exist (set by {PLUGIN_ENV} or the caller)",
            path.display()
        );
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    // Beside `msh`; tests and benches run from target/<profile>/deps.
    let candidates = [
        dir.join(PLUGIN_FILE),
        dir.join("deps").join(PLUGIN_FILE),
        dir.join("..").join(PLUGIN_FILE),
        dir.join("..").join("deps").join(PLUGIN_FILE),
    ];
    // Cargo refreshes target/<profile>/ only when the plugin itself is built, and deps/
    // when a crate depending on it is: take the newest.
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p.clone())
        .with_context(|| {
            format!(
                "the tracer plugin {PLUGIN_FILE} is not next to {}: build it with `cargo build --release -p msh-tracer-plugin` (or set {PLUGIN_ENV})",
                exe.display()
            )
        })
}

/// What qemu-x86_64 will be asked to run.
#[derive(Debug)]
pub struct Program {
    /// The executable, found like a shell would.
    pub path: PathBuf,
    /// argv[0] as given.
    pub argv0: OsString,
}

/// Finds the command's executable and checks that it is an x86-64 ELF.
pub fn check_program(argv0: &OsStr) -> Result<Program> {
    let path = find_in_path(argv0, std::env::var_os("PATH").as_deref()).with_context(|| {
        format!(
            "command not found (or not executable): {}",
            argv0.to_string_lossy()
        )
    })?;
    let mut head = [0u8; 64];
    // Checked on the descriptor read: a path swapped for a FIFO since the PATH search
    // must not block.
    let n = msh_files::open_regular(&path, "program")?
        .read(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let head = &head[..n];
    let name = path.display();
    if head.starts_with(b"#!") {
        let line = head[2..].split(|&c| c == b'\n').next().unwrap_or(&[]);
        let interpreter = String::from_utf8_lossy(line).trim().to_owned();
        bail!("{name} is a script (#!{interpreter}): qemu-x86_64 runs ELF executables only; trace its interpreter instead (-- {interpreter} {name} …)");
    }
    if n < 20 || !head.starts_with(b"\x7fELF") {
        bail!("{name} is not an ELF executable: qemu-x86_64 cannot run it");
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    if head[4] != 2 || machine != 62 {
        bail!(
            "{name} is not an x86-64 program ({}, e_machine {machine}): the tracer runs x86-64 programs only",
            if head[4] == 1 { "32-bit ELF" } else { "64-bit ELF" }
        );
    }
    Ok(Program {
        path,
        argv0: argv0.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_qemu_says_how_to_install_it() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_qemu(None, Some(empty.path().as_os_str()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install qemu-user"), "{err}");
        let err = find_qemu(Some(Path::new("/nonexistent/qemu")), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/qemu"), "{err}");
    }

    #[test]
    fn refuses_what_qemu_x86_64_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        let script = write("script", b"#!/bin/sh\necho hi\n");
        let err = check_program(script.as_os_str()).unwrap_err().to_string();
        assert!(err.contains("is a script (#!/bin/sh)"), "{err}");
        let text = write("text", b"hello, this is not a program at all");
        let err = check_program(text.as_os_str()).unwrap_err().to_string();
        assert!(err.contains("not an ELF"), "{err}");
        // A real x86-64 executable with e_machine patched to AArch64 (183).
        let mut elf = std::fs::read("/bin/true").unwrap();
        elf[18..20].copy_from_slice(&183u16.to_le_bytes());
        let arm = write("arm", &elf);
        let err = check_program(arm.as_os_str()).unwrap_err().to_string();
        assert!(err.contains("not an x86-64 program"), "{err}");
        assert!(check_program(OsStr::new("true")).is_ok());
        let err = check_program(OsStr::new("no-such-program-msh"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("command not found"), "{err}");
    }
}
