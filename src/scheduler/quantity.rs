//! Kubernetes resource quantities ("100m", "1.5", "128Mi", "1G", "2e3") as numbers.

/// The value of a quantity in base units (cores for cpu, bytes for memory), or None
/// when it is not a quantity.
pub fn parse(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    // "2e3" is a number with an exponent; "2E" alone would be exa.
    let (num, suffix) = if suffix.is_empty() && (num.ends_with('E') || num.ends_with('e')) {
        (&num[..num.len() - 1], &q[num.len() - 1..])
    } else {
        (num, suffix)
    };
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(n * mult)
}

/// A cpu quantity in millicores, rounded up (as Kubernetes' `MilliValue`).
pub fn cpu_millis(q: &str) -> Option<i64> {
    parse(q).map(|v| (v * 1000.0).ceil() as i64)
}

/// A quantity in whole units (bytes for memory), rounded up (as Kubernetes' `Value`).
pub fn bytes(q: &str) -> Option<i64> {
    parse(q).map(|v| v.ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_views_round_up() {
        assert_eq!(cpu_millis("250m"), Some(250));
        assert_eq!(cpu_millis("0.5"), Some(500));
        assert_eq!(cpu_millis("1n"), Some(1));
        assert_eq!(bytes("64Mi"), Some(67_108_864));
        assert_eq!(bytes("1.5"), Some(2));
        assert_eq!(bytes("x"), None);
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse("100m"), Some(0.1));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("1.5"), Some(1.5));
        assert_eq!(parse("128Mi"), Some(134_217_728.0));
        assert_eq!(parse("1G"), Some(1e9));
        assert_eq!(parse("2e3"), Some(2000.0));
        assert_eq!(parse("1E"), Some(1e18));
        assert_eq!(parse("12x"), None);
        assert_eq!(parse(""), None);
    }
}
