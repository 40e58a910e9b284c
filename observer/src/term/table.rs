//! Aligned columns: left-aligned text, right-aligned numbers, a
//! highlighted header.

use comfy_table::{CellAlignment, Table, presets::NOTHING};

use super::style::{Paint, paint};

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
/// Cells past the header's are left out.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_header(header.iter().map(|h| paint(Paint::Header, *h)));
    for r in rows {
        t.add_row(r.iter().take(header.len()));
    }
    for (i, (column, h)) in t.column_iter_mut().zip(header).enumerate() {
        // Two spaces between columns, none before the first or after the last.
        column.set_padding((0, if i + 1 < header.len() { 2 } else { 0 }));
        if numeric(h) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = t.trim_fmt();
    out.push('\n');
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

    #[test]
    fn colour_codes_take_no_width_and_numbers_align_right() {
        let red = "\x1b[31mbad\x1b[0m".to_owned();
        let t = table(
            &["NAME", "PKTS", "NOTE"],
            &[
                vec![red.clone(), "7".into(), "x".into()],
                vec!["a-longer-name".into(), "1234".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            format!("NAME           PKTS  NOTE\n{red}               7  x\na-longer-name  1234\n")
        );
    }

    #[test]
    fn short_rows_end_early_and_extra_cells_are_left_out() {
        let t = table(
            &["A", "B"],
            &[vec!["1".into()], vec!["2".into(), "3".into(), "4".into()]],
        );
        assert_eq!(t, "A  B\n1\n2  3\n");
    }
}
