//! The forwarding task: takes records handed off by the layer and puts them into the queue as
//! send-message jobs, in the order they were handed off.

use std::sync::Arc;

use amboy_core::Queue;
use tokio::sync::{mpsc, oneshot};

use crate::guard::own_work;
use crate::state::{Fate, State, Ticket};
use crate::{LogRecord, SendMessageJob, Sink};

/// What the layer and the handles send the forwarding task.
#[derive(Debug)]
pub(crate) enum Message {
    /// A record to enqueue.
    Record(LogRecord),
    /// Answer with the number of records received so far: those handed off before this
    /// message.
    Flush(oneshot::Sender<u64>),
    /// Take no more records (those still in the channel are dropped), answer like `Flush`,
    /// and stop.
    Close(oneshot::Sender<u64>),
}

/// Forwards records until told to close or until every sender is gone. Runs as the logger's
/// own work: what the queue logs while putting is not logged back into it.
pub(crate) async fn forward(
    mut messages: mpsc::Receiver<Message>,
    state: Arc<State>,
    queue: Arc<dyn Queue>,
    sink: Arc<dyn Sink>,
) {
    own_work(async move {
        let mut received = 0;
        while let Some(message) = messages.recv().await {
            match message {
                Message::Record(record) => {
                    let ticket = Ticket::new(state.clone(), received);
                    received += 1;
                    let job = SendMessageJob::tracked(record, sink.clone(), ticket);
                    put(&*queue, &state, job).await;
                }
                Message::Flush(reply) => {
                    let _ = reply.send(received);
                }
                Message::Close(reply) => {
                    messages.close();
                    while let Some(message) = messages.recv().await {
                        match message {
                            Message::Record(_) => state.dropped(),
                            Message::Flush(other) | Message::Close(other) => {
                                let _ = other.send(received);
                            }
                        }
                    }
                    let _ = reply.send(received);
                    return;
                }
            }
        }
    })
    .await
}

/// Puts the job; a refusal is counted and reported, never logged (fix 11: amboy logged it
/// through the same sender, which put another job, which failed, and so on without end).
async fn put(queue: &dyn Queue, state: &State, job: SendMessageJob) {
    let job = Arc::new(job);
    if let Err(error) = queue.put(job.clone()).await {
        job.settle(Fate::PutFailed);
        state.report(format_args!(
            "could not enqueue a log record on queue '{}': {error}",
            queue.id()
        ));
    }
}
