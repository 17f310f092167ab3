//! Debugging aid: prints lock API call chains (`API`), a lock definition
//! (`def:NAME`) or whether a line is in a live `#if` branch (`live:PATH:LINE`):
//! `cargo run --release -p msh-kpatch --example chains -- TREE spin_lock def:LOCK_CONTENDED`.
fn main() {
    let mut args = std::env::args().skip(1);
    let root = args.next().expect("usage: chains TREE API...");
    let tree = msh_kpatch::tree::KernelTree::open(std::path::Path::new(&root)).unwrap();
    let index = msh_kpatch::chain::LockIndex::build(&tree, 2).unwrap();
    for api in args {
        if let Some(spec) = api.strip_prefix("live:") {
            let (path, line) = spec.split_once(':').unwrap();
            let src = tree.read(path).unwrap();
            let line: usize = line.parse().unwrap();
            let offset: usize = src.split_inclusive('\n').take(line - 1).map(str::len).sum();
            let live = msh_kpatch::config::BuildConfig::x86_64_smp()
                .liveness(&src)
                .is_live_at(offset);
            println!("{spec}: {live}");
            continue;
        }
        if let Some(name) = api.strip_prefix("def:") {
            match index.lookup(name) {
                Some(d) => println!(
                    "{name}: {} {:?} {:?}",
                    d.path,
                    d.kind,
                    &index.source(d)[d.start..d.end]
                ),
                None => println!("{name}: none"),
            }
            continue;
        }
        match index.resolve(&api) {
            Ok(chain) => println!("{}", chain.names().join(" -> ")),
            Err(e) => println!("{api}: {e}"),
        }
    }
}
