//! RFC 3261 §18.2.1 and RFC 3581 on the server side: note in its top Via where a request really
//! came from. Responses always go back to the source address and port (SPEC R1; Kamailio's
//! `force_rport()` behaviour): a NAT between us and the client makes any other choice wrong.

use super::header::{Via, split_list};
use super::wire::Message;
use std::net::{IpAddr, SocketAddr};

/// Adds `received` (when the sent-by host is not the source address) and fills an empty
/// `rport` in the request's top Via, so that every response built from it carries them (R1).
pub fn stamp_top_via(message: &mut Message, peer: SocketAddr) {
    let Some(header) = message.headers.iter_mut().find(|h| h.name == "Via") else {
        return;
    };
    let items = split_list(&header.value);
    let Some(first) = items.first() else { return };
    let Some(via) = Via::parse(first) else { return };
    let ip = peer.ip();
    let mut stamped = (*first).to_string();
    if via.param("rport") == Some(None) {
        stamped = replace_param(&stamped, "rport", &format!("rport={}", peer.port()));
    }
    if !host_is(&via.host, ip) && via.param("received").is_none() {
        stamped.push_str(&format!(";received={ip}"));
    }
    let mut value = stamped;
    for rest in &items[1..] {
        value.push_str(", ");
        value.push_str(rest);
    }
    header.value = value;
}

fn host_is(host: &str, ip: IpAddr) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|h| h == ip)
}

/// Replaces a value-less `;name` parameter (matched case-insensitively) with `;replacement`.
fn replace_param(via: &str, name: &str, replacement: &str) -> String {
    let mut out = String::with_capacity(via.len() + 8);
    for (i, part) in via.split(';').enumerate() {
        if i > 0 {
            out.push(';');
        }
        if i > 0 && part.trim().eq_ignore_ascii_case(name) {
            out.push_str(replacement);
        } else {
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::wire::parse;

    fn message(via: &str) -> Message {
        parse(format!("OPTIONS sip:x SIP/2.0\r\nVia: {via}\r\nCall-ID: c\r\n\r\n").as_bytes())
            .unwrap()
    }

    #[test]
    fn r1_received_and_rport_are_stamped() {
        let peer: SocketAddr = "203.0.113.5:40001".parse().unwrap();
        let mut m = message("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport, SIP/2.0/UDP p");
        stamp_top_via(&mut m, peer);
        assert_eq!(
            m.header("Via"),
            Some(
                "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport=40001;received=203.0.113.5, SIP/2.0/UDP p"
            )
        );
        let mut m = message("SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK1");
        stamp_top_via(&mut m, peer);
        assert_eq!(
            m.header("Via"),
            Some("SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK1")
        );
    }
}
