//! A bound on what decoding a protobuf message allocates, checked before it is decoded.
//!
//! Decoding can take far more memory than the bytes it reads: an element of a repeated message
//! field costs 2 bytes on the wire when empty, but a whole struct in memory. prost's envoy
//! `Route` is 2,272 bytes, so a `RouteConfiguration` of 2 MiB of empty routes decodes into
//! 2.3 GB (measured), and one of the 64 MiB a response may have would ask for 75 GB; a delta
//! response of empty `Resource`s (320 bytes each) would ask for 10 GB before the client even
//! looks at it. A control plane, or whoever speaks for it, could so abort the proxy.
//!
//! [`check`] bounds that without a schema. It counts the fields of the message and those of
//! every length-delimited field whose bytes read as a message, at any depth (a string that
//! happens to read as one is counted too: the count only errs upwards). Each allocation prost
//! makes for a field (an element of a repeated or map field, a string, a box) is for one of
//! these fields, and no element is larger than the `element_bytes` given for the message's
//! type; a string or packed array takes at most 8 bytes per byte it was read from. So decoding
//! allocates at most `fields × element_bytes + 8 × bytes`, and [`check`] refuses a message
//! for which that is over [`MAX_DECODED_BYTES`]. (A vector grown element by element may reserve
//! up to as much again in address space, most of it never touched.)
//!
//! What that leaves: a resource of 1 MiB may have about 260,000 fields (a route takes a few
//! dozen), and a response's own fields outside its resources, about a million.

use std::fmt;

/// The most that decoding one message (a response, or one resource in it) may allocate by the
/// count of [`check`].
pub(crate) const MAX_DECODED_BYTES: usize = 1 << 30;

/// The largest element of a repeated, map or boxed field in the messages a resource decodes
/// to: `Cluster`, `ClusterLoadAssignment`, `RouteConfiguration` and what they hold (the largest
/// is `Route`, 2,272 bytes; see the test naming them).
pub(crate) const RESOURCE_ELEMENT_BYTES: usize = 4096;

/// The largest element in a `DiscoveryResponse` or `DeltaDiscoveryResponse`, whose resources
/// stay encoded (`Any` values) until they are checked and decoded one by one (the largest is
/// the delta `Resource`, 320 bytes).
pub(crate) const RESPONSE_ELEMENT_BYTES: usize = 512;

/// Field 2 (`resources`), then field 2 (`Any.value`): the encoded resources of a
/// `DiscoveryResponse`, which decoding it leaves as bytes.
pub(crate) const SOTW_RESOURCE_VALUES: &[u32] = &[2, 2];
/// Field 2 (`resources`), field 2 (`Resource.resource`), field 2 (`Any.value`): those of a
/// `DeltaDiscoveryResponse`.
pub(crate) const DELTA_RESOURCE_VALUES: &[u32] = &[2, 2, 2];

/// Deeper than this, a length-delimited field is counted as one field, not read: prost refuses
/// messages nested more than 100 deep, so nothing deeper is ever decoded.
const MAX_DEPTH: usize = 128;

/// A message whose decoding could allocate more than [`MAX_DECODED_BYTES`].
#[derive(Debug)]
pub(crate) struct OverBudget {
    fields: usize,
    bound: usize,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "its {} fields could take {} bytes once decoded, over the {MAX_DECODED_BYTES} allowed",
            self.fields, self.bound
        )
    }
}

/// Refuses `bytes`, an encoded message whose repeated, map and boxed fields hold elements of at
/// most `element_bytes`, if decoding it could allocate more than [`MAX_DECODED_BYTES`] (see the
/// [module docs](self)). The length-delimited field at the end of the field-number path
/// `opaque` stays bytes when decoded, and is not read as a message.
pub(crate) fn check(bytes: &[u8], element_bytes: usize, opaque: &[u32]) -> Result<(), OverBudget> {
    let fields = count_fields(bytes, Some(opaque), 0);
    let bound = fields
        .saturating_mul(element_bytes)
        .saturating_add(bytes.len().saturating_mul(8));
    if bound > MAX_DECODED_BYTES {
        return Err(OverBudget { fields, bound });
    }
    Ok(())
}

