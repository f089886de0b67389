//! The protobuf codec of Sigil's services: prost's, except that a request
//! body that does not decode answers `INVALID_ARGUMENT` ("the request is not
//! a valid sigil.v1.X message") instead of tonic's `INTERNAL`: the fault is
//! the caller's, and it should say so.
use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// The codec the generated services and clients use (`build.rs`).
#[derive(Debug, Clone)]
pub struct SigilCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for SigilCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for SigilCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SigilDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        SigilDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`, mapping a malformed body to `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct SigilDecoder<U> {
    _pd: PhantomData<U>,
}

/// `sigil.v1.<Name>` for a generated message type.
fn message_name<U>() -> String {
    let rust = std::any::type_name::<U>();
    let short = rust.rsplit("::").next().unwrap_or(rust);
    format!("sigil.v1.{short}")
}

impl<U: Message + Default> Decoder for SigilDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            let name = message_name::<U>();
            let what = if name.ends_with("Request") {
                "request"
            } else {
                "message"
            };
            // prost's description names the field path, never the bytes.
            let why = crate::error::excerpt(&e.to_string());
            super::status::to_status(crate::error::Error::invalid(
                what,
                format!("the {what} is not a valid {name} message ({why})"),
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
