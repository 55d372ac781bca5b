//! Kubernetes quantities (`512Mi`, `4Gi`, `1.5G`, `1e9`) to bytes, in exact integer arithmetic:
//! a decimal fraction is kept as an integer and a power of ten, never as a float, so `1.1G` is
//! 1 100 000 000 bytes and a 17-digit byte count keeps its last digit.

/// Parse a quantity into a whole number of bytes (rounded up), or say what is wrong.
pub fn parse_bytes(q: &str) -> Result<u64, String> {
    let q = q.trim();
    let not_a_quantity =
        || format!("{q:?} is not a quantity (expected a number such as 512Mi or 4Gi)");
    let out_of_range = || format!("{q:?} is out of range");
    let body = q.strip_prefix('+').unwrap_or(q);
    let split = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(split);
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(not_a_quantity());
    }
    // The number is `mantissa × 10^-scale`; trailing zeros of the fraction say nothing.
    let frac = frac.trim_end_matches('0');
    let digits = format!("{whole}{frac}");
    let digits = digits.trim_start_matches('0');
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| out_of_range())?
    };
    let scale = i64::try_from(frac.len()).map_err(|_| out_of_range())?;
    // The unit as a multiplier and a power of ten.
    let (multiplier, exp10): (u128, i64) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        s if s.starts_with(['e', 'E']) => {
            let exp: i64 = s[1..]
                .parse()
                .map_err(|_| format!("{q:?} has an invalid exponent"))?;
            (1, exp)
        }
        other => {
            return Err(format!(
                "{q:?} has an unknown unit {other:?} (use Ki, Mi, Gi, Ti)"
            ));
        }
    };
    let value = mantissa.checked_mul(multiplier).ok_or_else(out_of_range)?;
    let exp = exp10 - scale;
    let bytes = if value == 0 {
        0
    } else if exp >= 0 {
        let pow = u32::try_from(exp)
            .ok()
            .and_then(|e| 10u128.checked_pow(e))
            .ok_or_else(out_of_range)?;
        value.checked_mul(pow).ok_or_else(out_of_range)?
    } else {
        // A divisor beyond u128 leaves less than one byte, which rounds up to one.
        match u32::try_from(-exp).ok().and_then(|e| 10u128.checked_pow(e)) {
            Some(pow) => value.div_ceil(pow),
            None => 1,
        }
    };
    u64::try_from(bytes).map_err(|_| out_of_range())
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
    fn parses_exactly() {
        for (q, bytes) in [
            // As floats these were 1 100 000 001 and 9 007 199 254 740 992.
            ("1.1G", 1_100_000_000),
            ("9007199254740993", 9_007_199_254_740_993),
            ("0.1Gi", 107_374_183),
            ("1.50000Gi", 3 << 29),
            ("+2Ki", 2048),
            (".5Ki", 512),
            ("1.", 1),
            ("0", 0),
            ("0.0001", 1),
            ("1e-3", 1),
            ("12e-1", 2),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_bytes(q), Ok(bytes), "{q}");
        }
        for too_big in ["18446744073709551616", "1e20", "1e4000", "16Ei"] {
            let e = parse_bytes(too_big).expect_err(too_big);
            assert!(e.contains("out of range"), "{too_big}: {e}");
        }
    }

    #[test]
    fn rejects_nonsense_with_a_message() {
        for bad in [
            "", "Gi", "12Qi", "abc", "1..2Gi", "1e", ".", "-1Gi", "1.2.3",
        ] {
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
