//! Topic administration: the dead-letter, late-record, changelog and repartition topics a
//! worker writes to.

use crate::broker::Connection;
use crate::broker::WantedTopic;
use crate::config::Config;
#[cfg(feature = "kafka")]
use crate::error::{Error, Result};
#[cfg(feature = "kafka")]
use crate::processing::repartition_topic;

/// A pipeline stage's name, input topics, and the folder of its stores.
#[cfg(feature = "kafka")]
pub(crate) type StageInputs = (String, Vec<String>, std::path::PathBuf);

/// Creates missing dead-letter, late-record and changelog topics (a changelog compacted, with
/// as many partitions as its source topic); failures are warnings, since the topics may exist
/// or be auto-created.
pub(crate) async fn ensure_topics(config: &Config, connection: &Connection) {
    let mut wanted = Vec::new();
    let mut want = |source: &str, name: String, kind, compacted| {
        wanted.push(WantedTopic {
            name,
            partitions_like: vec![source.to_owned()],
            kind,
            compacted,
        })
    };
    for t in &config.topics {
        if let Some(d) = config.dead_letter_topic_of(t) {
            want(t, d, "dead-letter topic", false);
        }
        if let (true, Some(l)) = (config.windows, config.late_topic_of(t)) {
            want(t, l, "late-record topic", false);
        }
        if let Some(c) = config.changelog_topic_of(t) {
            want(t, c, "changelog topic", true);
        }
    }
    connection.create_missing(wanted).await;
}

/// Creates the missing repartition topics of a pipeline whose stages (in order) consume
/// `inputs`: the one feeding a stage gets as many partitions as the previous stage's input.
/// A missing one that the stage's stores (in `stores/<topic>`) have offsets of was deleted
/// after records went through it: that is an error, since a new topic's offsets start again
/// at 0 and the stores would skip its first records. A stage reading a repartition topic with
/// no stage before it is an error too.
#[cfg(feature = "kafka")]
pub(crate) async fn ensure_repartition_topics(
    group: &str,
    inputs: &[StageInputs],
    connection: &Connection,
) -> Result<()> {
    let mut wanted = Vec::new();
    for (i, (stage, topics, stores)) in inputs.iter().enumerate() {
        let own = repartition_topic(group, stage);
        if !topics.contains(&own) {
            continue;
        }
        let Some((_, before, _)) = i.checked_sub(1).and_then(|i| inputs.get(i)) else {
            return Err(Error::config(
                "pipeline stage",
                format!(
                    "stage {stage:?} reads its repartition topic {own:?}, but no stage comes before it to feed it"
                ),
            ));
        };
        let (connection, name) = (connection.clone(), own.clone());
        let exists = tokio::task::spawn_blocking(move || {
            connection
                .partition_counts(std::iter::once(name.as_str()))
                .map(|c| c.values().any(Option::is_some))
        })
        .await;
        let dir = stores.join(&own);
        let used = std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "sqlite"))
        });
        if let (Ok(Ok(false)), true) = (exists, used) {
            return Err(Error::RepartitionTopicDeleted {
                topic: own,
                stage: stage.clone(),
                stores: dir,
            });
        }
        wanted.push(WantedTopic {
            name: own,
            partitions_like: before.clone(),
            kind: "repartition topic",
            compacted: false,
        });
    }
    connection.create_missing(wanted).await;
    Ok(())
}
