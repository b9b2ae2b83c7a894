//! Messages as a sender holds them when its events are already encoded.

/// [`crate::pb::AppendEventsRequest`] with each event already an encoded
/// [`crate::pb::AuditEvent`]. A repeated message field and a repeated bytes field of the same
/// number are the same bytes on the wire, so the gateway reads this as an
/// `AppendEventsRequest`: a runtime that stores its events encoded sends them as stored,
/// without decoding and encoding each one again.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncodedAppendEventsRequest {
    /// Each an encoded `AuditEvent`.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub events: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::pb;

    fn event(id: &str, detail: &str) -> pb::AuditEvent {
        pb::AuditEvent {
            event_id: id.into(),
            sequence: 7,
            detail_json: detail.into(),
            ..Default::default()
        }
    }

    #[test]
    fn reads_as_the_request_it_stands_for() {
        let events = vec![
            event("a", "{\"n\":1}"),
            event("b", ""),
            pb::AuditEvent::default(),
        ];
        let encoded = EncodedAppendEventsRequest {
            events: events.iter().map(prost::Message::encode_to_vec).collect(),
        };
        let request = pb::AppendEventsRequest { events };
        assert_eq!(encoded.encode_to_vec(), request.encode_to_vec());
        let read = pb::AppendEventsRequest::decode(&*encoded.encode_to_vec()).unwrap();
        assert_eq!(read, request);
    }
}
