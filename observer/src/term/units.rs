//! Human units for tables: bytes in powers of 1024, counts and rates in
//! powers of 1000. JSON output never goes through here.

const BYTE_UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/// 1234567 -> "1.2 MiB".
pub fn bytes(n: u64) -> String {
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < BYTE_UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", BYTE_UNITS[i])
    }
}

/// 1234567 -> "1.2M".
pub fn count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

/// A small number with one decimal below 10 ("2.5"), none above ("250").
fn small(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Bytes per second: "0 B/s", "2.5 B/s", "512 B/s", "1.2 MiB/s".
pub fn byte_rate(r: f64) -> String {
    let mut v = r.max(0.0);
    let mut i = 0;
    while v >= 1024.0 && i < BYTE_UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{} B/s", small(v))
    } else {
        format!("{v:.1} {}/s", BYTE_UNITS[i])
    }
}

/// Packets per second: "0 pkt/s", "5.0 pkt/s", "12.3k pkt/s", "1.5M pkt/s".
pub fn packet_rate(r: f64) -> String {
    let v = r.max(0.0);
    if v < 1e3 {
        format!("{} pkt/s", small(v))
    } else if v < 1e6 {
        format!("{:.1}k pkt/s", v / 1e3)
    } else if v < 1e9 {
        format!("{:.1}M pkt/s", v / 1e6)
    } else {
        format!("{:.1}G pkt/s", v / 1e9)
    }
}

/// `part` as a percentage of `whole`, one decimal: "3.2%"; "-" when whole is 0.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_binary() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn counts_are_decimal() {
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1.0k");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(2_500_000), "2.5M");
        assert_eq!(count(7_000_000_000), "7.0G");
    }

    #[test]
    fn rates() {
        assert_eq!(byte_rate(0.0), "0 B/s");
        assert_eq!(byte_rate(2.5), "2.5 B/s");
        assert_eq!(byte_rate(512.0), "512 B/s");
        assert_eq!(byte_rate(1024.0 * 1024.0 * 1.25), "1.2 MiB/s");
        assert_eq!(byte_rate(-3.0), "0 B/s");
        assert_eq!(packet_rate(5.0), "5.0 pkt/s");
        assert_eq!(packet_rate(250.0), "250 pkt/s");
        assert_eq!(packet_rate(12_345.0), "12.3k pkt/s");
        assert_eq!(packet_rate(1_500_000.0), "1.5M pkt/s");
    }

    #[test]
    fn percentages() {
        assert_eq!(percent(50, 1000), "5.0%");
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(1, 0), "-");
    }
}
