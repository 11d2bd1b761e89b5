//! gleaner-monitor: placeholder until the monitor lands (issue 6).
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "gleaner-monitor",
    version,
    about = "gleaner monitor (not implemented yet)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!("gleaner-monitor is not implemented yet")
}
