//! Serialization ids: the codec reads Hessian2 bodies and routes others on their header only.

/// The Hessian2 serialization id, Dubbo's default and the only one whose bodies this codec reads.
pub(crate) const HESSIAN2: u8 = 2;

/// Why a call in serialization `id` cannot be proxied: the reason of its `BadRequest` reply.
pub(crate) fn unsupported_reason(id: u8) -> &'static str {
    UNSUPPORTED
        .get(usize::from(id))
        .copied()
        .unwrap_or(UNSUPPORTED_OTHER)
}

const UNSUPPORTED_OTHER: &str = "this serialization is not supported; only Hessian2 (2) is";

/// One static reason per 5-bit serialization id, so that the reply names the id without
/// allocating.
macro_rules! reasons {
    ($($id:literal)*) => {
        [$(concat!("serialization id ", $id, " is not supported; only Hessian2 (2) is")),*]
    };
}

const UNSUPPORTED: [&str; 32] = reasons!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_id() {
        assert_eq!(
            unsupported_reason(6),
            "serialization id 6 is not supported; only Hessian2 (2) is"
        );
        assert_eq!(unsupported_reason(31).split(' ').nth(2), Some("31"));
        assert_eq!(unsupported_reason(200), UNSUPPORTED_OTHER);
    }
}
