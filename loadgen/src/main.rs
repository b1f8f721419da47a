//! loadgen: the throughput and latency tool for corelog (issue 4).
//!
//! `main` parses and validates the flags, then calls [`run::run`] (a load run) or
//! [`baseline::run`] (`loadgen baseline`), prints the report and writes the requested files.
//! Bad flags and setup failures are one line on stderr and exit code 2; see `args.rs` for
//! the flags and `report.rs` for the output formats and the other exit codes.

mod args;
mod baseline;
mod hgrm;
mod load;
mod plan;
mod plot;
mod record;
mod report;
mod route;
mod run;
mod stats;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use crate::args::{Cli, Command};
use crate::report::{EXIT_USAGE, Report};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen: {}", one_line(&e.to_string()));
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    let code = match cli.command {
        Some(Command::Baseline(args)) => baseline_main(&args),
        None => run_main(&cli.run),
    };
    match code {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(EXIT_USAGE as u8)
        }
    }
}

/// The first line of a clap error without its `error: ` prefix, with a pointer to `--help`.
fn one_line(message: &str) -> String {
    let first = message.lines().next().unwrap_or("bad arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first} (see loadgen --help)")
}

fn run_main(args: &args::RunArgs) -> Result<i32, String> {
    let config = args.validate(&corelog::io::online_cpus())?;
    let report = run::run(config).map_err(|e| e.0)?;
    print!("{}", report::text(&report));
    write_outputs(&report)?;
    Ok(report.exit_code)
}

fn write_outputs(report: &Report) -> Result<(), String> {
    let config = &report.config;
    if let Some(path) = &config.json {
        let json = serde_json::to_string_pretty(report)
            .map_err(|e| format!("encoding the JSON report: {e}"))?;
        write(path, &(json + "\n"))?;
    }
    if let Some(path) = &config.hgrm {
        write(path, &hgrm::render(&report.window.produce.latency))?;
        for (name, h) in [
            ("end_to_end", &report.window.end_to_end.latency),
            ("consume", &report.window.consume.latency),
        ] {
            write(&sibling(path, name), &hgrm::render(h))?;
        }
    }
    if let Some(path) = &config.plot {
        let w = &report.window;
        let series = [
            plot::Series {
                name: "produce",
                what: "send → ack",
                color: "#1f77b4",
                hist: &w.produce.latency,
            },
            plot::Series {
                name: "end-to-end",
                what: "send → seen by a consumer",
                color: "#d62728",
                hist: &w.end_to_end.latency,
            },
            plot::Series {
                name: "consume",
                what: "ready for records → received",
                color: "#2ca02c",
                hist: &w.consume.latency,
            },
        ];
        let subtitle = format!(
            "{} B records, {} per request, {} in flight, {}; {} producer(s), {} consumer(s); \
             {:.1} s measured; produce {:.0} rec/s",
            config.record_bytes,
            config.batch_records,
            config.in_flight,
            match config.rate {
                Some(r) => format!("open loop at {r:.0} rec/s"),
                None => "closed loop".into(),
            },
            report.producers,
            report.consumers,
            report.measured_s,
            report.produce.records_per_s
        );
        write(
            path,
            &plot::svg(
                "corelog latency by percentile (loadgen)",
                &subtitle,
                &series,
            ),
        )?;
    }
    Ok(())
}

/// `lat.hgrm` + `end_to_end` → `lat.end_to_end.hgrm`.
fn sibling(path: &Path, name: &str) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned());
    let file = match (stem, ext) {
        (Some(stem), Some(ext)) => format!("{stem}.{name}.{ext}"),
        (Some(stem), None) => format!("{stem}.{name}"),
        _ => format!("{name}.hgrm"),
    };
    path.with_file_name(file)
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn baseline_main(args: &args::BaselineArgs) -> Result<i32, String> {
    let config = args.validate(&corelog::io::online_cpus())?;
    let report = baseline::run(&config)?;
    print!("{}", baseline::text(&report));
    if let Some(path) = &config.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("encoding the JSON report: {e}"))?;
        write(path, &(json + "\n"))?;
    }
    Ok(report::EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_siblings_keep_the_extension() {
        assert_eq!(
            sibling(Path::new("out/lat.hgrm"), "end_to_end"),
            PathBuf::from("out/lat.end_to_end.hgrm")
        );
        assert_eq!(
            sibling(Path::new("lat"), "consume"),
            PathBuf::from("lat.consume")
        );
    }

    #[test]
    fn clap_errors_become_one_line() {
        let e = Cli::try_parse_from(["loadgen", "--bogus"]).unwrap_err();
        let line = one_line(&e.to_string());
        assert!(!line.contains('\n'));
        assert!(line.contains("--bogus"), "{line}");
    }
}
