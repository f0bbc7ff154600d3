//! Publishing with publisher confirms: emits, dead letters and late records to their topic's
//! exchange, persistent, routed by key, each with a `message_id` from weir's headers
//! (`broker::message_id`) so a downstream weir recognises a record sent again; changelog
//! entries to their lane's stream (`<changelog>.<lane>`, through the default exchange), the
//! key in the `weir.key` header.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};

use weir_state::wire::header;

use super::{Connection, PERSISTENT, lane_queue, short};
use crate::broker::{Outgoing, SendError, WantedTopic};

/// The worker's publisher: one confirming channel, made again after it fails.
#[derive(Debug)]
pub(crate) struct Publisher {
    connection: Connection,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

impl Publisher {
    pub(crate) fn new(connection: Connection) -> Self {
        Self {
            connection,
            channel: tokio::sync::Mutex::new(None),
        }
    }

    async fn channel(&self) -> Result<Channel, String> {
        let mut held = self.channel.lock().await;
        if let Some(c) = held.as_ref().filter(|c| c.status().connected()) {
            return Ok(c.clone());
        }
        let channel = self.connection.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        *held = Some(channel.clone());
        Ok(channel)
    }

    /// Publishes `r` to its topic's exchange with its key as routing key (a changelog entry,
    /// which names its lane: to the lane's stream), and waits for the broker's confirm. A
    /// topic not declared yet is declared first (a handler's emits). Header values are AMQP
    /// long strings (bytes); the timestamp is in seconds, as AMQP's.
    pub(crate) async fn send(&self, r: Outgoing<'_>) -> Result<(), SendError> {
        // A stream is written through the default exchange: a changelog's lane (only changelog
        // entries name their lane; the worker declared their streams), or a topic that is a
        // stream. Its routing key is the stream's name, so the key goes in a header.
        let (exchange, routing_key) = match r.partition {
            Some(lane) => (String::new(), lane_queue(r.topic, lane)),
            None if self.connection.is_stream(r.topic) => (String::new(), r.topic.to_owned()),
            None => (
                r.topic.to_owned(),
                r.key
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned(),
            ),
        };
        let to_stream = exchange.is_empty();
        let failed = |permanent: bool, message: String| SendError {
            permanent,
            message: if to_stream {
                format!("publishing to stream {routing_key}: {message}")
            } else {
                format!("publishing to exchange {}: {message}", r.topic)
            },
        };
        if !to_stream && self.connection.lanes_of(r.topic).is_none() {
            self.connection
                .create_missing(vec![WantedTopic {
                    name: r.topic.to_owned(),
                    partitions_like: Vec::new(),
                    kind: "emits",
                    compacted: false,
                }])
                .await;
        }
        let mut headers = FieldTable::default();
        let listed = r.headers.to_vec();
        for (name, value) in &listed {
            headers.insert(
                short(name),
                AMQPValue::LongString(LongString::from(value.unwrap_or_default())),
            );
        }
        if let (true, Some(key)) = (to_stream, r.key) {
            headers.insert(
                short(header::KEY),
                AMQPValue::LongString(LongString::from(key)),
            );
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers);
        if let Some(id) = crate::broker::message_id(r.topic, &listed) {
            properties = properties.with_message_id(short(&id));
        }
        let ts_ms = r.timestamp.unwrap_or_else(crate::wall_clock::now_ms);
        properties = properties.with_timestamp((ts_ms.max(0) / 1000) as u64);
        let channel = self.channel().await.map_err(|e| failed(false, e))?;
        let confirm = channel
            .basic_publish(
                &exchange,
                &routing_key,
                // Returned when no queue takes it, rather than dropped.
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                r.value.unwrap_or_default(),
                properties,
            )
            .await
            .map_err(|e| failed(false, e.to_string()))?;
        match confirm.await {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) => Err(failed(
                false,
                if to_stream {
                    format!("no such stream ({})", returned.reply_text)
                } else {
                    format!(
                        "no queue took it ({}): the exchange's lane queues are missing or unbound",
                        returned.reply_text
                    )
                },
            )),
            Ok(Confirmation::Nack(_)) => Err(failed(false, "the broker refused it (nack)".into())),
            Ok(Confirmation::NotRequested) => Ok(()),
            Err(e) => Err(failed(false, e.to_string())),
        }
    }
}
