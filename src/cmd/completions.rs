//! `streamlab completions SHELL`: the completion script on stdout.

use anyhow::Result;

use crate::render;

/// `completions`, settled: the shell, and how to build the command tree to complete (clap's,
/// which `cli` owns).
pub struct Config {
    pub shell: clap_complete::Shell,
    pub command: fn() -> clap::Command,
}

pub fn run(config: Config) -> Result<()> {
    let mut command = (config.command)();
    let mut script = Vec::new();
    clap_complete::generate(config.shell, &mut command, "streamlab", &mut script);
    render::bytes(&script)?;
    Ok(())
}
