//! Checks before a run starts: finding the command like a shell would, waiting for it
//! to reach its first instruction, and telling why a PID cannot be profiled.
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Finds `program` the way a shell would, so a missing command is reported before
/// anything starts.
pub fn resolve_program(program: &str) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|dir| dir.join(program))
                    .collect()
            })
            .unwrap_or_default()
    };
    for candidate in &candidates {
        if let Ok(meta) = std::fs::metadata(candidate) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate.clone());
            }
            if program.contains('/') {
                bail!("cannot run {program}: not an executable file");
            }
        }
    }
    bail!("command not found: {program}")
}

/// Builds a `Command` for argv, checking that the program exists.
pub fn command_for(argv: &[String]) -> Result<Command> {
    let Some((program, args)) = argv.split_first() else {
        bail!("no command given (usage: msh profile -o P.json -- CMD ARGS…)")
    };
    let mut command = Command::new(resolve_program(program)?);
    command.arg0(program).args(args);
    Ok(command)
}

/// Waits for the ptrace stop that follows a successful exec under PTRACE_TRACEME.
pub fn wait_for_exec_stop(pid: i32) -> Result<()> {
    let mut status = 0;
    // SAFETY: waiting for our own child; status is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r != pid {
        bail!("waitpid: {}", std::io::Error::last_os_error());
    }
    if libc::WIFSTOPPED(status) {
        return Ok(());
    }
    if libc::WIFEXITED(status) {
        bail!(
            "it exited at once with status {}",
            libc::WEXITSTATUS(status)
        );
    }
    bail!("it died before it started (wait status {status:#x})")
}

/// A clear reason when a PID cannot be profiled.
pub fn check_pid(pid: i32) -> Result<()> {
    if pid <= 0 {
        bail!("cannot trace PID {pid}: not a process id");
    }
    let proc_dir = format!("/proc/{pid}");
    if !Path::new(&proc_dir).exists() {
        bail!("cannot trace PID {pid}: no such process");
    }
    if pid as u32 == std::process::id() {
        bail!("cannot trace PID {pid}: that is msh itself");
    }
    let maps = std::fs::read_to_string(format!("{proc_dir}/maps"))
        .with_context(|| format!("cannot trace PID {pid}: cannot read its memory map"))?;
    if maps.trim().is_empty() {
        bail!("cannot trace PID {pid}: it is a kernel thread (no user-space code to profile)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_commands_like_a_shell() {
        assert!(resolve_program("sh").unwrap().is_absolute());
        let err = resolve_program("no-such-command-msh")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "command not found: no-such-command-msh");
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "data").unwrap();
        assert!(resolve_program(plain.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("not an executable"));
    }

    #[test]
    fn refuses_untraceable_pids() {
        assert!(check_pid(-5)
            .unwrap_err()
            .to_string()
            .contains("not a process id"));
        assert!(check_pid(i32::MAX)
            .unwrap_err()
            .to_string()
            .contains("no such process"));
        assert!(check_pid(std::process::id() as i32)
            .unwrap_err()
            .to_string()
            .contains("msh itself"));
        if Path::new("/proc/2/comm").exists()
            && std::fs::read_to_string("/proc/2/comm").unwrap().trim() == "kthreadd"
        {
            assert!(check_pid(2)
                .unwrap_err()
                .to_string()
                .contains("kernel thread"));
        }
    }
}
