//! report (placeholder)
use anyhow::Result;
/// `msh trace report` options.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {}
/// Runs `msh trace report`.
pub fn run(_: &ReportArgs) -> Result<()> { anyhow::bail!("not yet") }
