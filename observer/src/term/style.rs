//! Colour for tables: only when stdout is a terminal and `NO_COLOR` is
//! unset (https://no-color.org), and never in JSON. Plain ANSI SGR codes;
//! `render::table` measures cells without them, so columns stay aligned.

use std::{
    io::IsTerminal as _,
    sync::atomic::{AtomicBool, Ordering},
};

use crate::api::Direction;

static ON: AtomicBool = AtomicBool::new(false);

/// Whether tables get colour, from stdout and `NO_COLOR`.
pub fn wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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
    fn code(self) -> &'static str {
        match self {
            Paint::Header => "1",
            Paint::Egress => "36",
            Paint::Ingress => "35",
            Paint::Bad => "1;31",
            Paint::Warn => "33",
            Paint::Good => "32",
            Paint::Dim => "2",
        }
    }
}

/// `s` in `p`'s colour when colour is on, else `s` as it is.
pub fn paint(p: Paint, s: impl Into<String>) -> String {
    let s = s.into();
    if enabled() && !s.is_empty() {
        format!("\x1b[{}m{s}\x1b[0m", p.code())
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

/// How wide `s` is on a terminal: characters, without SGR escapes.
pub fn visible_width(s: &str) -> usize {
    let mut n = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_ignores_escapes() {
        assert_eq!(visible_width("abc"), 3);
        assert_eq!(visible_width("\x1b[1;31mabc\x1b[0m"), 3);
        assert_eq!(visible_width("é"), 1);
    }
}
