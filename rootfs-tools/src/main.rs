//! gleaner-rootfs: placeholder until the rootfs tool lands (issue 7).
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "gleaner-rootfs",
    version,
    about = "gleaner rootfs tool (not implemented yet)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!("gleaner-rootfs is not implemented yet")
}
