//! `weir reset` on RabbitMQ: a stream topic's store moves to another offset of its stream (a
//! queue cannot be rewound: what it delivered is gone). Nothing is told to the broker, which
//! keeps no position for weir; no worker of the group may run (the stream's ownership queue
//! `T.<group>.owner` has a consumer for each), and a RabbitMQ changelog gets the tombstones
//! and the new offset as on Kafka.

use std::collections::BTreeMap;
use std::time::Duration;

use weir::state::changelog_topic;
use weir::state::rabbitmq::{lane_queue, StreamPoint, StreamTool};

use super::{rewind, show, Move, ResetArgs, Target};
use crate::error::{Error, Result};
use crate::locate::GroupDir;

/// How long the reset waits for the server.
const TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn run(
    args: &ResetArgs,
    target: Target,
    group: &GroupDir,
    topics: &[String],
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::RabbitMq(format!("starting the client's runtime: {e}")))?;
    let tool = runtime
        .block_on(StreamTool::connect(&args.brokers, TIMEOUT))
        .map_err(|e| Error::RabbitMq(e.to_string()))?;
    let planned = runtime.block_on(plan(&tool, args, target, group, topics));
    let (plan, changelogs) = match planned {
        Ok(p) => p,
        Err(e) => {
            runtime.block_on(tool.close());
            return Err(e);
        }
    };
    if !show(args, &plan, changelogs.values()) {
        runtime.block_on(tool.close());
        return Ok(());
    }
    let producer = weir::state::OutboxProducer::rabbitmq(&tool);
    let rewound = rewind(&plan, &changelogs, Error::RabbitMq, |store| {
        runtime.block_on(producer.flush(store))
    });
    runtime.block_on(tool.close());
    rewound
}

/// Each store's move and the changelogs to tell, once every topic is known to be a stream
/// that no worker of the group holds.
async fn plan<'t>(
    tool: &StreamTool,
    args: &ResetArgs,
    target: Target,
    group: &GroupDir,
    topics: &'t [String],
) -> Result<(Vec<Move>, BTreeMap<&'t str, String>)> {
    let rabbit = |e: weir::Error| Error::RabbitMq(e.to_string());
    let mut plan = Vec::new();
    let mut changelogs = BTreeMap::new();
    for topic in topics {
        if !tool.is_stream(topic).await.map_err(rabbit)? {
            return Err(Error::Input(format!(
                "{topic} is not a stream on RabbitMQ (an exchange with lane queues, or nothing): a queue cannot be rewound, what it delivered is gone. Nothing was changed"
            )));
        }
        if tool.owned(topic, &args.group).await.map_err(rabbit)? {
            return Err(Error::Refused(format!(
                "a worker of group {:?} holds stream {topic} or waits for it (the queue {topic}.{}.owner has consumers): it would overwrite the reset with its next commit; stop its workers first. Nothing was changed",
                args.group, args.group
            )));
        }
        let changelog = changelog_topic(&args.group, topic);
        if tool
            .exists(&lane_queue(&changelog, 0))
            .await
            .map_err(rabbit)?
        {
            changelogs.insert(topic.as_str(), changelog);
        }
        // Each offset asked for publishes an end mark to the stream: only those the target needs.
        let at = |point| async move { tool.offset_at(topic, point).await.map_err(rabbit) };
        let to = match target {
            Target::Earliest => at(StreamPoint::First).await?,
            Target::Latest => at(StreamPoint::End).await?,
            Target::Offset(o) => {
                let (first, end) = (at(StreamPoint::First).await?, at(StreamPoint::End).await?);
                o.clamp(first, end.max(first))
            }
            Target::Time(ms) => at(StreamPoint::Time(ms)).await?,
        };
        for (partition, path) in group.partitions(topic, None)? {
            plan.push(Move::of(topic, partition, path, to)?);
        }
    }
    Ok((plan, changelogs))
}
