//! The C examples build with their Makefile and agree with each other.
use msh_tests::*;
use std::process::Command;

#[test]
fn ptrchase_gives_the_same_checksum_alone_with_msh_and_as_os_threads() {
    let root = repo_root();
    ensure_libmsh();
    let build = scratch("examples");
    let status = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(root.join("c-examples"))
        .arg(format!("BUILD={}", build.display()))
        .arg(format!("LIBDIR={}", profile_dir().display()))
        .arg("SKIP_CARGO=1")
        .status()
        .expect("make");
    assert!(status.success());
    let checksum = |program: &str, mode: &str| -> String {
        let out = run(
            &build.join(program),
            &["-m", "4", "-n", "200000", "--mode", mode],
        );
        assert!(
            out.status.success(),
            "{program} {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let start = line.find("\"checksum\": ").expect("checksum") + 12;
        line[start..].split(',').next().unwrap().to_string()
    };
    let alone = checksum("ptrchase", "alone");
    assert_eq!(checksum("ptrchase_msh", "msh"), alone);
    assert_eq!(checksum("ptrchase", "os-threads"), alone);
    assert_eq!(checksum("ptrchase_yield", "yield"), alone);
}

#[test]
fn the_pkg_config_file_compiles_a_program() {
    ensure_libmsh();
    let build = scratch("pkgconfig");
    let pc = build.join("msh.pc");
    let status = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(repo_root().join("c-examples"))
        .arg(format!("BUILD={}", build.display()))
        .arg(format!("LIBDIR={}", profile_dir().display()))
        .arg("SKIP_CARGO=1")
        .arg(&pc)
        .status()
        .expect("make");
    assert!(status.success());
    let src = build.join("hello.c");
    std::fs::write(
        &src,
        "#include <msh.h>\nint main(void) { return msh_init(0) || msh_shutdown(); }\n",
    )
    .unwrap();
    let exe = build.join("hello");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cc {} -o {} $(pkg-config --cflags --libs msh)",
            src.display(),
            exe.display()
        ))
        .env("PKG_CONFIG_PATH", &build)
        .status()
        .expect("sh");
    assert!(
        status.success(),
        "cc $(pkg-config --cflags --libs msh) failed"
    );
    // The program records libmsh's soname, libmsh.so.0; cargo leaves only libmsh.so
    // in target/, so give the loader the name an installation would have.
    let soname = build.join("libmsh.so.0");
    let _ = std::fs::remove_file(&soname);
    std::os::unix::fs::symlink(profile_dir().join("libmsh.so"), &soname).unwrap();
    let out = Command::new(&exe)
        .env("LD_LIBRARY_PATH", &build)
        .output()
        .unwrap();
    assert_success(&out);
}
