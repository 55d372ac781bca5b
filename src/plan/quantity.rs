//! Kubernetes quantities (`512Mi`, `4Gi`, `1.5G`, `1e9`) to bytes.

/// Parse a quantity into a whole number of bytes (rounded up), or say what is wrong.
pub fn parse_bytes(q: &str) -> Result<u64, String> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "{q:?} is not a quantity (expected a number such as 512Mi or 4Gi)"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{q:?} is not a quantity (expected a number such as 512Mi or 4Gi)"))?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..]
                .parse()
                .map_err(|_| format!("{q:?} has an invalid exponent"))?;
            10f64.powi(exp)
        }
        other => {
            return Err(format!(
                "{q:?} has an unknown unit {other:?} (use Ki, Mi, Gi, Ti)"
            ));
        }
    };
    let bytes = (value * factor).ceil();
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{q:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// Format bytes for people: `512 MiB`, `1 GiB`, `1.5 GiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if (v - v.round()).abs() < 0.05 {
        format!("{} {}", v.round() as u64, UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("4Gi"), Ok(4 << 30));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1e3"), Ok(1000));
        assert_eq!(parse_bytes("1024"), Ok(1024));
    }

    #[test]
    fn rejects_nonsense_with_a_message() {
        for bad in ["", "Gi", "12Qi", "abc", "1..2Gi", "1e"] {
            let err = parse_bytes(bad).expect_err(bad);
            assert!(
                err.contains("quantity") || err.contains("unit") || err.contains("exponent"),
                "{err}"
            );
        }
    }

    #[test]
    fn humanizes() {
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
