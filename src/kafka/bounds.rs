//! Sizes read from the wire are checked against the bytes actually there before anything is
//! allocated.
//!
//! `kafka-protocol` 0.18 decodes an array by reading its element count and calling
//! `Vec::with_capacity(count)` before it reads a single element (`Array` and `CompactArray` in
//! its `protocol/types.rs`). A count of 0x7fffffff in a frame of a dozen bytes therefore asks
//! for tens of gigabytes up front; an allocation the system refuses aborts the process, which no
//! `Result` or `catch_unwind` can stop. (Strings and byte fields are safe: they are sliced out of
//! the buffer only when that many bytes are there.) Upstream fixes are proposed but not merged:
//! kafka-protocol-rs/kafka-protocol-rs#152, #161 and #200.
//!
//! The consumer protocol's bytes — a member's subscription, the assignment the leader gives each
//! member — are written by *other clients* of the group, not by the broker, so they are walked
//! here first: every count and length must fit in what is left of the bytes (count × the
//! smallest encoding of one element), else they are refused with a clear error and never reach
//! `kafka-protocol`. What passes can only make `kafka-protocol` reserve as many elements as the
//! bytes could hold. The schemas are the consumer protocol's (not flexible, so plain i16/i32
//! sizes), as in `kafka-protocol`'s `consumer_protocol_subscription.rs` and
//! `consumer_protocol_assignment.rs`:
//!
//! ```text
//! Subscription  v0+ topics [string], user_data nullable bytes
//!               v1+ owned_partitions [{ topic string, partitions [i32] }]
//!               v2+ generation_id i32
//!               v3+ rack_id nullable string
//! Assignment    v0+ assigned_partitions [{ topic string, partitions [i32] }], user_data nullable bytes
//! ```
//!
//! Broker responses (see [`super::wire`]) are decoded by `kafka-protocol` as they are: they come
//! from the brokers streamlab was pointed at, not from other members (whose bytes arrive inside
//! them as opaque byte fields and are walked here), and checking them would mean restating the
//! schema of every response version. A broker — or anyone on the plaintext path to it — that
//! sends an impossible array count can still abort streamlab; the frame size is bounded
//! ([`super::wire::MAX_RESPONSE_BYTES`]), the counts inside it are not. rskafka, which does the data path,
//! grows its vectors as elements arrive and is not affected.

/// Bytes that cannot be what they claim: an impossible count or length, or cut short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub(super) String);

/// The newest version of each consumer-protocol message this walker (and `kafka-protocol`)
/// knows. Newer versions only append fields, so their bytes are read as this version.
pub const NEWEST_VERSION: i16 = 3;

/// Wire sizes of the smallest element of each array: an empty string is its i16 length, an
/// empty array its i32 count.
const MIN_STRING: usize = 2;
const MIN_I32: usize = 4;
const MIN_TOPIC_PARTITIONS: usize = MIN_STRING + MIN_I32;

/// Check a subscription's bytes after the i16 version prefix, read as `version` (clamped to
/// `0..=NEWEST_VERSION` by the caller). Trailing bytes (fields of newer versions) are allowed.
pub fn check_subscription(bytes: &[u8], version: i16) -> Result<(), Malformed> {
    let mut w = Walker::new(bytes, "a subscription");
    let topics = w.count("topics", MIN_STRING)?;
    for _ in 0..topics {
        w.string("topic name", false)?;
    }
    w.bytes("user data", true)?;
    if version >= 1 {
        w.topic_partitions("owned topics", "owned partitions of a topic")?;
    }
    if version >= 2 {
        w.fixed(4, "generation id")?;
    }
    if version >= 3 {
        w.string("rack id", true)?;
    }
    Ok(())
}

/// Check an assignment's bytes after the i16 version prefix (the same schema at every version).
pub fn check_assignment(bytes: &[u8]) -> Result<(), Malformed> {
    let mut w = Walker::new(bytes, "an assignment");
    w.topic_partitions("assigned topics", "assigned partitions of a topic")?;
    w.bytes("user data", true)?;
    Ok(())
}

