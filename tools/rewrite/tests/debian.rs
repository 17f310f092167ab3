//! Programs nobody here wrote, from Debian's packages (installed by .ci/run): gzip,
//! sqlite3 with its libsqlite3, and openssl's libcrypto (which has AVX-512 code),
//! rewritten with --all-loads, give byte-identical outputs on a corpus, plainly and
//! under the register-scrambling scavenger.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const SQLITE_LIB: &str = "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0";
const CRYPTO_LIB: &str = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3";

/// A corpus: text, a binary, and something highly compressible.
fn corpus(dir: &Path) -> Vec<PathBuf> {
    let text = dir.join("text");
    std::fs::write(
        &text,
        std::fs::read_to_string(format!("{FIXTURES}/kitchen.c"))
            .unwrap()
            .repeat(5),
    )
    .unwrap();
    let binary = dir.join("binary");
    let lib = std::fs::read(SQLITE_LIB).unwrap();
    std::fs::write(&binary, &lib[..lib.len().min(60_000)]).unwrap();
    let numbers = dir.join("numbers");
    std::fs::write(
        &numbers,
        (0..8_000).map(|i| format!("{i}\n")).collect::<String>(),
    )
    .unwrap();
    vec![text, binary, numbers]
}

#[test]
fn gzip_all_loads_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let gzip = Path::new("/usr/bin/gzip");
    let rewritten = dir.path().join("gzip.msh");
    let report = rewrite_all_loads(gzip, &rewritten);
    assert!(
        coverage(&report) >= 0.8,
        "gzip coverage {}/{}: {:?}",
        report.patched,
        report.candidates,
        report.skipped
    );
    let scrambler = scrambler(dir.path());

    for file in corpus(dir.path()) {
        let f = file.to_str().unwrap();
        for level in ["-1", "-9"] {
            let expected = run(gzip, &[level, "-c", f], &[], None, None);
            assert_eq!(expected.status, 0);
            assert_eq!(
                run(&rewritten, &[level, "-c", f], &[], None, None).stdout,
                expected.stdout,
                "gzip {level} {f}"
            );
            let scrambled = run(&rewritten, &[level, "-c", f], &[], None, Some(&scrambler));
            assert!(
                scrambled.yields > 100_000,
                "gzip {level}: {} yields",
                scrambled.yields
            );
            assert_eq!(
                scrambled.stdout, expected.stdout,
                "gzip {level} {f} under the scrambler"
            );
        }
        let compressed = dir.path().join("c.gz");
        std::fs::write(&compressed, run(gzip, &["-c", f], &[], None, None).stdout).unwrap();
        let c = compressed.to_str().unwrap();
        let original = std::fs::read(&file).unwrap();
        assert_eq!(
            run(&rewritten, &["-dc", c], &[], None, None).stdout,
            original
        );
        let scrambled = run(&rewritten, &["-dc", c], &[], None, Some(&scrambler));
        assert_eq!(scrambled.stdout, original, "gunzip {f} under the scrambler");
        assert_eq!(
            run(&rewritten, &["-t", c], &[], None, Some(&scrambler)).status,
            0,
            "gzip -t"
        );
    }
    // -t must still detect corruption.
    let bad = dir.path().join("bad.gz");
    let mut bytes = run(gzip, &["-c", "/etc/passwd"], &[], None, None).stdout;
    let n = bytes.len();
    bytes[n - 6] ^= 0xff;
    std::fs::write(&bad, bytes).unwrap();
    assert_ne!(
        run(
            &rewritten,
            &["-t", bad.to_str().unwrap()],
            &[],
            None,
            Some(&scrambler)
        )
        .status,
        0
    );
}

