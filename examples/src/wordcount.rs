//! Word count: counts the words of text lines in SQLite state.

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
            let word = word
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            if !word.is_empty() {
                counts.update(&word, |n| Some(n.unwrap_or(0) + 1))?;
            }
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
    async fn invalid_utf8_is_an_error_for_that_record_not_a_panic() {
        let mut kit = TestKit::new(WordCount).expect("kit");
        kit.send("1", "ok words");
        kit.send_to("lines", 0, None, Some(&[0xff, 0xfe]), &[]);
        let err = kit.run().await.expect_err("undecodable record");
        let text = err.to_string();
        assert!(
            text.contains("offset 1") && text.contains("invalid UTF-8"),
            "{text}"
        );
        // The failed batch committed nothing; the record before it in the batch is not counted.
        assert_eq!(kit.committed_offset("lines", 0).expect("offset"), None);
    }
}
