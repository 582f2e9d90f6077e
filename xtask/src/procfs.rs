//! Small readers of Linux's `/proc` that several commands share.

/// A `/proc/meminfo` field (`MemAvailable`, `Slab`, …) in bytes; `None`
/// where the file or the field is missing.
pub fn meminfo_bytes(key: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_field(&meminfo, key)
}

/// The field `key` of meminfo text, in bytes (the file says kB).
fn meminfo_field(meminfo: &str, key: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::meminfo_field;

    #[test]
    fn meminfo_fields_come_back_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\nSlab: 10 kB\n";
        assert_eq!(meminfo_field(text, "MemAvailable"), Some(20_000_000 * 1024));
        assert_eq!(meminfo_field(text, "Slab"), Some(10 * 1024));
        // A prefix of another key is not that key.
        assert_eq!(meminfo_field(text, "Mem"), None);
        assert_eq!(meminfo_field(text, "SUnreclaim"), None);
    }
}
