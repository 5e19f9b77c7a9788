//! `llmlab`: a model runner. See `llmlab --help`.

mod cli;
mod logging;
mod pull;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    logging::init(args.common.log_format);
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
