//! How weir's names map onto JetStream's, in one place: streams, subjects, key tokens,
//! lanes, consumers and the message ids of what weir publishes.
//!
//! - Topic `T` is the stream `T` with subjects `T.>`; a name with dots (`orders.dlq`) has
//!   them replaced by `_` in both (stream and subjects `orders_dlq.>`), so a dead-letter
//!   topic's subjects are never inside its source's `T.>`.
//! - A record's key is the subject's token after the topic (`T.<key>`, or `T.<lane>.<key>`
//!   once a partitioned stream has put it in its lane). Bytes a token cannot hold (`.`, `*`,
//!   `>`, `%`, spaces and controls, non-UTF-8) are written `%XX`; a record without a key is
//!   published to `T.%`.
//! - A partitioned stream maps `T.*` to `T.{{partition(N,1)}}.{{wildcard(1)}}`: lane `p` is
//!   the subjects `T.p.*`. A stream without that transform is one lane, `T.>`.

/// The stream (and first subject token) of `topic`.
pub fn stream_of(topic: &str) -> String {
    topic.replace('.', "_")
}

/// The subject a record of `topic` with `key` is published to.
pub fn publish_subject(topic: &str, key: Option<&[u8]>) -> String {
    let mut subject = stream_of(topic);
    subject.push('.');
    match key {
        Some(k) if !k.is_empty() => encode_key(k, &mut subject),
        _ => subject.push('%'),
    }
    subject
}

/// The subject of a record of `topic`'s lane `lane` with `key`, `T.<lane>.<key>`: where a
/// partitioned stream stores it, and where weir writes a changelog's records (a changelog
/// stream has no transform; its lanes are its source's).
pub(crate) fn lane_subject(topic: &str, lane: i32, key: Option<&[u8]>) -> String {
    let mut subject = format!("{}.{lane}.", stream_of(topic));
    match key {
        Some(k) if !k.is_empty() => encode_key(k, &mut subject),
        _ => subject.push('%'),
    }
    subject
}

/// The partition transform of a stream with `lanes` lanes: (source, destination).
pub(crate) fn partition_transform(stream: &str, lanes: i32) -> (String, String) {
    (
        format!("{stream}.*"),
        format!("{stream}.{{{{partition({lanes},1)}}}}.{{{{wildcard(1)}}}}"),
    )
}

/// The lane count of a stream whose subject transform goes from `source` to `destination`:
/// `Some(N)` for weir's partition transform, `None` for any other (or none).
pub(crate) fn lanes_of_transform(stream: &str, source: &str, destination: &str) -> Option<i32> {
    if source != format!("{stream}.*") {
        return None;
    }
    let rest = destination.strip_prefix(&format!("{stream}.{{{{partition("))?;
    let (lanes, rest) = rest.split_once(',')?;
    let lanes: i32 = lanes.trim().parse().ok()?;
    let rest = rest.trim_start().strip_prefix("1)}}.{{wildcard(1)}}")?;
    (rest.is_empty() && lanes > 0).then_some(lanes)
}

/// The subjects lane `lane` of `stream` reads (`partitioned`: the stream has the transform).
pub(crate) fn lane_filter(stream: &str, lane: i32, partitioned: bool) -> String {
    if partitioned {
        format!("{stream}.{lane}.*")
    } else {
        format!("{stream}.>")
    }
}

/// A record's key from the subject it is stored under, `None` for no key (or a subject
/// that is not one of the stream's record subjects).
pub(crate) fn key_of(stream: &str, subject: &str) -> Option<Vec<u8>> {
    lane_and_key(stream, subject).and_then(|(_, key)| key)
}

/// The lane (`None`: a stream of one lane) and the key of a record stored under `subject` in
/// `stream`: `<stream>.<lane>.<key>` in a partitioned stream, `<stream>.<key>` in one of one
/// lane. `None` for a subject outside the stream.
pub fn lane_and_key(stream: &str, subject: &str) -> Option<(Option<i32>, Option<Vec<u8>>)> {
    let rest = subject.strip_prefix(stream)?.strip_prefix('.')?;
    Some(match rest.split_once('.') {
        Some((lane, key)) => (lane.parse().ok(), decode_key(key)),
        None => (None, decode_key(rest)),
    })
}

/// The durable consumer of a group's lane: only characters a consumer name may hold.
pub fn consumer_name(group: &str, lane: i32) -> String {
    let group: String = group
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            _ => '_',
        })
        .collect();
    format!("weir-{group}-{lane}")
}

