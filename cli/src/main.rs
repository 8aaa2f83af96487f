//! `knnblend`: inspect, import, query and verify voice indexes; build them from audio or RVC
//! features; render audio through the realtime path; benchmark against faiss.
//!
//! Glue only: every subcommand calls the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod build;
mod compare;
mod import;
mod inspect;
mod progress;
mod query;
mod render;
mod synth;
mod verify;

/// Realtime nearest-neighbour feature blending for voice conversion.
#[derive(Parser)]
#[command(name = "knnblend", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what an index holds (.kbi or faiss .index).
    Inspect(inspect::Args),
    /// Convert a faiss .index (IVF-Flat as RVC ships added_*.index, or IVF-PQ FastScan) to .kbi.
    Import(import::Args),
    /// Search an index for the rows of a .npy file; write ids, distances and blends as .npy.
    Query(query::Args),
    /// Build a voice index from recordings (--audio) or RVC feature files (--npy).
    Build(build::Args),
    /// Run audio through the realtime voice path (live runtime, optional mid-file swap).
    Render(render::Args),
    /// Write one of the built-in synthetic voices (for trying things without recordings).
    Synth(synth::Args),
    /// Validate an index completely, checksums included; exit non-zero on any problem.
    Verify(verify::Args),
    /// Measure what a conversion did: median f0 and spectral envelope of the input, the output
    /// and the target voice, optionally drawn as a PNG.
    Compare(compare::Args),
    /// Benchmark per-frame search against faiss on RVC-shaped indexes (latency, block mode, floors).
    Bench(bench::Args),
}

/// Errors are reported as one line per cause.
pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Import(a) => import::run(a),
        Command::Query(a) => query::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Build(a) => build::run(a),
        Command::Render(a) => render::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut shown = e.to_string();
            eprintln!("error: {shown}");
            let mut source = e.source();
            while let Some(s) = source {
                // Many messages already include their cause; print only what is new.
                let text = s.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown = text;
                }
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
