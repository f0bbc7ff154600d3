//! What can go wrong, and the exit code of each (listed in `weir --help`).

/// An error of a `weir` subcommand.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Nothing matched (exit 1).
    #[error("{0}")]
    NotFound(String),
    /// A missing state dir, group, topic or store (exit 3).
    #[error("{0}")]
    Input(String),
    /// A state file that cannot be read: corrupt, foreign, of a newer schema (exit 3).
    #[error(transparent)]
    State(#[from] weir::state::Error),
    /// Kafka could not be reached, or refused (exit 4).
    #[error("kafka: {0}")]
    Kafka(String),
    /// NATS could not be reached, or refused (exit 4).
    #[error("nats: {0}")]
    Nats(String),
    /// RabbitMQ could not be reached, or refused (exit 4).
    #[error("rabbitmq: {0}")]
    RabbitMq(String),
    /// SQS could not be reached, or refused (exit 4).
    #[error("sqs: {0}")]
    Sqs(String),
    /// A worker could not be reached (exit 4).
    #[error("{0}")]
    Unreachable(String),
    /// Refused: the group has live members (exit 5).
    #[error("{0}")]
    Refused(String),
    /// Writing to stdout failed (a closed pipe ends the command quietly).
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::NotFound(_) => 1,
            Self::Input(_) | Self::State(_) | Self::Output(_) => 3,
            Self::Kafka(_)
            | Self::Nats(_)
            | Self::RabbitMq(_)
            | Self::Sqs(_)
            | Self::Unreachable(_) => 4,
            Self::Refused(_) => 5,
        }
    }
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(e.to_string())
    }
}

/// `Result` with the command's [`Error`].
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
