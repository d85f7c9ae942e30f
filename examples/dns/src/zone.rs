//! The DNS part of the `dns` unikernel, kept free of I/O so it is tested on the host: a zone
//! parsed from the command line, and the answer to one query message.
//!
//! Only what an authoritative server for a small zone needs: one question per query, classes
//! IN, types A, AAAA, NS, SOA (and ANY answered as NXDOMAIN/NODATA rules say), no compression
//! of incoming names beyond what queries use (pointers are rejected), answers with name
//! compression pointing at the question.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;
const TTL: u32 = 300;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RData {
    A([u8; 4]),
    Aaaa([u8; 16]),
    Ns(String),
}

impl RData {
    fn rtype(&self) -> u16 {
        match self {
            RData::A(_) => TYPE_A,
            RData::Aaaa(_) => TYPE_AAAA,
            RData::Ns(_) => TYPE_NS,
        }
    }
}

/// A zone: its origin, and records by owner name (lower case, no trailing dot).
#[derive(Clone, Debug, Default)]
pub struct Zone {
    pub origin: String,
    pub records: Vec<(String, RData)>,
    pub serial: u32,
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Zone {
    /// Parses the zone words: `zone=example.org`, `a=NAME=1.2.3.4`, `aaaa=NAME=2001:db8::1`,
    /// `ns=NAME`, `serial=N`. NAME is relative to the zone (`@` is the zone itself). Unknown
    /// words are returned for the caller (network options).
    pub fn parse<'a>(words: impl Iterator<Item = &'a str>) -> Result<(Zone, Vec<&'a str>), String> {
        let mut zone = Zone { serial: 1, ..Default::default() };
        let mut rest = Vec::new();
        let mut pending: Vec<(&str, &str, &str)> = Vec::new();
        for w in words {
            let w2 = w.trim_start_matches("--");
            match w2.split_once('=') {
                Some(("zone", z)) => zone.origin = normalise(z),
                Some(("serial", n)) => zone.serial = n.parse().map_err(|_| "bad serial".to_string())?,
                Some(("ns", n)) => pending.push(("ns", "@", n)),
                Some((kind @ ("a" | "aaaa"), rest_)) => {
                    let (name, addr) = rest_.split_once('=').ok_or_else(|| alloc::format!("bad record '{w}'"))?;
                    pending.push((kind, name, addr));
                }
                _ => rest.push(w),
            }
        }
        if zone.origin.is_empty() {
            return Err("no zone=NAME given".into());
        }
        for (kind, name, value) in pending {
            let owner =
                if name == "@" { zone.origin.clone() } else { alloc::format!("{}.{}", normalise(name), zone.origin) };
            let data = match kind {
                "a" => RData::A(
                    value
                        .parse::<core::net::Ipv4Addr>()
                        .map_err(|_| alloc::format!("bad IPv4 address '{value}'"))?
                        .octets(),
                ),
                "aaaa" => RData::Aaaa(
                    value
                        .parse::<core::net::Ipv6Addr>()
                        .map_err(|_| alloc::format!("bad IPv6 address '{value}'"))?
                        .octets(),
                ),
                _ => RData::Ns(normalise(value)),
            };
            zone.records.push((owner, data));
        }
        Ok((zone, rest))
    }

    fn in_zone(&self, name: &str) -> bool {
        name == self.origin || name.ends_with(&alloc::format!(".{}", self.origin))
    }

    fn name_exists(&self, name: &str) -> bool {
        name == self.origin || self.records.iter().any(|(o, _)| o == name)
    }
}

/// Reads the question name at `pos`; returns it (lower case, dotted) and the position after it.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            return Some((name, pos));
        }
        if len & 0xc0 != 0 || name.len() + len > 253 {
            return None;
        }
        let label = msg.get(pos..pos + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            name.push((b as char).to_ascii_lowercase());
        }
        pos += len;
    }
}

fn push_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

fn push_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn push_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Pointer to the question name, which always sits at offset 12.
const QNAME_PTR: u16 = 0xc00c;

fn push_record(out: &mut Vec<u8>, owner_is_qname: bool, owner: &str, rtype: u16, rdata: &[u8]) {
    if owner_is_qname {
        push_u16(out, QNAME_PTR);
    } else {
        push_name(out, owner);
    }
    push_u16(out, rtype);
    push_u16(out, CLASS_IN);
    push_u32(out, TTL);
    push_u16(out, rdata.len() as u16);
    out.extend_from_slice(rdata);
}

fn soa_rdata(zone: &Zone) -> Vec<u8> {
    let mut d = Vec::new();
    let mname = zone.records.iter().find_map(|(_, r)| if let RData::Ns(n) = r { Some(n.clone()) } else { None });
    push_name(&mut d, &mname.unwrap_or_else(|| alloc::format!("ns.{}", zone.origin)));
    push_name(&mut d, &alloc::format!("hostmaster.{}", zone.origin));
    for v in [zone.serial, 3600, 600, 86400, TTL] {
        push_u32(&mut d, v);
    }
    d
}

