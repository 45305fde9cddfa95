//! The field names of config types, read from their serde `Deserialize` implementations, so that
//! a test can hold `docs/config.md` to the types without a hand-kept list.
//!
//! [`fields_of`] runs `T::deserialize` on a deserializer that answers every request with a
//! plausible value (a duration for a duration, an address for an address, one element for a
//! list) and records each struct it is asked for, with its fields, on the way down.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

/// Struct name to its fields, for every struct reachable from a type.
pub(crate) type Fields = BTreeMap<&'static str, &'static [&'static str]>;

/// Every struct reachable from `T`, with its serde field names.
pub(crate) fn fields_of<T: DeserializeOwned>() -> Result<Fields, String> {
    let found = RefCell::new(Fields::new());
    T::deserialize(Tracer {
        found: &found,
        depth: 0,
    })
    .map_err(|e| e.0)?;
    Ok(found.into_inner())
}

/// The words written in code spans (between backticks) of a Markdown text: where field names
/// are documented.
pub(crate) fn code_words(markdown: &str) -> std::collections::BTreeSet<&str> {
    markdown
        .split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|span| span.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|word| !word.is_empty())
        .collect()
}

#[derive(Debug)]
struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// How deep types may nest (a recursive type would otherwise never end).
const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy)]
struct Tracer<'a> {
    found: &'a RefCell<Fields>,
    depth: usize,
}

impl Tracer<'_> {
    fn deeper(self) -> Result<Self, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(Error("config types nest too deep to trace".into()));
        }
        Ok(Self {
            depth: self.depth + 1,
            ..self
        })
    }
}

/// A string the visitor will accept, chosen by what it says it expects.
fn sample<'de, V: Visitor<'de>>(visitor: &V) -> &'static str {
    struct Expecting<'v, V>(&'v V);
    impl<'de, V: Visitor<'de>> fmt::Display for Expecting<'_, V> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.expecting(f)
        }
    }
    // Anything else gets an address: it is also a valid name, pattern or `host:port`, where a
    // type that parses its string (an endpoint address) only says it expects a string.
    if Expecting(visitor).to_string().contains("duration") {
        "1s"
    } else {
        "127.0.0.1:1"
    }
}

impl<'de, 'a> de::Deserializer<'de> for Tracer<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(1.0)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let value = sample(&visitor);
        visitor.visit_str(value)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self.deeper()?)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self.deeper()?)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Items {
            tracer: self.deeper()?,
            left: 1,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Items {
            tracer: self.deeper()?,
            left: len,
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(StructFields {
            tracer: self,
            fields: &[],
            next: 0,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.found.borrow_mut().insert(name, fields);
        visitor.visit_map(StructFields {
            tracer: self.deeper()?,
            fields,
            next: 0,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let first = variants
            .first()
            .ok_or_else(|| Error("an enum without variants".into()))?;
        visitor.visit_enum(Variant {
            tracer: self.deeper()?,
            name: first,
        })
    }

    serde::forward_to_deserialize_any! {
        char bytes byte_buf unit unit_struct tuple_struct identifier ignored_any
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }
}

/// A sequence of `left` traced elements.
struct Items<'a> {
    tracer: Tracer<'a>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Items<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(self.tracer).map(Some)
    }
}

/// Every field of a struct, each with a traced value (none for a map).
struct StructFields<'a> {
    tracer: Tracer<'a>,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de> de::MapAccess<'de> for StructFields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        let key: StrDeserializer<'_, Error> = field.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(self.tracer)
    }
}

/// An enum's first variant, its content traced.
struct Variant<'a> {
    tracer: Tracer<'a>,
    name: &'static str,
}

impl<'de, 'a> de::EnumAccess<'de> for Variant<'a> {
    type Error = Error;
    type Variant = Tracer<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Tracer<'a>), Error> {
        let name: StrDeserializer<'_, Error> = self.name.into_deserializer();
        Ok((seed.deserialize(name)?, self.tracer))
    }
}

impl<'de> de::VariantAccess<'de> for Tracer<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Items {
            tracer: self,
            left: len,
        })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_map(StructFields {
            tracer: self,
            fields,
            next: 0,
        })
    }
}

/// The config reference, as the repository has it.
fn reference() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md");
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Fails with every field of `fields` that `docs/config.md` does not name in a code span.
pub(crate) fn assert_documented(fields: &Fields) {
    let reference = reference();
    assert!(!reference.is_empty(), "docs/config.md is missing");
    let documented = code_words(&reference);
    let missing: Vec<String> = fields
        .iter()
        .flat_map(|(owner, fields)| {
            fields
                .iter()
                .filter(|field| !documented.contains(**field))
                .map(move |field| format!("{owner}.{field}"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "fields of the config types that docs/config.md does not document: {missing:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_field_is_in_the_reference() -> Result<(), String> {
        let fields = fields_of::<crate::Config>()?;
        // The trace reaches every part of the file, not only the top level.
        for nested in [
            "ListenerSpec",
            "FilterSpec",
            "RouteSpec",
            "MetadataMatcherSpec",
            "RetryPolicySpec",
            "EndpointSpec",
            "OutlierDetectionSpec",
        ] {
            assert!(
                fields.contains_key(nested),
                "{nested} not traced: {:?}",
                fields.keys()
            );
        }
        assert_documented(&fields);
        Ok(())
    }

    #[test]
    fn a_field_missing_from_the_reference_is_found() -> Result<(), String> {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Future {
            drain_time: std::time::Duration,
            nested: Vec<Inner>,
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            address: std::net::SocketAddr,
            undocumented_knob: Option<u32>,
        }
        let fields = fields_of::<Future>()?;
        assert_eq!(
            fields.get("Inner"),
            Some(&&["address", "undocumented_knob"][..])
        );
        let reference = reference();
        let documented = code_words(&reference);
        assert!(documented.contains("drain_time") && !documented.contains("undocumented_knob"));
        Ok(())
    }
}