fn encode_key(key: &[u8], out: &mut String) {
    let plain = |b: u8| b > b' ' && b != 0x7f && !matches!(b, b'.' | b'*' | b'>' | b'%');
    match std::str::from_utf8(key) {
        Ok(s) if s.bytes().all(|b| plain(b) || b >= 0x80) => out.push_str(s),
        _ => {
            for &b in key {
                if plain(b) && b < 0x80 {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
}

fn decode_key(token: &str) -> Option<Vec<u8>> {
    if token == "%" || token.is_empty() {
        return None;
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| token.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The `Nats-Msg-Id` of a changelog record stored under `subject` (its lane and key): the
/// subject and the position its batch's headers name, so a batch's entry sent again is
/// dropped. `None` without the position.
pub(crate) fn changelog_message_id(
    subject: &str,
    headers: &[(&str, Option<&[u8]>)],
) -> Option<String> {
    let position = weir_state::wire::ChangelogPosition::from_headers(
        headers.iter().filter_map(|(n, v)| Some((*n, (*v)?))),
    )?;
    Some(format!(
        "{subject}/{}/{}",
        position.generation, position.next_offset
    ))
}

/// What an acknowledgement subject says of its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckInfo {
    /// The message's stream sequence.
    pub(crate) stream_seq: i64,
    /// The message's sequence among its consumer's deliveries.
    pub(crate) consumer_seq: i64,
    /// When the stream stored it, in milliseconds since the Unix epoch.
    pub(crate) timestamp_ms: i64,
    /// Messages of the consumer still to deliver after this one.
    pub(crate) pending: i64,
}

/// Reads `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (and the
/// newer form with a domain and an account hash before the stream, and a token after).
/// It runs once per message read, so it reads the tokens in place (no list of them).
pub(crate) fn ack_info(reply: &str) -> Option<AckInfo> {
    let mut tokens = [""; 12];
    let mut count = 0;
    for token in reply.split('.') {
        if count == tokens.len() {
            return None;
        }
        tokens[count] = token;
        count += 1;
    }
    let at = match count {
        9 => 2,
        11 | 12 => 4,
        _ => return None,
    };
    if tokens[..2] != ["$JS", "ACK"] {
        return None;
    }
    let num = |i: usize| tokens[at + i].parse::<i64>().ok();
    Some(AckInfo {
        stream_seq: num(3)?,
        consumer_seq: num(4)?,
        timestamp_ms: num(5)? / 1_000_000,
        pending: num(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_subjects() {
        for key in [
            &b"user-1"[..],
            b"a.b",
            b"with space",
            b"*>%",
            b"\xff\x00",
            "ключ".as_bytes(),
        ] {
            let subject = publish_subject("orders", Some(key));
            assert_eq!(subject.matches('.').count(), 1, "{subject}");
            assert!(!subject.contains([' ', '*', '>']), "{subject}");
            assert_eq!(key_of("orders", &subject).as_deref(), Some(key));
            let stored = subject.replacen("orders.", "orders.3.", 1);
            assert_eq!(key_of("orders", &stored).as_deref(), Some(key));
            assert_eq!(
                lane_and_key("orders", &stored).map(|(l, _)| l),
                Some(Some(3))
            );
        }
        assert_eq!(publish_subject("orders", None), "orders.%");
        assert_eq!(key_of("orders", "orders.%"), None);
        assert_eq!(key_of("orders", "orders.2.%"), None);
    }

    #[test]
    fn dotted_topics_get_their_own_streams() {
        assert_eq!(stream_of("orders.dlq"), "orders_dlq");
        assert_eq!(publish_subject("orders.dlq", Some(b"k")), "orders_dlq.k");
    }

    #[test]
    fn the_partition_transform_is_recognised() {
        let (src, dest) = partition_transform("orders", 4);
        assert_eq!(src, "orders.*");
        assert_eq!(dest, "orders.{{partition(4,1)}}.{{wildcard(1)}}");
        assert_eq!(lanes_of_transform("orders", &src, &dest), Some(4));
        assert_eq!(lanes_of_transform("orders", "orders.>", &dest), None);
        assert_eq!(
            lanes_of_transform("orders", &src, "orders.{{wildcard(1)}}"),
            None
        );
    }

    #[test]
    fn ack_subjects_are_read_in_both_forms() {
        let v1 = "$JS.ACK.orders.weir-g-0.1.42.40.1700000000123456789.7";
        let want = AckInfo {
            stream_seq: 42,
            consumer_seq: 40,
            timestamp_ms: 1_700_000_000_123,
            pending: 7,
        };
        assert_eq!(ack_info(v1), Some(want));
        let v2 = "$JS.ACK.hub.ACCHASH.orders.weir-g-0.1.42.40.1700000000123456789.7.rand";
        assert_eq!(ack_info(v2), Some(want));
        assert_eq!(ack_info("_INBOX.x"), None);
    }
}
