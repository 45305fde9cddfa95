//! Test helpers shared by the crate's unit tests.

#[cfg(target_os = "linux")]
use std::path::Path;

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use metaprotocol_core::{
    Codec, CodecError, CodecFactory, EncodeParams, LocalReply, Message, MessageKind, Side,
    WireVariant,
};
use tokio::io::{AsyncRead, AsyncReadExt};

/// An address on 127.0.0.1 that refuses connections for as long as the returned socket lives:
/// the socket holds the port bound without listening. A port merely free a moment ago may come
/// alive: another test's listener can take it, and a connect to it can be given it as its own
/// local port (a TCP self-connect, which succeeds), so a check of it may pass.
pub(crate) fn refusing_address() -> io::Result<(tokio::net::TcpSocket, SocketAddr)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(([127, 0, 0, 1], 0).into())?;
    let address = socket.local_addr()?;
    Ok((socket, address))
}

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

/// A protocol whose frames give their length in their first four bytes (big-endian): read by a
/// client connection, each is a heartbeat, which the proxy answers with nothing (a frame ends
/// once decoded), or with the frame itself if its fifth byte is [`ECHO`]; read by an upstream
/// connection, each is an answer to call 0. A message is encoded as its frame, unchanged.
pub(crate) struct Sized;

/// The fifth byte of a frame of protocol [`Sized`] that asks for the frame back.
pub(crate) const ECHO: u8 = 1;

/// A frame of `len` bytes of protocol [`Sized`].
pub(crate) fn sized_frame(len: u32) -> Vec<u8> {
    let mut frame = vec![0; len as usize];
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame
}

impl CodecFactory for Sized {
    fn protocol(&self) -> &'static str {
        "sized"
    }

    fn new_codec(&self, side: Side, _: WireVariant) -> Box<dyn Codec> {
        Box::new(SizedCodec {
            kind: match side {
                Side::Downstream => MessageKind::Heartbeat,
                Side::Upstream => MessageKind::Response,
            },
        })
    }
}

/// A codec of protocol [`Sized`], whose frames are messages of `kind`.
struct SizedCodec {
    kind: MessageKind,
}

impl Codec for SizedCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        metaprotocol_core::decode_new(self, src)
    }

    fn decode_into(&mut self, src: &mut BytesMut, slot: &mut Message) -> Result<bool, CodecError> {
        let Some(&[a, b, c, d]) = src.get(..4) else {
            return Ok(false);
        };
        let len = (u32::from_be_bytes([a, b, c, d]) as usize).max(4);
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(false);
        }
        slot.reset(self.kind, 0, src.split_to(len).freeze());
        Ok(true)
    }

    fn encode(
        &mut self,
        message: &Message,
        _: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        dst.extend_from_slice(&message.frame);
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

    fn encode_heartbeat_reply(
        &mut self,
        heartbeat: &Message,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        if heartbeat.frame.get(4) == Some(&ECHO) {
            dst.extend_from_slice(&heartbeat.frame);
        }
        Ok(())
    }
}

/// Reads `step` bytes from `peer` each second until it ends, as a peer that takes what it is
/// sent slowly: the bytes it took.
pub(crate) async fn read_slowly<R: AsyncRead + Unpin>(
    peer: &mut R,
    step: usize,
) -> io::Result<usize> {
    let mut read = 0;
    let mut chunk = vec![0; step];
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut taken = 0;
        while taken < step {
            match peer.read(&mut chunk[taken..]).await? {
                0 => return Ok(read + taken),
                n => taken += n,
            }
        }
        read += taken;
    }
}

/// Polls `task` (a connection's) until `done` holds of it, for 10 s at most.
pub(crate) async fn run_until<T: Future + Unpin>(
    task: &mut T,
    done: impl Fn(&T) -> bool,
) -> Result<(), tokio::time::error::Elapsed> {
    let run = poll_fn(|cx| {
        let _ = Pin::new(&mut *task).poll(cx);
        if done(task) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    tokio::time::timeout(Duration::from_secs(10), run).await
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

/// A directory with a file system mounted on it that never answers, as a network file system
/// whose server is unreachable: a FUSE mount whose server never reads its requests, so that
/// any look at or read of a path under it waits until the mount is given up
/// ([`HungMount::give_up`], or dropping it), and then fails (`ENOTCONN`). Mounting takes root
/// (`CAP_SYS_ADMIN`) and `/dev/fuse`.
#[cfg(target_os = "linux")]
pub(crate) struct HungMount {
    dir: std::path::PathBuf,
    /// The FUSE device the mount was made with: closing it gives the mount up.
    device: Option<std::fs::File>,
}

#[cfg(target_os = "linux")]
impl HungMount {
    /// A hung mount on a new directory named after `test`, or why it cannot be made.
    pub fn new(test: &str) -> io::Result<Self> {
        use rustix::mount::{MountFlags, mount};
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("hung-mount-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // Opened close-on-exec: a child holding it would keep the mount hung.
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")?;
        let options = std::ffi::CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            device.as_raw_fd()
        ))
        .map_err(io::Error::other)?;
        mount(
            "hung",
            &dir,
            "fuse",
            MountFlags::NOSUID | MountFlags::NODEV,
            options.as_c_str(),
        )?;
        Ok(Self {
            dir,
            device: Some(device),
        })
    }

    /// The directory mounted on: every path under it hangs.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Gives the mount up, as a network file system's client does once its server is declared
    /// dead: every look or read waiting under it, and every later one, fails at once.
    pub fn give_up(&mut self) {
        self.device.take();
    }
}

#[cfg(target_os = "linux")]
impl Drop for HungMount {
    fn drop(&mut self) {
        self.give_up();
        let _ = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH);
        let _ = std::fs::remove_dir(&self.dir);
    }
}