/// The fields of `bytes` read as a message, and of its length-delimited fields read as
/// messages, down to where it stops reading as one (prost's decoding fails there too, and
/// allocates nothing past it). `opaque` is the path, from here, of a field not to read (`None`
/// once off that path).
fn count_fields(mut bytes: &[u8], opaque: Option<&[u32]>, depth: usize) -> usize {
    let mut fields = 0usize;
    // Groups (wire types 3 and 4) are read as flat fields: prost skips them, field by field.
    while let Some((key, rest)) = varint(bytes) {
        let number = key >> 3;
        let rest = match key & 7 {
            0 => varint(rest).map(|(_, rest)| rest),
            1 => rest.get(8..),
            2 => varint(rest).and_then(|(len, rest)| {
                let len = usize::try_from(len).ok()?;
                let payload = rest.get(..len)?;
                let inner = opaque.and_then(|path| match path.split_first() {
                    Some((&first, tail)) if u64::from(first) == number => Some(tail),
                    _ => None,
                });
                match inner {
                    // The end of the path: bytes, whatever they look like.
                    Some([]) => {}
                    _ if depth >= MAX_DEPTH => {}
                    _ => fields = fields.saturating_add(count_fields(payload, inner, depth + 1)),
                }
                rest.get(len..)
            }),
            3 | 4 => Some(rest),
            5 => rest.get(4..),
            _ => None,
        };
        fields = fields.saturating_add(1);
        match rest {
            Some(rest) => bytes = rest,
            None => break,
        }
    }
    fields
}

