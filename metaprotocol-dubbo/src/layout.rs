//! What decode records in [`FrameLayout`] so that encode can rewrite the attachments without
//! parsing the frame again.
//!
//! | slot | meaning |
//! |---|---|
//! | 0 | which body this is: 0 none rewritable, 1 request, 2 response (status 20, Hessian2) |
//! | 1 | responses: where the result flag ends (it starts at the body, offset 16) |
//! | 2 | where the attachments map starts (its tag; or the body end when there is none) |
//! | 3 | where its entries start (after the tag and type); equal to slot 2 when there is no map |
//! | 4 | where the map ends (after `Z`; after `N` for null attachments) |
//! | 5 | how many class definitions come before the map (0: the map can be walked on its own) |
//!
//! Offsets are from the start of the frame and fit in `u32`: frames are capped by an `i32`
//! body length.

use metaprotocol_core::FrameLayout;

use crate::attachments::MapBounds;

/// Which rewritable body a frame has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// Not rewritable: events, error responses, serializations other than Hessian2.
    Opaque,
    /// A Hessian2 request: arguments, then attachments.
    Request,
    /// A Hessian2 response with status 20: result flag, result, optional attachments.
    Response,
}

/// The decoded form of [`FrameLayout`] for Dubbo frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttachmentsLayout {
    /// What the body is.
    pub(crate) body: Body,
    /// Responses: the end of the result flag.
    pub(crate) flag_end: usize,
    /// The attachments map.
    pub(crate) map: MapBounds,
    /// The class definitions before the map.
    pub(crate) class_defs: usize,
}

impl From<AttachmentsLayout> for FrameLayout {
    fn from(layout: AttachmentsLayout) -> Self {
        let body = match layout.body {
            Body::Opaque => 0,
            Body::Request => 1,
            Body::Response => 2,
        };
        FrameLayout([
            body,
            slot(layout.flag_end),
            slot(layout.map.start),
            slot(layout.map.entries),
            slot(layout.map.end),
            slot(layout.class_defs),
        ])
    }
}

impl From<FrameLayout> for AttachmentsLayout {
    fn from(FrameLayout([body, flag_end, start, entries, end, class_defs]): FrameLayout) -> Self {
        let body = match body {
            1 => Body::Request,
            2 => Body::Response,
            _ => Body::Opaque,
        };
        let offset = |value: u32| usize::try_from(value).unwrap_or(usize::MAX);
        Self {
            body,
            flag_end: offset(flag_end),
            map: MapBounds {
                start: offset(start),
                entries: offset(entries),
                end: offset(end),
            },
            class_defs: offset(class_defs),
        }
    }
}

fn slot(offset: usize) -> u32 {
    u32::try_from(offset).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_frame_layout() {
        let layout = AttachmentsLayout {
            body: Body::Response,
            flag_end: 17,
            map: MapBounds {
                start: 30,
                entries: 31,
                end: 90,
            },
            class_defs: 2,
        };
        assert_eq!(AttachmentsLayout::from(FrameLayout::from(layout)), layout);
        let default = AttachmentsLayout::from(FrameLayout::default());
        assert_eq!(default.body, Body::Opaque);
    }
}
