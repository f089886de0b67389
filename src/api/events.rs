//! `sigil.v1.EventService`: the resumable event stream and consumers'
//! acknowledgements (which let retention prune).
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::require;
use super::blocking;
use crate::core::Sigil;
use crate::pb;

/// `sigil.v1.EventService`.
#[derive(Clone)]
pub struct EventApi {
    sigil: Arc<Sigil>,
}

impl EventApi {
    /// Wraps a Sigil.
    pub fn new(sigil: Arc<Sigil>) -> Self {
        Self { sigil }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::event_service_server::EventService for EventApi {
    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let role = require(&req, "EventService/WatchEvents")?;
        // The staff console sees only what is meant for staff, and no
        // user's anti-phishing code.
        let staff_only = role == crate::api::auth::Role::Approver;
        // The deny-list is checked when the call starts; a stream also
        // stops as soon as a reload lists its certificate.
        let cert = crate::api::auth::leaf_facts(req.extensions()).and_then(|f| f.id.clone());
        let mut cursor = req.into_inner().after_cursor;
        let sigil = self.sigil.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let denied = match (&cert, sigil.deny_list()) {
                    (Some(id), Some(list)) => list.current().matches(id).is_some(),
                    _ => false,
                };
                if denied {
                    let _ = tx
                        .send(Err(super::status::certificate_denied(
                            "this client certificate was put on the deny-list; the stream is closed",
                        )))
                        .await;
                    return;
                }
                if sigil.is_closing() {
                    let _ = tx
                        .send(Err(super::status::to_status(crate::error::Error::Unavailable(
                            format!("server shutting down; reconnect and resume after cursor {cursor}"),
                        ))))
                        .await;
                    return;
                }
                // Register interest before reading, so no append is missed.
                let notified = sigil.event_signal().notified();
                let s = sigil.clone();
                let page = blocking(move || s.ops().events_after(cursor, 256)).await;
                match page {
                    Ok(events) if !events.is_empty() => {
                        for (seq, e) in events {
                            cursor = seq;
                            if staff_only
                                && !e
                                    .details
                                    .get("notify")
                                    .is_some_and(|n| n.split(' ').any(|w| w == "staff"))
                            {
                                continue;
                            }
                            let ev = pb::Event {
                                cursor: seq,
                                kind: e.kind.name(),
                                user_id: e.user_id,
                                at: e.at,
                                anti_phishing_code: if staff_only {
                                    String::new()
                                } else {
                                    e.anti_phishing_code.unwrap_or_default()
                                },
                                details: e.details.into_iter().collect(),
                            };
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {
                        tokio::select! {
                            _ = notified => {},
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                            _ = tx.closed() => return,
                        }
                    }
                    Err(st) => {
                        let _ = tx.send(Err(st)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn ack_events(&self, req: Request<pb::AckEventsRequest>) -> Result<Response<pb::AckEventsResponse>, Status> {
        let role = require(&req, "EventService/AckEvents")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let pruned_through = blocking(move || s.ops().ack_events(role.name(), &r.consumer, r.cursor)).await?;
        Ok(Response::new(pb::AckEventsResponse { pruned_through }))
    }
}
