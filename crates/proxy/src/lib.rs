//! bulkhead's transparent L7 proxies (DESIGN.md §1: its own process,
//! deciding with `bulkhead-policy`'s matchers).
//!
//! So far the room holds the HTTP/1.1 codec ([`http1`]): a strict,
//! sans-I/O request decoder and the encoder that writes every forwarded
//! request anew from its parsed form. The trade-off is deliberate: the
//! proxy frames requests itself instead of relaying bytes, so the server
//! sees exactly the requests the proxy allowed, one for one, in order, and
//! anything a strict server would refuse is refused before it.

pub mod http1;