/// The response to `query`, or None when it should be dropped (not a query, too short).
pub fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None; // too short, or a response
    }
    let id = [query[0], query[1]];
    let opcode = (query[2] >> 3) & 0x0f;
    let rd = query[2] & 0x01;
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    let header = |rcode: u8, aa: bool, an: u16, ns: u16, with_question: bool| {
        let mut h = Vec::with_capacity(512);
        h.extend_from_slice(&id);
        h.push(0x80 | (opcode << 3) | if aa { 0x04 } else { 0 } | rd);
        h.push(rcode);
        push_u16(&mut h, u16::from(with_question));
        push_u16(&mut h, an);
        push_u16(&mut h, ns);
        push_u16(&mut h, 0);
        h
    };
    if opcode != 0 {
        return Some(header(RCODE_NOTIMP, false, 0, 0, false));
    }
    if qdcount != 1 {
        return Some(header(RCODE_FORMERR, false, 0, 0, false));
    }
    let Some((qname, pos)) = read_name(query, 12) else {
        return Some(header(RCODE_FORMERR, false, 0, 0, false));
    };
    let Some(q) = query.get(pos..pos + 4) else {
        return Some(header(RCODE_FORMERR, false, 0, 0, false));
    };
    let (qtype, qclass) = (u16::from_be_bytes([q[0], q[1]]), u16::from_be_bytes([q[2], q[3]]));
    let question = &query[12..pos + 4];
    if qclass != CLASS_IN || !zone.in_zone(&qname) {
        let mut r = header(RCODE_REFUSED, false, 0, 0, true);
        r.extend_from_slice(question);
        return Some(r);
    }
    let mut answers: Vec<(u16, Vec<u8>)> = Vec::new();
    if qtype == TYPE_SOA && qname == zone.origin {
        answers.push((TYPE_SOA, soa_rdata(zone)));
    }
    for (owner, data) in &zone.records {
        if *owner == qname && data.rtype() == qtype {
            let rdata = match data {
                RData::A(a) => a.to_vec(),
                RData::Aaaa(a) => a.to_vec(),
                RData::Ns(n) => {
                    let mut d = Vec::new();
                    push_name(&mut d, n);
                    d
                }
            };
            answers.push((qtype, rdata));
        }
    }
    let exists = zone.name_exists(&qname);
    let rcode = if exists { 0 } else { RCODE_NXDOMAIN };
    // No answer: the SOA in the authority section (negative caching, RFC 2308).
    let authority = answers.is_empty();
    let mut r = header(rcode, true, answers.len() as u16, u16::from(authority), true);
    r.extend_from_slice(question);
    for (rtype, rdata) in &answers {
        push_record(&mut r, true, &qname, *rtype, rdata);
    }
    if authority {
        let origin = zone.origin.clone();
        push_record(&mut r, false, &origin, TYPE_SOA, &soa_rdata(zone));
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let words = "zone=example.org. a=www=10.0.0.2 a=@=10.0.0.3 aaaa=www=2001:db8::2 ns=ns1.example.org a=ns1=10.0.0.2 --ipv4=10.0.0.2/24";
        let (z, rest) = Zone::parse(words.split_whitespace()).unwrap();
        assert_eq!(rest, ["--ipv4=10.0.0.2/24"]);
        z
    }

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        push_name(&mut q, name);
        push_u16(&mut q, qtype);
        push_u16(&mut q, CLASS_IN);
        q
    }

    #[test]
    fn a_record() {
        let r = answer(&zone(), &query("WWW.example.org", TYPE_A)).unwrap();
        assert_eq!(&r[..4], &[0x12, 0x34, 0x85, 0x00]); // response, AA, RD, NOERROR
        assert_eq!(&r[6..8], &[0, 1]); // one answer
        assert_eq!(&r[r.len() - 4..], &[10, 0, 0, 2]);
    }

    #[test]
    fn aaaa_ns_soa_nxdomain_nodata_refused() {
        let z = zone();
        let r = answer(&z, &query("www.example.org", TYPE_AAAA)).unwrap();
        assert_eq!(&r[r.len() - 16..], &"2001:db8::2".parse::<core::net::Ipv6Addr>().unwrap().octets());
        let r = answer(&z, &query("example.org", TYPE_NS)).unwrap();
        assert_eq!(&r[6..8], &[0, 1]);
        let r = answer(&z, &query("example.org", TYPE_SOA)).unwrap();
        assert_eq!((&r[6..8], r[3]), (&[0, 1][..], 0));
        let r = answer(&z, &query("nope.example.org", TYPE_A)).unwrap();
        assert_eq!((r[3] & 0x0f, &r[6..10]), (RCODE_NXDOMAIN, &[0, 0, 0, 1][..]));
        let r = answer(&z, &query("www.example.org", TYPE_NS)).unwrap();
        assert_eq!((r[3] & 0x0f, &r[6..10]), (0, &[0, 0, 0, 1][..]), "NODATA with SOA");
        let r = answer(&z, &query("example.com", TYPE_A)).unwrap();
        assert_eq!(r[3] & 0x0f, RCODE_REFUSED);
    }

    #[test]
    fn malformed_queries_never_panic() {
        let z = zone();
        assert!(answer(&z, &[]).is_none());
        let mut q = query("www.example.org", TYPE_A);
        for cut in 0..q.len() {
            let _ = answer(&z, &q[..cut]);
        }
        q[12] = 0xc0;
        assert_eq!(answer(&z, &q).unwrap()[3] & 0x0f, RCODE_FORMERR);
        for seed in 0..2000u32 {
            let junk: Vec<u8> =
                (0..(seed % 80)).map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 7) as u8).collect();
            let _ = answer(&z, &junk);
        }
    }
}
