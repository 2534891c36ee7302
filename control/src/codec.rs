//! The protobuf codec of the generated `relay.v1` stubs: prost's, except that a message that
//! does not decode is `INVALID_ARGUMENT` (reason `INVALID_PARAMETER`, Meta code 100, like any
//! other malformed request) instead of tonic's `INTERNAL`. The API keeps `INTERNAL` for relay
//! bugs; a body with invalid UTF-8 in a string field, a truncated field or a bad wire type is
//! the client's mistake.
//!
//! The generated client shares the codec, so a response that does not decode would also read
//! as `INVALID_ARGUMENT` there; the relay only sends what prost encoded.

use std::collections::HashMap;

use prost::Message;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{ERROR_DOMAIN, META_CODE_DETAIL_KEY, META_CODE_HEADER};

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(ProstCodec::default())
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = InvalidArgumentDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        InvalidArgumentDecoder(self.0.decoder())
    }
}

/// prost's decoder with decode failures as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct InvalidArgumentDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for InvalidArgumentDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| match s.code() {
            // prost's only error here is a decode error, which tonic reports as INTERNAL.
            Code::Internal => undecodable(s.message()),
            _ => s,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

fn undecodable(why: &str) -> Status {
    let mut info = HashMap::new();
    info.insert(META_CODE_DETAIL_KEY.to_string(), "100".to_string());
    let mut metadata = MetadataMap::new();
    metadata.insert(META_CODE_HEADER, 100.into());
    Status::with_error_details_and_metadata(
        Code::InvalidArgument,
        format!("invalid parameter: the message does not decode as relay.v1 protobuf: {why}"),
        ErrorDetails::with_error_info("INVALID_PARAMETER", ERROR_DOMAIN, info),
        metadata,
    )
}
