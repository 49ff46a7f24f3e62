//! Progress bars over a job's `watch` channel.

use crate::jobs::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

/// Draw `rx` as a progress bar until the job finishes. Counts only: no value is
/// ever shown.
pub fn spawn(
    mut rx: watch::Receiver<Progress>,
    label: &str,
    hidden: bool,
) -> tokio::task::JoinHandle<()> {
    let bar = ProgressBar::with_draw_target(
        None,
        if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} rows ({per_sec}, eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(label.to_owned());
    tokio::spawn(async move {
        loop {
            {
                let p = rx.borrow_and_update().clone();
                if let Some(t) = p.total {
                    bar.set_length(t);
                }
                bar.set_position(p.scanned);
                bar.set_message(format!(
                    "written {} conflicts {} failed {}",
                    p.written, p.conflicts, p.failed
                ));
                if p.finished {
                    bar.finish();
                    return;
                }
            }
            if rx.changed().await.is_err() {
                bar.finish();
                return;
            }
        }
    })
}

/// A spinner for a scan whose length is unknown (status, verify). Call
/// `finish_and_clear` before printing results.
pub fn spinner(label: &str, hidden: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        None,
        if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}]")
            .expect("valid template"),
    );
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
