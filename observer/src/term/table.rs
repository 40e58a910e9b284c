//! Aligned columns: left-aligned text, right-aligned numbers, a
//! highlighted header.

use std::fmt::Write as _;

use super::style::{self, Paint, paint};

/// Columns of numbers (by their header) are right-aligned.
fn numeric(header: &str) -> bool {
    [
        "PKTS", "BYTES", "PACKETS", "OVERHEAD", "SKBS", "IFINDEX", "NON-IP", "MTU", "/S", "%",
    ]
    .iter()
    .any(|k| header.contains(k))
}

/// Formats rows as columns separated by two spaces: left-aligned, numbers
/// right-aligned; widths ignore colour escapes; the header is highlighted.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(style::visible_width(c));
        }
    }
    let right: Vec<bool> = header.iter().map(|h| numeric(h)).collect();
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = String>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            let Some(&w) = widths.get(i) else { break };
            if i > 0 {
                l.push_str("  ");
            }
            let pad = " ".repeat(w.saturating_sub(style::visible_width(&c)));
            if right[i] {
                l.push_str(&pad);
                l.push_str(&c);
            } else {
                l.push_str(&c);
                l.push_str(&pad);
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&mut header.iter().map(|h| paint(Paint::Header, *h)));
    for r in rows {
        line(&mut r.iter().cloned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
