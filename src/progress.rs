//! Live progress for long-running commands: a status line on a terminal, a periodic log line
//! otherwise (so a log file is not flooded with carriage returns).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    last_log: Instant,
}

impl Progress {
    pub fn new() -> Self {
        let shown = std::io::stderr().is_terminal() && !crate::render::quiet();
        let bar = shown.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .expect("static template"),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Self {
            bar,
            last_log: Instant::now(),
        }
    }

    /// Show `status`; off a terminal it is logged at most every few seconds.
    pub fn update(&mut self, status: impl FnOnce() -> String) {
        match &self.bar {
            Some(bar) => bar.set_message(status()),
            None if self.last_log.elapsed() >= LOG_EVERY && !crate::render::quiet() => {
                self.last_log = Instant::now();
                tracing::info!("{}", status());
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
