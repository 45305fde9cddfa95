//! Test helpers shared by the crate's unit tests.

#[cfg(target_os = "linux")]
use std::path::Path;

use bytes::{BufMut, BytesMut};
use metaprotocol_core::{
    Codec, CodecError, CodecFactory, EncodeParams, LocalReply, Message, Side, WireVariant,
};

/// A protocol whose codecs are never used: for tests of parts that only hold a factory.
pub(crate) struct NullCodec;

impl CodecFactory for NullCodec {
    fn protocol(&self) -> &'static str {
        "null"
    }

    fn new_codec(&self, _: Side, _: WireVariant) -> Box<dyn Codec> {
        unimplemented!("NullCodec makes no codec: a connection that opens with it panics")
    }
}

/// A protocol that writes each message as one byte and reads nothing: for tests of what
/// connections do with the calls they carry, not of their bytes (an upstream connection that
/// opens and takes the requests queued on it, a client connection's answers).
pub(crate) struct SilentCodec;

impl CodecFactory for SilentCodec {
    fn protocol(&self) -> &'static str {
        "silent"
    }

    fn new_codec(&self, _: Side, _: WireVariant) -> Box<dyn Codec> {
        Box::new(SilentCodec)
    }
}

impl Codec for SilentCodec {
    fn decode(&mut self, _: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        Ok(None)
    }

    fn encode(
        &mut self,
        _: &Message,
        _: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        dst.put_u8(0);
        Ok(())
    }

    fn encode_local_reply(
        &mut self,
        _: &Message,
        _: &LocalReply,
        _: &mut BytesMut,
    ) -> Result<(), CodecError> {
        Ok(())
    }

    fn encode_heartbeat_reply(&mut self, _: &Message, _: &mut BytesMut) -> Result<(), CodecError> {
        Ok(())
    }
}

/// Opens of one file (through symlinks), as inotify reports them.
#[cfg(target_os = "linux")]
pub(crate) struct Opens(std::os::fd::OwnedFd);

#[cfg(target_os = "linux")]
impl Opens {
    /// Opens of `path` from now on.
    pub fn of(path: &Path) -> Result<Self, rustix::io::Errno> {
        use rustix::fs::inotify;
        let inotify =
            inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)?;
        inotify::add_watch(&inotify, path, inotify::WatchFlags::OPEN)?;
        Ok(Self(inotify))
    }

    /// True if the file was opened since the last call (inotify reports opens in a row as
    /// one, so they are not counted).
    pub fn opened(&self) -> Result<bool, rustix::io::Errno> {
        use rustix::fs::inotify;
        let mut buffer = [std::mem::MaybeUninit::uninit(); 4096];
        let mut events = inotify::Reader::new(&self.0, &mut buffer);
        let mut opened = false;
        loop {
            match events.next() {
                Ok(event) => opened |= event.events().contains(inotify::ReadFlags::OPEN),
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(opened),
                Err(err) => return Err(err),
            }
        }
    }
}
