//! `llmlab models list`.

use clap::Subcommand;

use super::CommonArgs;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the registry's models and whether their files are present.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(common: &CommonArgs, command: ModelsCommand) -> anyhow::Result<()> {
    let registry = common.registry()?;
    match command {
        ModelsCommand::List { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&registry.models)?);
                return Ok(());
            }
            println!(
                "{:<28} {:<10} {:<7} {:<9} {:>8}  PATH",
                "ID", "KIND", "BACKEND", "FILE", "CONTEXT"
            );
            for m in &registry.models {
                let default = if m.id == registry.default_model {
                    " (default)"
                } else {
                    ""
                };
                let present = if m.path.exists() { "present" } else { "missing" };
                println!(
                    "{:<28} {:<10} {:<7} {:<9} {:>8}  {}{default}",
                    m.id,
                    m.kind.as_str(),
                    m.backend.kind().as_str(),
                    present,
                    // Only llama models have a context size of their own.
                    m.backend
                        .llama()
                        .map_or("-".to_owned(), |llama| llama.context_size.to_string()),
                    m.path.display()
                );
            }
            Ok(())
        }
    }
}
