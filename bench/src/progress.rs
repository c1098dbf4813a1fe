//! A live progress bar on stderr over a scenario's phase (hidden when stderr is not a
//! terminal).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr over the scenario's duration (hidden when stderr is not a
/// terminal).
#[derive(Debug)]
pub(crate) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for a phase lasting `duration`.
    pub(crate) fn new(phase: &str, duration: Duration) -> Self {
        let bar = ProgressBar::new(duration.as_millis() as u64);
        let style = ProgressStyle::with_template("{msg:>12} [{bar:40}] {elapsed}/{duration}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(phase.to_owned());
        Progress { bar }
    }

    /// Moves the bar to `elapsed`.
    pub(crate) fn set(&self, elapsed: Duration) {
        self.bar.set_position(elapsed.as_millis() as u64);
    }

    /// Removes the bar.
    pub(crate) fn finish(self) {
        self.bar.finish_and_clear();
    }
}
