//! A progress bar on stderr, drawn only when stderr is a terminal and the
//! caller asked for it (never in tests, CI or `--json` runs).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar that may be switched off; every method is a no-op then.
#[derive(Debug)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar if `wanted` and stderr is a terminal, otherwise nothing.
    pub fn new(wanted: bool) -> Progress {
        Progress((wanted && std::io::stderr().is_terminal()).then(ProgressBar::hidden))
    }

    /// Starts a new phase: `label`, a bar of `len` units.
    pub fn phase(&self, label: &'static str, len: u64) {
        if let Some(bar) = &self.0 {
            let template = format!("{label:>10} [{{bar:30}}] {{pos}}/{{len}} {{msg}}");
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            // Position first: a redraw between the two must not show the
            // old phase's count over the new length.
            bar.set_position(0);
            bar.set_length(len);
            bar.set_message("");
        }
    }

    /// Moves the bar to `pos` with a short status message.
    pub fn update(&self, pos: u64, msg: String) {
        if let Some(bar) = &self.0 {
            bar.set_position(pos);
            bar.set_message(msg);
        }
    }

    /// Removes the bar so the report starts on a clean line.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