#[test]
fn sqlite3_and_libsqlite3_all_loads_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let lib_dir = dir.path().join("lib");
    std::fs::create_dir_all(&lib_dir).unwrap();
    let lib_report = rewrite_all_loads(Path::new(SQLITE_LIB), &lib_dir.join("libsqlite3.so.0"));
    let shell = dir.path().join("sqlite3.msh");
    let shell_report = rewrite_all_loads(Path::new("/usr/bin/sqlite3"), &shell);
    for r in [&lib_report, &shell_report] {
        assert!(
            coverage(r) >= 0.8,
            "{} coverage {}/{}: {:?}",
            r.input,
            r.patched,
            r.candidates,
            r.skipped
        );
    }
    let scrambler = scrambler(dir.path());
    let script = PathBuf::from(format!("{FIXTURES}/workload.sql"));
    let expected = run(
        Path::new("/usr/bin/sqlite3"),
        &[":memory:"],
        &[],
        Some(&script),
        None,
    );
    assert_eq!(expected.status, 0);
    assert!(
        String::from_utf8_lossy(&expected.stdout).contains("ok"),
        "the workload ends with integrity_check"
    );
    let env = [("LD_LIBRARY_PATH", lib_dir.to_str().unwrap())];
    let plain = run(&shell, &[":memory:"], &env, Some(&script), None);
    assert_eq!(plain.stdout, expected.stdout);
    let scrambled = run(&shell, &[":memory:"], &env, Some(&script), Some(&scrambler));
    assert!(scrambled.yields > 1_000_000, "{} yields", scrambled.yields);
    assert_eq!(
        scrambled.stdout, expected.stdout,
        "sqlite3 under the scrambler"
    );
}

#[test]
fn libcrypto_with_avx512_code_all_loads_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let lib_dir = dir.path().join("lib");
    std::fs::create_dir_all(&lib_dir).unwrap();
    let report = rewrite_all_loads(Path::new(CRYPTO_LIB), &lib_dir.join("libcrypto.so.3"));
    let skipped_avx512: usize = report
        .skipped
        .iter()
        .filter(|(reason, _)| reason.contains("AVX-512"))
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "libcrypto: {}/{} patched ({:.1}%), AVX-512 skips {skipped_avx512}, saved at {} bytes; skipped {:?}",
        report.patched,
        report.candidates,
        100.0 * coverage(&report),
        report.vector_width,
        report.skipped
    );
    // Only the functions that use AVX-512 state (and their callees) are left out.
    assert!(coverage(&report) >= 0.8, "coverage {}", coverage(&report));
    assert!(skipped_avx512 > 0, "libcrypto has AVX-512 functions");
    let input = dir.path().join("input");
    std::fs::write(&input, &std::fs::read(SQLITE_LIB).unwrap()[..400_000]).unwrap();
    let input = input.to_str().unwrap();
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let iv = "0f0e0d0c0b0a09080706050403020100";
    let commands: Vec<Vec<&str>> = vec![
        vec!["dgst", "-sha256", input],
        vec!["dgst", "-sha512", input],
        vec!["dgst", "-sha3-256", input],
        vec!["dgst", "-blake2b512", input],
        vec!["enc", "-aes-256-cbc", "-K", key, "-iv", iv, "-in", input],
        vec![
            "enc",
            "-aes-128-ctr",
            "-K",
            &key[..32],
            "-iv",
            iv,
            "-in",
            input,
        ],
        vec!["enc", "-chacha20", "-K", key, "-iv", iv, "-in", input],
        vec!["enc", "-base64", "-in", input],
    ];
    let openssl = Path::new("/usr/bin/openssl");
    let env = [("LD_LIBRARY_PATH", lib_dir.to_str().unwrap())];
    let scrambler = scrambler(dir.path());
    let mut yields = 0;
    for args in &commands {
        let expected = run(openssl, args, &[], None, None);
        assert_eq!(expected.status, 0, "openssl {args:?}");
        let plain = run(openssl, args, &env, None, None);
        assert!(
            plain.stdout == expected.stdout,
            "openssl {args:?} rewritten"
        );
        let scrambled = run(openssl, args, &env, None, Some(&scrambler));
        assert!(
            scrambled.stdout == expected.stdout,
            "openssl {args:?} under the scrambler"
        );
        yields += scrambled.yields;
    }
    assert!(yields > 100_000, "{yields} yields");
}
