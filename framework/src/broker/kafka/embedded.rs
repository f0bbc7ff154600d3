//! The embedded broker: librdkafka's in-process mock cluster, for running with nothing
//! installed and for tests with fault injection.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::error::{Error, Result};

type Reply = mpsc::Sender<Result<(), String>>;

enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: Reply,
    },
    BrokerDown {
        broker: i32,
        reply: Reply,
    },
    BrokerUp {
        broker: i32,
        reply: Reply,
    },
    RequestErrors {
        api: RDKafkaApiKey,
        errors: Vec<RDKafkaRespErr>,
        reply: Reply,
    },
    ClearRequestErrors {
        api: RDKafkaApiKey,
        reply: Reply,
    },
    PartitionLeader {
        topic: String,
        partition: i32,
        broker: i32,
        reply: Reply,
    },
    RoundTripTime {
        broker: i32,
        delay: std::time::Duration,
        reply: Reply,
    },
    GroupCoordinator {
        group: String,
        broker: i32,
        reply: Reply,
    },
}

/// An in-process Kafka-protocol broker (librdkafka's mock cluster) listening on loopback.
///
/// Clients in this or other processes reach it at [`bootstrap_servers`](Self::bootstrap_servers).
/// It keeps only the newest few MiB of each partition, and forgets everything when dropped.
#[derive(Debug)]
pub struct EmbeddedBroker {
    bootstrap: String,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel();
        // The mock cluster is not `Send`: one thread owns it and serves commands.
        let thread = std::thread::Builder::new()
            .name("weir-embedded-broker".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                for cmd in rx {
                    let (result, reply) = match cmd {
                        Command::CreateTopic {
                            name,
                            partitions,
                            reply,
                        } => (cluster.create_topic(&name, partitions, 1), reply),
                        Command::BrokerDown { broker, reply } => {
                            (cluster.broker_down(broker), reply)
                        }
                        Command::BrokerUp { broker, reply } => (cluster.broker_up(broker), reply),
                        Command::RequestErrors { api, errors, reply } => {
                            cluster.request_errors(api, &errors);
                            (Ok(()), reply)
                        }
                        Command::ClearRequestErrors { api, reply } => {
                            cluster.clear_request_errors(api);
                            (Ok(()), reply)
                        }
                        Command::PartitionLeader {
                            topic,
                            partition,
                            broker,
                            reply,
                        } => (
                            cluster.partition_leader(&topic, partition, Some(broker)),
                            reply,
                        ),
                        Command::RoundTripTime {
                            broker,
                            delay,
                            reply,
                        } => (cluster.broker_round_trip_time(broker, delay), reply),
                        Command::GroupCoordinator {
                            group,
                            broker,
                            reply,
                        } => (
                            cluster.coordinator(MockCoordinator::Group(group), broker),
                            reply,
                        ),
                    };
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                }
            })
            .map_err(|source| Error::Io {
                context: "starting the embedded broker thread",
                source,
            })?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| Error::Embedded("the broker thread died while starting".into()))?
            .map_err(Error::Embedded)?;
        Ok(Self {
            bootstrap,
            commands: Some(tx),
            thread: Some(thread),
        })
    }

    /// The `bootstrap.servers` list of the cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates `topic` with `partitions` partitions (the mock cluster has no CreateTopics API).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        self.call(|reply| Command::CreateTopic {
            name: topic.to_owned(),
            partitions,
            reply,
        })
        .map_err(|e| Error::Embedded(format!("creating topic {topic:?}: {e}")))
    }

    /// Takes broker `broker` (1-based) down: its connections close and it answers nothing.
    pub fn broker_down(&self, broker: i32) -> Result<()> {
        self.call(|reply| Command::BrokerDown { broker, reply })
            .map_err(|e| Error::Embedded(format!("broker {broker} down: {e}")))
    }

    /// Brings broker `broker` back up.
    pub fn broker_up(&self, broker: i32) -> Result<()> {
        self.call(|reply| Command::BrokerUp { broker, reply })
            .map_err(|e| Error::Embedded(format!("broker {broker} up: {e}")))
    }

    // (Fault injection for weir's own tests: names librdkafka's types.)
    #[doc(hidden)]
    /// Makes the next requests of kind `api` fail with `errors`, one error per request, in
    /// order (fault injection: e.g. `RDKafkaApiKey::OffsetCommit` with
    /// `RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT`).
    pub fn inject_request_errors(
        &self,
        api: RDKafkaApiKey,
        errors: &[RDKafkaRespErr],
    ) -> Result<()> {
        let errors = errors.to_vec();
        self.call(|reply| Command::RequestErrors { api, errors, reply })
            .map_err(|e| Error::Embedded(format!("request errors: {e}")))
    }

    // (Fault injection for weir's own tests: names librdkafka's types.)
    #[doc(hidden)]
    /// Drops the injected errors of kind `api` not used yet.
    pub fn clear_request_errors(&self, api: RDKafkaApiKey) -> Result<()> {
        self.call(|reply| Command::ClearRequestErrors { api, reply })
            .map_err(|e| Error::Embedded(format!("clear request errors: {e}")))
    }

    /// Makes broker `broker` (1-based) the leader of `topic`/`partition`.
    pub fn set_partition_leader(&self, topic: &str, partition: i32, broker: i32) -> Result<()> {
        let topic = topic.to_owned();
        self.call(|reply| Command::PartitionLeader {
            topic,
            partition,
            broker,
            reply,
        })
        .map_err(|e| Error::Embedded(format!("partition leader: {e}")))
    }

    /// Delays every answer of broker `broker` by `delay` (a slow network or a loaded broker).
    pub fn set_round_trip_time(&self, broker: i32, delay: std::time::Duration) -> Result<()> {
        self.call(|reply| Command::RoundTripTime {
            broker,
            delay,
            reply,
        })
        .map_err(|e| Error::Embedded(format!("round-trip time: {e}")))
    }

    /// Makes broker `broker` (1-based) the coordinator of consumer group `group`.
    pub fn set_group_coordinator(&self, group: &str, broker: i32) -> Result<()> {
        let group = group.to_owned();
        self.call(|reply| Command::GroupCoordinator {
            group,
            broker,
            reply,
        })
        .map_err(|e| Error::Embedded(format!("group coordinator: {e}")))
    }

    fn call(&self, cmd: impl FnOnce(Reply) -> Command) -> Result<(), String> {
        let (reply, rx) = mpsc::channel();
        self.commands
            .as_ref()
            .ok_or("stopped")?
            .send(cmd(reply))
            .map_err(|_| "the broker thread is gone".to_string())?;
        rx.recv()
            .map_err(|_| "the broker thread is gone".to_string())?
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
