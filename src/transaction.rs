//! RFC 3261 §17.1.2 non-INVITE client transactions, for the relayed REGISTER and the expiry
//! PUBLISH: over UDP the request is retransmitted at T1, 2·T1, … capped at T2 (every T2 once a
//! provisional answer came), and the transaction gives up after 64·T1 (Timer F); over TCP
//! only Timer F runs. Responses find their transaction by the branch of our Via.

use crate::sip::Transport;
use crate::sip::header::{Via, split_list};
use crate::sip::outbound::{Destination, Outbound};
use crate::sip::wire::{Message, StartLine};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

/// RFC 3261's T2: the cap of the retransmission interval.
const T2: Duration = Duration::from_secs(4);

#[derive(Debug)]
pub enum Outcome {
    /// A final response (≥ 200).
    Final(Message),
    /// Timer F fired: no final response within 64·T1.
    Timeout,
    /// The request could not be sent at all.
    Unreachable(std::io::Error),
}

pub struct Transactions {
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>,
    t1: Duration,
}

impl Transactions {
    pub fn new(t1: Duration) -> Transactions {
        Transactions {
            pending: Mutex::new(HashMap::new()),
            t1,
        }
    }

    /// Hands a response to the transaction it answers; `false` if none is waiting for it.
    pub fn on_response(&self, message: Message) -> bool {
        let Some(branch) = top_branch(&message) else {
            return false;
        };
        let waiting = self.lock().get(&branch).cloned();
        match waiting {
            Some(tx) => tx.send(message).is_ok(),
            None => false,
        }
    }

    /// Sends `request` (whose top Via carries `branch`) to `to` and waits for the final
    /// response; provisional responses other than 100 go to `provisional`.
    pub async fn request(
        &self,
        outbound: &dyn Outbound,
        to: Destination,
        branch: &str,
        request: Vec<u8>,
        mut provisional: impl FnMut(Message),
    ) -> Outcome {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.lock().insert(branch.to_string(), tx);
        let _registered = Registration {
            transactions: self,
            branch,
        };
        if let Err(e) = outbound.send(to, request.clone()).await {
            return Outcome::Unreachable(e);
        }
        let timer_f = tokio::time::sleep(self.t1 * 64);
        tokio::pin!(timer_f);
        let mut interval = self.t1;
        let mut proceeding = false;
        loop {
            let retransmit = tokio::time::sleep(interval);
            tokio::select! {
                _ = &mut timer_f => return Outcome::Timeout,
                received = rx.recv() => {
                    let Some(message) = received else { return Outcome::Timeout };
                    match &message.start {
                        StartLine::Response { code, .. } if *code >= 200 => return Outcome::Final(message),
                        StartLine::Response { code, .. } => {
                            proceeding = true;
                            if *code != 100 {
                                provisional(message);
                            }
                        }
                        StartLine::Request { .. } => {}
                    }
                }
                _ = retransmit, if to.transport == Transport::Udp => {
                    if let Err(e) = outbound.send(to, request.clone()).await {
                        tracing::debug!(error = %e, "retransmission failed");
                    }
                    interval = if proceeding { T2 } else { (interval * 2).min(T2) };
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Message>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes the transaction from the table however `request` ends.
struct Registration<'a> {
    transactions: &'a Transactions,
    branch: &'a str,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.transactions.lock().remove(self.branch);
    }
}

fn top_branch(message: &Message) -> Option<String> {
    let via = message.header("Via")?;
    let top = Via::parse(split_list(via).first()?)?;
    top.branch().map(str::to_string)
}

/// A fresh RFC 3261 branch (magic cookie + random).
pub fn new_branch() -> String {
    format!("z9hG4bK-{}", uuid::Uuid::new_v4().simple())
}
