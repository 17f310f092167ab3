//! plot (placeholder)
use anyhow::Result;
/// `msh trace plot` options.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {}
/// Runs `msh trace plot`.
pub fn run(_: &PlotArgs) -> Result<()> { anyhow::bail!("not yet") }
