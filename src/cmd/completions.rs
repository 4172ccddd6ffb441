//! `streamlab completions SHELL`: the completion script on stdout.

use anyhow::Result;

use crate::cli::{Cli, CompletionsArgs};
use crate::render;

pub fn run(args: CompletionsArgs) -> Result<()> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "streamlab", &mut script);
    render::bytes(&script)?;
    Ok(())
}
