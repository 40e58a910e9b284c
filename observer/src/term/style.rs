//! Colour for tables: only where anstream would colour stdout (a terminal
//! that takes colour, `NO_COLOR` (https://no-color.org) and `CLICOLOR`
//! respected), and never in JSON. ANSI codes from anstyle; `table::table`
//! measures cells without them, so columns stay aligned.

use std::sync::atomic::{AtomicBool, Ordering};

use anstream::ColorChoice;
use anstyle::{AnsiColor, Style};

use crate::api::Direction;

static ON: AtomicBool = AtomicBool::new(false);

/// Whether tables get colour, from stdout and the environment.
pub fn wanted() -> bool {
    anstream::AutoStream::choice(&std::io::stdout()) != ColorChoice::Never
}

/// Turns colour on or off for what is rendered from now on.
pub fn set(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paint {
    /// Column headers.
    Header,
    /// What the pod (or the node) sent.
    Egress,
    /// What was delivered to it.
    Ingress,
    /// Something is wrong.
    Bad,
    /// Worth a look.
    Warn,
    /// Fine.
    Good,
    /// Less important.
    Dim,
}

impl Paint {
    fn style(self) -> Style {
        let fg = |c: AnsiColor| Style::new().fg_color(Some(c.into()));
        match self {
            Paint::Header => Style::new().bold(),
            Paint::Egress => fg(AnsiColor::Cyan),
            Paint::Ingress => fg(AnsiColor::Magenta),
            Paint::Bad => fg(AnsiColor::Red).bold(),
            Paint::Warn => fg(AnsiColor::Yellow),
            Paint::Good => fg(AnsiColor::Green),
            Paint::Dim => Style::new().dimmed(),
        }
    }
}

/// `s` in `p`'s colour when colour is on, else `s` as it is.
pub fn paint(p: Paint, s: impl Into<String>) -> String {
    let s = s.into();
    if enabled() && !s.is_empty() {
        let style = p.style();
        format!("{style}{s}{style:#}")
    } else {
        s
    }
}

/// A direction in its colour.
pub fn direction(d: Direction) -> String {
    match d {
        Direction::Egress => paint(Paint::Egress, d.name()),
        Direction::Ingress => paint(Paint::Ingress, d.name()),
    }
}
