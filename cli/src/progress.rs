//! Progress bars for long steps (stderr, hidden when it is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// One bar that follows `(stage, done, total)` reports, restarting when the stage changes.
pub struct StageBar {
    bar: ProgressBar,
    stage: String,
}

impl StageBar {
    pub fn new() -> StageBar {
        let bar = ProgressBar::new(1);
        bar.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:32}] {percent:>3}% {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        StageBar {
            bar,
            stage: String::new(),
        }
    }

    /// Reports progress of `stage`.
    pub fn update(&mut self, stage: impl std::fmt::Debug, done: u64, total: u64) {
        let name = format!("{stage:?}").to_lowercase();
        if name != self.stage {
            self.bar.set_message(name.clone());
            self.bar.reset_elapsed();
            self.stage = name;
        }
        self.bar.set_length(total.max(1));
        self.bar.set_position(done.min(total.max(1)));
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
