//! Which partition a device belongs to: the same on every node and every version, because
//! stored positions are kept per partition.

/// FNV-1a of the device id, modulo `partitions` (at least 1). Stable by definition, unlike
/// the standard library's hasher.
pub fn partition_of(device: &str, partitions: u16) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in device.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_stable_and_in_range() {
        // Fixed values: a change here would move devices between stored positions.
        assert_eq!(partition_of("truck-1", 12), partition_of("truck-1", 12));
        assert_eq!(partition_of("", 12), (0xcbf2_9ce4_8422_2325u64 % 12) as u16);
        assert_eq!(partition_of("a", 1), 0);
        assert_eq!(partition_of("a", 0), 0);
        let spread: std::collections::HashSet<u16> = (0..200)
            .map(|i| partition_of(&format!("dev-{i}"), 12))
            .collect();
        assert_eq!(spread.len(), 12, "200 devices reach every partition");
    }
}