/// A varint at the start of `bytes`, and what follows it.
fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use envoy_types::pb::envoy::config::cluster::v3::Filter;
    use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
    use envoy_types::pb::envoy::config::core::v3::{
        Address, HeaderValueOption, HealthCheck, TypedExtensionConfig,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{LbEndpoint, LocalityLbEndpoints};
    use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
    use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
    use envoy_types::pb::envoy::config::route::v3::{
        HeaderMatcher, RateLimit, Route, RouteConfiguration, VirtualCluster, VirtualHost,
    };
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource, ResourceError, ResourceName,
    };
    use envoy_types::pb::google::protobuf::{Any, Value};
    use prost::Message;

    use super::*;

    #[test]
    fn the_element_sizes_cover_the_largest_elements() {
        let resource_elements = [
            size_of::<VirtualHost>(),
            size_of::<Route>(),
            size_of::<ClusterWeight>(),
            size_of::<HeaderMatcher>(),
            size_of::<HashPolicy>(),
            size_of::<RateLimit>(),
            size_of::<VirtualCluster>(),
            size_of::<HeaderValueOption>(),
            size_of::<LocalityLbEndpoints>(),
            size_of::<LbEndpoint>(),
            size_of::<HealthCheck>(),
            size_of::<Thresholds>(),
            size_of::<Filter>(),
            size_of::<TypedExtensionConfig>(),
            size_of::<Address>(),
            size_of::<Value>(),
        ];
        assert!(
            resource_elements
                .iter()
                .all(|&s| s <= RESOURCE_ELEMENT_BYTES),
            "{resource_elements:?}"
        );
        let response_elements = [
            size_of::<Any>(),
            size_of::<Resource>(),
            size_of::<ResourceName>(),
            size_of::<ResourceError>(),
            size_of::<Value>(),
        ];
        assert!(
            response_elements
                .iter()
                .all(|&s| s <= RESPONSE_ELEMENT_BYTES),
            "{response_elements:?}"
        );
    }

    /// A `RouteConfiguration` of one virtual host holding `routes` empty routes: 2 bytes each.
    fn empty_routes(routes: usize) -> Vec<u8> {
        let virtual_host: Vec<u8> = [0x1a, 0x00].repeat(routes); // field 3, `routes`
        let mut config = Vec::new();
        prost::encoding::bytes::encode(2, &virtual_host, &mut config); // `virtual_hosts`
        config
    }

    #[test]
    fn empty_routes_that_would_decode_into_gigabytes_are_refused() {
        // 1 MiB of wire, 512 Ki routes: over 1 GiB once decoded.
        let config = empty_routes(512 << 10);
        let err = check(&config, RESOURCE_ELEMENT_BYTES, &[]).err();
        assert!(
            err.is_some_and(|e| e.to_string().contains("its 524289 fields")),
            "not refused"
        );
        // Counted the same without the virtual host around them, or nested deeper.
        let mut deeper = Vec::new();
        prost::encoding::bytes::encode(7, &config, &mut deeper);
        assert!(check(&deeper, RESOURCE_ELEMENT_BYTES, &[]).is_err());
        // A thousand decode fine.
        let config = empty_routes(1000);
        assert!(check(&config, RESOURCE_ELEMENT_BYTES, &[]).is_ok());
        let decoded = RouteConfiguration::decode(config.as_slice());
        assert_eq!(
            decoded.map(|c| c.virtual_hosts[0].routes.len()).ok(),
            Some(1000)
        );
    }

    #[test]
    fn responses_leave_their_resources_to_be_checked_one_by_one() {
        // A response of two 600 KiB resources of empty routes: each is refused when decoded,
        // the response itself holds two `Any`s.
        let route_config = empty_routes(300 << 10);
        let any = Any {
            type_url: "t".into(),
            value: route_config.clone(),
        };
        let response = DiscoveryResponse {
            resources: vec![any.clone(), any.clone()],
            ..DiscoveryResponse::default()
        };
        let encoded = response.encode_to_vec();
        assert!(check(&encoded, RESPONSE_ELEMENT_BYTES, SOTW_RESOURCE_VALUES).is_ok());
        assert!(check(&route_config, RESOURCE_ELEMENT_BYTES, &[]).is_err());
        let delta = DeltaDiscoveryResponse {
            resources: vec![Resource {
                resource: Some(any),
                ..Resource::default()
            }],
            ..DeltaDiscoveryResponse::default()
        };
        let encoded = delta.encode_to_vec();
        assert!(check(&encoded, RESPONSE_ELEMENT_BYTES, DELTA_RESOURCE_VALUES).is_ok());
        // Read whole, the routes count.
        assert!(check(&encoded, RESOURCE_ELEMENT_BYTES, &[]).is_err());
    }

    #[test]
    fn empty_resources_in_a_response_are_refused() {
        // 8 MiB of empty delta resources would decode into 1.3 GB.
        let response: Vec<u8> = [0x12, 0x00].repeat(4 << 20);
        assert!(check(&response, RESPONSE_ELEMENT_BYTES, DELTA_RESOURCE_VALUES).is_err());
        let response: Vec<u8> = [0x12, 0x00].repeat(1 << 20);
        assert!(check(&response, RESPONSE_ELEMENT_BYTES, DELTA_RESOURCE_VALUES).is_ok());
    }

    #[test]
    fn malformed_and_truncated_messages_count_what_reads() {
        assert_eq!(count_fields(&[], None, 0), 0);
        // A varint field, then a length running past the end.
        assert_eq!(count_fields(&[0x08, 0x01, 0x12, 0x05, 0x00], None, 0), 2);
        // A key that never ends.
        assert_eq!(count_fields(&[0xff; 11], None, 0), 0);
        // Wire types 1 and 5, and a group.
        let fixed = [
            0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x15, 0, 0, 0, 0, 0x1b, 0x08, 0x01, 0x1c,
        ];
        assert_eq!(count_fields(&fixed, None, 0), 5);
        // Nested past the depth read as messages: counted once.
        let mut nested = vec![0x08, 0x01];
        for _ in 0..200 {
            let mut outer = Vec::new();
            prost::encoding::bytes::encode(1, &nested, &mut outer);
            nested = outer;
        }
        assert_eq!(count_fields(&nested, None, 0), MAX_DEPTH + 1);
    }
}