/// Reads sizes only, never allocates.
struct Walker<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Walker<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { rest: bytes, what }
    }

    fn left(&self) -> usize {
        self.rest.len()
    }

    fn fixed(&mut self, size: usize, field: &str) -> Result<&'a [u8], Malformed> {
        if self.left() < size {
            return Err(Malformed(format!(
                "{} cut short at its {field} ({size} bytes needed, {} left)",
                self.what,
                self.left()
            )));
        }
        let (head, rest) = self.rest.split_at(size);
        self.rest = rest;
        Ok(head)
    }

    fn i16(&mut self, field: &str) -> Result<i16, Malformed> {
        let b = self.fixed(2, field)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, field: &str) -> Result<i32, Malformed> {
        let b = self.fixed(4, field)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A non-nullable array's element count, each element at least `min_size` bytes.
    fn count(&mut self, field: &str, min_size: usize) -> Result<usize, Malformed> {
        let n = self.i32(&format!("number of {field}"))?;
        let Ok(count) = usize::try_from(n) else {
            return Err(Malformed(format!(
                "{} announcing {n} {field} (a negative count)",
                self.what
            )));
        };
        if count.saturating_mul(min_size) > self.left() {
            return Err(Malformed(format!(
                "{} announcing {count} {field} in {} bytes",
                self.what,
                self.left()
            )));
        }
        Ok(count)
    }

    /// A length-prefixed field: `len` bytes must follow; -1 is null where `nullable`.
    fn skip(&mut self, n: i64, field: &str, nullable: bool) -> Result<(), Malformed> {
        if n == -1 && nullable {
            return Ok(());
        }
        let Ok(len) = usize::try_from(n) else {
            return Err(Malformed(format!(
                "{} announcing {n} bytes of {field}",
                self.what
            )));
        };
        if len > self.left() {
            return Err(Malformed(format!(
                "{} announcing {len} bytes of {field} in {} bytes",
                self.what,
                self.left()
            )));
        }
        self.rest = &self.rest[len..];
        Ok(())
    }

    fn string(&mut self, field: &str, nullable: bool) -> Result<(), Malformed> {
        let n = self.i16(&format!("{field} length"))?;
        self.skip(n.into(), field, nullable)
    }

    fn bytes(&mut self, field: &str, nullable: bool) -> Result<(), Malformed> {
        let n = self.i32(&format!("{field} length"))?;
        self.skip(n.into(), field, nullable)
    }

    /// `[{ topic string, partitions [i32] }]`.
    fn topic_partitions(&mut self, topics: &str, partitions: &str) -> Result<(), Malformed> {
        let n = self.count(topics, MIN_TOPIC_PARTITIONS)?;
        for _ in 0..n {
            self.string("topic name", false)?;
            let ps = self.count(partitions, MIN_I32)?;
            self.fixed(ps * MIN_I32, partitions)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::collections::BTreeMap;

    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
    use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTopic;
    use kafka_protocol::messages::{
        ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
    };
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use proptest::prelude::*;

    use super::*;
    use crate::kafka::assign::{decode_assignment, decode_subscription, Subscription};

    /// The system allocator, remembering the largest single request made on each thread, so a
    /// test can show that hostile sizes were refused before anything was sized by them.
    struct Tracking;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    // SAFETY: every call is forwarded unchanged to `System`; the thread-local is const-initialised
    // without a destructor, so noting a size never allocates.
    unsafe impl GlobalAlloc for Tracking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            System.alloc(layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            System.alloc_zeroed(layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            System.realloc(ptr, layout, new_size)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
    }

    #[global_allocator]
    static ALLOCATOR: Tracking = Tracking;

    /// `f`'s result and the largest allocation it asked for.
    fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
        LARGEST.with(|l| l.set(0));
        let r = f();
        (r, LARGEST.with(Cell::get))
    }

    /// An error message (with anyhow's box, perhaps a backtrace) takes at most a few KiB; a decoder sized
    /// by a hostile count would ask for megabytes to gigabytes.
    const SMALL: usize = 64 * 1024;

    fn with_version(version: i16, body: &[u8]) -> Vec<u8> {
        let mut v = version.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn be32(n: i32) -> [u8; 4] {
        n.to_be_bytes()
    }

    fn s(text: &str) -> StrBytes {
        StrBytes::from_string(text.to_string())
    }

    /// A subscription with every field set, encoded at `version` with its prefix.
    fn full_subscription(version: i16) -> Vec<u8> {
        let subscription = ConsumerProtocolSubscription::default()
            .with_topics(vec![s("sales"), s("sensors")])
            .with_user_data(Some(Bytes::from_static(b"user data")))
            .with_owned_partitions(vec![OwnedTopic::default()
                .with_topic(TopicName(s("sales")))
                .with_partitions(vec![0, 2])])
            .with_generation_id(7)
            .with_rack_id(Some(s("rack-1")));
        let mut buf = BytesMut::new();
        buf.put_i16(version);
        subscription.encode(&mut buf, version).unwrap();
        buf.to_vec()
    }

    fn full_assignment(version: i16) -> Vec<u8> {
        let assignment = ConsumerProtocolAssignment::default()
            .with_assigned_partitions(vec![
                AssignedTopic::default()
                    .with_topic(TopicName(s("sales")))
                    .with_partitions(vec![3, 1]),
                AssignedTopic::default()
                    .with_topic(TopicName(s("sensors")))
                    .with_partitions(vec![]),
            ])
            .with_user_data(Some(Bytes::from_static(b"sticky")));
        let mut buf = BytesMut::new();
        buf.put_i16(version);
        assignment.encode(&mut buf, version).unwrap();
        buf.to_vec()
    }

    /// Rejected, with `says` in the message, and nothing sized by the hostile number.
    fn refused_subscription(bytes: &[u8], says: &str) {
        let (decoded, largest) = largest_allocation(|| decode_subscription(bytes));
        let err = format!("{:#}", decoded.expect_err("hostile bytes are refused"));
        assert!(largest < SMALL, "{largest} bytes allocated for {err}");
        assert!(err.contains(says), "{err:?} lacks {says:?}");
    }

    fn refused_assignment(bytes: &[u8], says: &str) {
        let (decoded, largest) = largest_allocation(|| decode_assignment(bytes));
        let err = format!("{:#}", decoded.expect_err("hostile bytes are refused"));
        assert!(largest < SMALL, "{largest} bytes allocated for {err}");
        assert!(err.contains(says), "{err:?} lacks {says:?}");
    }

    #[test]
    fn a_subscription_announcing_more_than_its_bytes_hold_is_refused_before_any_allocation() {
        // 0x7fffffff topics and 12 bytes: kafka-protocol alone would reserve 64 GiB and abort.
        let mut body = be32(i32::MAX).to_vec();
        body.extend_from_slice(&[0u8; 12]);
        refused_subscription(
            &with_version(0, &body),
            "a subscription announcing 2147483647 topics in 12 bytes",
        );
        // Plausible-looking but still more than the bytes can hold (two bytes per topic).
        let mut body = be32(100_000).to_vec();
        body.extend_from_slice(&[0u8; 12]);
        refused_subscription(
            &with_version(0, &body),
            "announcing 100000 topics in 12 bytes",
        );
        // Negative counts (-1 is not a null topic list in this schema).
        refused_subscription(&with_version(0, &be32(-1)), "announcing -1 topics");
        refused_subscription(&with_version(0, &be32(i32::MIN)), "a negative count");

        // A topic name longer than what follows.
        let mut body = be32(1).to_vec();
        body.extend_from_slice(&i16::MAX.to_be_bytes());
        body.extend_from_slice(b"sales");
        refused_subscription(
            &with_version(0, &body),
            "a subscription announcing 32767 bytes of topic name in 5 bytes",
        );
        // User data longer than what follows.
        let mut body = be32(0).to_vec();
        body.extend_from_slice(&be32(i32::MAX));
        refused_subscription(
            &with_version(0, &body),
            "announcing 2147483647 bytes of user data in 0 bytes",
        );

        // v1: a huge owned-partitions array, then a huge partitions array inside one.
        let mut body = be32(0).to_vec();
        body.extend_from_slice(&be32(-1)); // null user data
        body.extend_from_slice(&be32(i32::MAX));
        body.extend_from_slice(&[0u8; 6]);
        refused_subscription(
            &with_version(1, &body),
            "announcing 2147483647 owned topics in 6 bytes",
        );
        let mut body = be32(0).to_vec();
        body.extend_from_slice(&be32(-1));
        body.extend_from_slice(&be32(1));
        body.extend_from_slice(&5i16.to_be_bytes());
        body.extend_from_slice(b"sales");
        body.extend_from_slice(&be32(0x4000_0000));
        body.extend_from_slice(&be32(0));
        refused_subscription(
            &with_version(3, &body),
            "announcing 1073741824 owned partitions of a topic in 4 bytes",
        );

        // Too short for its own version.
        refused_subscription(&[0], "an empty subscription");
        refused_subscription(&with_version(0, &[0, 0]), "cut short");
        let v2_without_generation = with_version(2, &full_subscription(1)[2..]);
        refused_subscription(&v2_without_generation, "cut short at its generation id");
    }

    #[test]
    fn an_assignment_announcing_more_than_its_bytes_hold_is_refused_before_any_allocation() {
        let mut body = be32(i32::MAX).to_vec();
        body.extend_from_slice(&[0u8; 12]);
        refused_assignment(
            &with_version(0, &body),
            "an assignment announcing 2147483647 assigned topics in 12 bytes",
        );
        let mut body = be32(1).to_vec();
        body.extend_from_slice(&5i16.to_be_bytes());
        body.extend_from_slice(b"sales");
        body.extend_from_slice(&be32(i32::MAX));
        refused_assignment(
            &with_version(1, &body),
            "announcing 2147483647 assigned partitions of a topic in 0 bytes",
        );
        let mut body = be32(1).to_vec();
        body.extend_from_slice(&(-1i16).to_be_bytes()); // a null topic name is not allowed
        body.extend_from_slice(&be32(0));
        refused_assignment(&with_version(0, &body), "announcing -1 bytes of topic name");
        // Empty bytes remain "nothing assigned" (some leaders send none to idle members).
        assert!(decode_assignment(&[]).unwrap().is_empty());
    }

    #[test]
    fn every_version_a_client_may_send_still_decodes() {
        for version in 0..=NEWEST_VERSION {
            let bytes = full_subscription(version);
            let (decoded, largest) = largest_allocation(|| decode_subscription(&bytes));
            assert_eq!(
                decoded.unwrap(),
                Subscription {
                    topics: vec!["sales".into(), "sensors".into()]
                },
                "subscription v{version}"
            );
            assert!(largest < SMALL);
            // Every strict prefix is missing part of a field.
            for cut in 0..bytes.len() {
                assert!(
                    decode_subscription(&bytes[..cut]).is_err(),
                    "v{version} cut to {cut} bytes"
                );
            }

            let bytes = full_assignment(version);
            let decoded = decode_assignment(&bytes).unwrap();
            assert_eq!(
                decoded,
                BTreeMap::from([("sales".into(), vec![1, 3]), ("sensors".into(), vec![])]),
                "assignment v{version}"
            );
            for cut in 2..bytes.len() {
                assert!(
                    decode_assignment(&bytes[..cut]).is_err(),
                    "v{version} cut to {cut} bytes"
                );
            }
        }
        // A newer version appends fields: read as the newest known, the rest ignored.
        let mut v4 = full_subscription(3);
        v4[..2].copy_from_slice(&4i16.to_be_bytes());
        v4.extend_from_slice(b"a field from the future");
        assert_eq!(decode_subscription(&v4).unwrap().topics.len(), 2);
        let mut v4 = full_assignment(3);
        v4[..2].copy_from_slice(&4i16.to_be_bytes());
        v4.extend_from_slice(b"more");
        assert_eq!(decode_assignment(&v4).unwrap()["sales"], vec![1, 3]);
    }

    #[test]
    fn any_single_byte_changed_in_a_valid_message_is_decoded_or_refused_never_aborts() {
        for version in 0..=NEWEST_VERSION {
            for (bytes, is_subscription) in [
                (full_subscription(version), true),
                (full_assignment(version), false),
            ] {
                for at in 0..bytes.len() {
                    for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                        let mut changed = bytes.clone();
                        changed[at] = value;
                        let (_, largest) = largest_allocation(|| {
                            if is_subscription {
                                decode_subscription(&changed).map(drop)
                            } else {
                                decode_assignment(&changed).map(drop)
                            }
                        });
                        assert!(largest < SMALL, "{largest} bytes for {changed:?}");
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_allocate_more_than_they_could_hold(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            // Whatever passes the walk, kafka-protocol may reserve at most a few dozen bytes per
            // byte of input; whatever fails, nothing sized by it.
            let (_, largest) = largest_allocation(|| decode_subscription(&bytes).map(drop));
            prop_assert!(largest < SMALL, "{} bytes for {:?}", largest, bytes);
            let (_, largest) = largest_allocation(|| decode_assignment(&bytes).map(drop));
            prop_assert!(largest < SMALL, "{} bytes for {:?}", largest, bytes);
        }
    }
}
