//! `llmlab`: a model runner. See `llmlab --help`.

use clap::Parser;

use llmlab_server::{cli, logging};

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
