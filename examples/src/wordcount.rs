//! Word count: counts the words of text lines in SQLite state.

use std::borrow::Cow;

use weir::prelude::*;

/// Counts words per partition in the `counts` store.
#[derive(Debug, Handler)]
#[handler(topic = "lines", group = "wordcount", value = Utf8, store(Counts, key = str, value = u64))]
pub struct WordCount;

impl Process for WordCount {
    type Error = weir::Error;

    async fn process(&self, line: Record<'_, String>, ctx: &mut Ctx<'_>) -> weir::Result<()> {
        let mut counts = ctx.store::<Counts>();
        for word in line.value().split_whitespace() {
            let word = word.trim_matches(|c: char| !c.is_alphanumeric());
            if word.is_empty() {
                continue;
            }
            // Lowercased only when it has capitals: most words need no copy.
            let word: Cow<'_, str> = match word.chars().any(char::is_uppercase) {
                true => Cow::Owned(word.to_lowercase()),
                false => Cow::Borrowed(word),
            };
            counts.update(&word, |n| Some(n.unwrap_or(0) + 1))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use weir::testing::TestKit;
    use weir::StoreDef;

    use super::*;

    #[tokio::test]
    async fn counts_words_case_and_punctuation_insensitively() {
        let mut kit = TestKit::new(WordCount).expect("kit");
        kit.send("1", "The fox, the dog.").send("2", "THE end");
        assert_eq!(kit.run().await.expect("run"), 2);
        let counts: BTreeMap<String, u64> = kit.entries(Counts::NAME).expect("entries");
        let expected: BTreeMap<String, u64> = [("dog", 1), ("end", 1), ("fox", 1), ("the", 3)]
            .map(|(w, n)| (w.to_owned(), n))
            .into();
        assert_eq!(counts, expected);
        assert_eq!(kit.committed_offset("lines", 0).expect("offset"), Some(2));
    }

    #[tokio::test]
    async fn invalid_utf8_goes_to_the_dead_letters_and_the_rest_is_counted() {
        let mut kit = TestKit::new(WordCount).expect("kit");
        kit.send("1", "ok words");
        kit.send_to("lines", 0, None, Some(&[0xff, 0xfe]), &[]);
        kit.send("3", "more words");
        assert_eq!(kit.run().await.expect("run"), 3);
        let dead = kit.dead_letters();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].topic, "lines.dlq");
        assert_eq!(dead[0].source, ("lines".to_owned(), 0, 1));
        assert_eq!(dead[0].value.as_deref(), Some(&[0xff, 0xfe][..]));
        assert_eq!(
            (dead[0].attempts, dead[0].reason),
            (1, weir::testing::DeadLetterReason::Undecodable)
        );
        assert_eq!(
            kit.get::<str, u64>(Counts::NAME, "words").expect("get"),
            Some(2)
        );
        assert_eq!(kit.committed_offset("lines", 0).expect("offset"), Some(3));
    }

    #[tokio::test]
    async fn without_dead_letters_an_undecodable_record_is_an_error_carrying_its_bytes() {
        let mut kit = TestKit::new(WordCount)
            .expect("kit")
            .dead_letter_topic(None);
        kit.send("1", "ok words");
        kit.send_to("lines", 0, None, Some(&[0xff, 0xfe]), &[]);
        let err = kit.run().await.expect_err("undecodable record");
        let text = err.to_string();
        assert!(
            text.contains("offset 1") && text.contains("invalid UTF-8"),
            "{text}"
        );
        let weir::Error::Record { source, .. } = &err else {
            panic!("expected a record error, got {err:?}");
        };
        let undecodable = source
            .downcast_ref::<weir::codec::UndecodableRecord>()
            .expect("the error carries the undecodable record");
        assert_eq!(
            (undecodable.part, undecodable.raw.as_deref()),
            ("value", Some(&[0xff, 0xfe][..]))
        );
        // The failed batch committed nothing; the record before it in the batch is not counted.
        assert_eq!(kit.committed_offset("lines", 0).expect("offset"), None);
    }
}
