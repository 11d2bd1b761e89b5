//! `gleaner-rootfs`: build, inspect, verify and unpack rootfs images.
//! Exit codes: 0 ok, 1 failure or checksum mismatch, 2 bad usage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gleaner_rootfs::{build, inspect, sha256_file, unpack, Source};

#[derive(Parser)]
#[command(
    name = "gleaner-rootfs",
    version,
    about = "builds, inspects, verifies and unpacks rootfs images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a reproducible image; prints its sha256.
    Build {
        /// A directory, or `busybox` for a minimal rootfs from the host's busybox.
        #[arg(long)]
        from: String,
        /// SRC:DEST, a file or directory added at DEST (repeatable).
        #[arg(long = "add", value_name = "SRC:DEST")]
        adds: Vec<String>,
        /// K=V recorded in the image's manifest (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        #[arg(long)]
        output: PathBuf,
    },
    /// Size, entries, sha256 and manifest (JSON).
    Inspect { image: PathBuf },
    /// Exit 1 unless the image has this sha256.
    Verify {
        image: PathBuf,
        #[arg(long)]
        sha256: String,
    },
    /// Unpack safely into DIR.
    Unpack { image: PathBuf, dir: PathBuf },
}

fn main() -> ExitCode {
    match run(Cli::parse().cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gleaner-rootfs: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode, String> {
    match cmd {
        Cmd::Build {
            from,
            adds,
            env,
            output,
        } => {
            let source = if from == "busybox" {
                Source::Busybox
            } else {
                Source::Dir(PathBuf::from(from))
            };
            let adds = adds
                .iter()
                .map(|a| {
                    a.split_once(':')
                        .map(|(s, d)| (PathBuf::from(s), PathBuf::from(d)))
                        .ok_or(format!("--add {a:?} is not SRC:DEST"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let env = env
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .ok_or(format!("--env {kv:?} is not K=V"))
                })
                .collect::<Result<BTreeMap<_, _>, _>>()?;
            println!(
                "{}",
                build(&source, &adds, &env, &output).map_err(|e| e.to_string())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inspect { image } => {
            let info = inspect(&image).map_err(|e| format!("{}: {e}", image.display()))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&info).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { image, sha256 } => {
            let actual = sha256_file(&image).map_err(|e| format!("{}: {e}", image.display()))?;
            if actual.eq_ignore_ascii_case(sha256.trim()) {
                println!("{} OK", image.display());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "gleaner-rootfs: {}: sha256 is {actual}, expected {sha256}",
                    image.display()
                );
                Ok(ExitCode::from(1))
            }
        }
        Cmd::Unpack { image, dir } => {
            let stats = unpack(&image, &dir).map_err(|e| e.to_string())?;
            println!(
                "{} entries, {} bytes, {} setuid/setgid bits stripped",
                stats.entries, stats.bytes, stats.stripped
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
