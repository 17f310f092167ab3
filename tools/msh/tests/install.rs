//! `make -C c-examples install PREFIX=…` installs msh like a C library, and a C
//! program builds against the installed prefix with nothing but pkg-config.

use msh_tests::{ensure_libmsh, profile_dir, repo_root, scratch};
use std::path::Path;
use std::process::Command;

const PROGRAM: &str = r#"
#include <msh.h>
#include <stdio.h>
#include <stdlib.h>

static volatile unsigned long work;

static void scavenger(void *arg) {
    (void)arg;
    for (int i = 0; i < 100000; i++) { work++; msh_yield(); }
}

int main(void) {
    if (msh_init(NULL) != MSH_OK || msh_thread_register() != MSH_OK) return 2;
    if (msh_spawn(scavenger, NULL) != MSH_OK) return 3;
    unsigned long *table = calloc(1 << 16, sizeof *table), sum = 0;
    for (int i = 0; i < 1000; i++) {
        unsigned long *p = &table[(i * 4099) & 0xffff];
        MSH_PREFETCH_YIELD(p);
        sum += *p;
    }
    msh_stats stats;
    msh_thread_stats(&stats);
    printf("switches %llu sum %lu\n", (unsigned long long)stats.switches, sum);
    msh_thread_unregister();
    return msh_shutdown() == MSH_OK ? 0 : 4;
}
"#;

fn sh(script: &str, env: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot run sh")
}

#[test]
fn a_c_program_builds_against_the_installed_prefix_with_pkg_config_only() {
    ensure_libmsh();
    let dir = scratch("install");
    let prefix = dir.join("prefix");
    let _ = std::fs::remove_dir_all(&prefix);
    // The msh binary under test lives where cargo put it, beside libmsh.
    let msh = Path::new(env!("CARGO_BIN_EXE_msh"));
    assert_eq!(msh.parent(), Some(profile_dir().as_path()));
    let out = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(repo_root().join("c-examples"))
        .arg(format!("PREFIX={}", prefix.display()))
        .arg(format!("LIBDIR={}", profile_dir().display()))
        .arg("SKIP_CARGO=1")
        .arg("install")
        .output()
        .expect("make");
    assert!(
        out.status.success(),
        "make install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = prefix.join("lib");
    for file in [
        "bin/msh",
        "include/msh.h",
        "lib/libmsh.a",
        "lib/libmsh.so",
        "lib/libmsh.so.0",
        "lib/pkgconfig/msh.pc",
    ] {
        assert!(prefix.join(file).exists(), "{file} not installed");
    }

    let src = dir.join("prog.c");
    std::fs::write(&src, PROGRAM).unwrap();
    let exe = dir.join("prog");
    let pkgconfig = lib.join("pkgconfig");
    // No -I or -L of our own: the include path and the library come from msh.pc.
    let out = sh(
        &format!(
            "cc -O2 -Wall -Werror {} -o {} $(pkg-config --cflags --libs msh)",
            src.display(),
            exe.display()
        ),
        &[("PKG_CONFIG_PATH", &pkgconfig)],
    );
    assert!(
        out.status.success(),
        "cc $(pkg-config --cflags --libs msh) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Linked by soname, so an upgrade of libmsh.so.0.x keeps it working.
    let dynamic = sh(&format!("readelf -d {}", exe.display()), &[]);
    let dynamic = String::from_utf8_lossy(&dynamic.stdout);
    assert!(
        dynamic.contains("Shared library: [libmsh.so.0]"),
        "not linked by soname:\n{dynamic}"
    );
    let run = Command::new(&exe)
        .env("LD_LIBRARY_PATH", &lib)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let switches: u64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output {stdout:?}"));
    assert!(
        switches > 0,
        "the installed libmsh never switched: {stdout}"
    );

    // The installed msh finds the installed libmsh.so (../lib) for `msh run`.
    let pool = dir.join("empty.pool");
    std::fs::write(&pool, "# no scavengers\n").unwrap();
    let out = Command::new(prefix.join("bin/msh"))
        .args(["run", "--pool"])
        .arg(&pool)
        .args(["--", "true"])
        .env_remove("MSH_LIB")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("cannot find libmsh.so"),
        "installed msh did not find its libmsh: {stderr}"
    );
    assert!(out.status.success(), "{stderr}");
}
