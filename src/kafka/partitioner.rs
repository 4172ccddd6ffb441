//! Partition choice, exactly as Apache Kafka's default partitioner does it for keyed records,
//! so streamlab, the Java client and librdkafka (`murmur2_random`) agree on where a key lives.

/// The seed Kafka's `Utils.murmur2` uses.
const KAFKA_MURMUR2_SEED: u32 = 0x9747_b28c;

/// Kafka's `Utils.murmur2(key)` as a signed 32-bit value (what Java returns).
pub fn kafka_murmur2(key: &[u8]) -> i32 {
    murmur2::murmur2(key, KAFKA_MURMUR2_SEED) as i32
}

/// `toPositive(murmur2(key)) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    assert!(partitions > 0, "a topic has at least one partition");
    ((kafka_murmur2(key) & 0x7fff_ffff) as u32 as usize) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Apache Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn matches_kafkas_java_implementation() {
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(kafka_murmur2(key.as_bytes()), expected, "key {key}");
        }
    }

    #[test]
    fn partition_is_in_range_and_stable() {
        for n in 1..10 {
            let p = partition_for_key(b"store-7", n);
            assert!(p < n);
            assert_eq!(p, partition_for_key(b"store-7", n));
        }
    }
}
