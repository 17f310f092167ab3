//! Damaged ELF files never panic the rewriter: each either rewrites or fails with a
//! one-line error. (A cheap deterministic fuzz: byte flips in the ELF header, the
//! program and section header tables, and the code.)

use msh_rewrite::{rewrite, Options, Selection};

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn flipped_bytes_never_panic() {
    let original = std::fs::read("/usr/bin/gzip").unwrap();
    let shoff = u64::from_le_bytes(original[0x28..0x30].try_into().unwrap()) as usize;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("damaged");
    let output = dir.path().join("out");
    let mut seed = 0x2545f4914f6cdd1du64;
    for round in 0..150 {
        let mut data = original.clone();
        for _ in 0..1 + round % 4 {
            let r = xorshift(&mut seed);
            let at = match r % 4 {
                0 => (r >> 8) as usize % 64,
                1 => 64 + (r >> 8) as usize % (56 * 13),
                2 => shoff + (r >> 8) as usize % (original.len() - shoff),
                _ => (r >> 8) as usize % original.len(),
            };
            data[at] = (r >> 40) as u8;
        }
        std::fs::write(&input, &data).unwrap();
        let options = Options {
            input: input.clone(),
            output: output.clone(),
            selection: Selection::AllLoads,
            allow_call_windows: false,
        };
        let result = std::panic::catch_unwind(|| {
            rewrite(&options).map(|_| ()).map_err(|e| format!("{e:#}"))
        });
        match result {
            Ok(Ok(())) => {}
            Ok(Err(message)) => assert!(!message.contains('\n'), "one line: {message}"),
            Err(_) => panic!("round {round}: the rewriter panicked on a damaged file"),
        }
    }
}
