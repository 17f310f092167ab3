//! `msh kpatch`: the arguments, and the call into msh-kpatch.

#[derive(clap::Args)]
pub struct KpatchArgs {
    /// Kernel source tree (e.g. target/linux-source-6.1).
    #[arg(long)]
    kernel: std::path::PathBuf,
    /// `perf script` output with call chains (`perf record -g`): patch its hottest locked field.
    #[arg(long, conflicts_with = "lock", required_unless_present = "lock")]
    perf_script: Option<std::path::PathBuf>,
    /// Lock API, e.g. spin_lock, down_write, mutex_lock (with --field).
    #[arg(long, requires = "field")]
    lock: Option<String>,
    /// The locked field: FIELD or STRUCT.FIELD (e.g. files_struct.file_lock).
    #[arg(long)]
    field: Option<String>,
    /// Name of the policy variable (default: STRUCT_FIELD_policy).
    #[arg(long)]
    policy_var: Option<String>,
    /// Where to write the unified diff.
    #[arg(short = 'o', long)]
    output: std::path::PathBuf,
    /// Also write the Coccinelle semantic patch into this directory.
    #[arg(long)]
    emit_cocci: Option<std::path::PathBuf>,
    /// Run spatch with the semantic patch and compare with the generated patch.
    #[arg(long)]
    check_spatch: bool,
    /// Worker threads for the tree scans (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn run(args: KpatchArgs) -> anyhow::Result<()> {
    let selection = match (args.perf_script, args.lock) {
        (Some(script), _) => msh_kpatch::Selection::Profile {
            script,
            lock: None,
            field: args.field,
        },
        (None, Some(api)) => msh_kpatch::Selection::Lock {
            api,
            field: args.field.expect("clap: --lock requires --field"),
        },
        (None, None) => unreachable!("clap requires --perf-script or --lock"),
    };
    let options = msh_kpatch::Options {
        kernel: args.kernel,
        selection,
        policy_var: args.policy_var,
        output: args.output,
        emit_cocci: args.emit_cocci,
        check_spatch: args.check_spatch,
        threads: args
            .threads
            .unwrap_or_else(msh_kpatch::tree::default_threads),
    };
    let report = msh_kpatch::run(&options)?;
    println!("{report}");
    Ok(())
}

/// Runs the subcommand; a failure is one line on stderr and exit status 1.
pub fn main(args: KpatchArgs) {
    if let Err(err) = run(args) {
        eprintln!("msh kpatch: {err:#}");
        std::process::exit(1);
    }
}
