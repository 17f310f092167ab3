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
    /// Change only .c files, for kpatch-build (which refuses header changes).
    #[arg(long)]
    livepatch: bool,
    /// Worker threads for the tree scans (default: the machine's cores).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    threads: Option<usize>,
}

/// Runs the subcommand; the caller prints a failure as one line.
pub fn run(args: &KpatchArgs) -> anyhow::Result<()> {
    let selection = match (&args.perf_script, &args.lock, &args.field) {
        (Some(script), _, field) => msh_kpatch::Selection::Profile {
            script: script.clone(),
            lock: None,
            field: field.clone(),
        },
        (None, Some(api), Some(field)) => msh_kpatch::Selection::Lock {
            api: api.clone(),
            field: field.clone(),
        },
        _ => anyhow::bail!("give --perf-script, or --lock with --field"),
    };
    let options = msh_kpatch::Options {
        kernel: args.kernel.clone(),
        selection,
        policy_var: args.policy_var.clone(),
        output: args.output.clone(),
        emit_cocci: args.emit_cocci.clone(),
        check_spatch: args.check_spatch,
        livepatch: args.livepatch,
        threads: args
            .threads
            .unwrap_or_else(msh_kpatch::tree::default_threads),
    };
    let report = msh_kpatch::run(&options)?;
    println!("{report}");
    Ok(())
}
