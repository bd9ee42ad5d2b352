//! The codec of every loraflow service: prost's encoding, with one change on
//! decoding. tonic-prost answers bytes that do not decode as the expected
//! message with `INTERNAL`, as if the fault were the receiver's; they are the
//! sender's (malformed protobuf, or a message nested past prost's recursion
//! limit, such as step params 45 levels deep), so they are
//! `INVALID_ARGUMENT` here, with reason `MALFORMED_MESSAGE`. The build script
//! names this codec (`codec_path`) for the generated servers and clients, so
//! the code is chosen where decoding fails, not by reading tonic's message.
//!
//! The same codec decodes responses in the generated clients: a client that
//! receives bytes it cannot decode reports `INVALID_ARGUMENT` too, with the
//! message naming the type it expected.

use std::collections::HashMap;
use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::ProstEncoder;
use tonic_types::{ErrorDetails, StatusExt};

use crate::status::ERROR_DOMAIN;

/// The `ErrorInfo.reason` of a message that does not decode.
pub const MALFORMED_MESSAGE: &str = "MALFORMED_MESSAGE";

/// prost's codec with decoding failures as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct WireCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = WireDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder(PhantomData)
    }
}

/// Decodes `U`; see the module docs for the status of a failure.
#[derive(Debug, Clone)]
pub struct WireDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for WireDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| malformed(short_type_name::<U>(), &e))
    }
}

/// `Foo` of `loraflow_proto::pb::v1::Foo`.
fn short_type_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

/// The status for bytes that are not a valid `expected`.
pub fn malformed(expected: &str, error: &prost::DecodeError) -> Status {
    let meta = HashMap::from([("expected".to_owned(), expected.to_owned())]);
    Status::with_error_details(
        Code::InvalidArgument,
        format!(
            "the message is not a valid loraflow.v1.{expected} ({error}); encode it from the \
             loraflow.v1 .proto files, with nested values (step params) shallow enough for \
             protobuf's recursion limit"
        ),
        ErrorDetails::with_error_info(MALFORMED_MESSAGE, ERROR_DOMAIN, meta),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::v1 as pb;

    fn decode<U: Message + Default>(bytes: &[u8]) -> Result<U, prost::DecodeError> {
        U::decode(bytes)
    }

    #[test]
    fn garbage_is_invalid_argument_naming_the_type() {
        let err = decode::<pb::CreateJobRequest>(&[0xff, 0xff, 0xff]).unwrap_err();
        let status = malformed(short_type_name::<pb::CreateJobRequest>(), &err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("loraflow.v1.CreateJobRequest"),
            "{}",
            status.message()
        );
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            MALFORMED_MESSAGE
        );
    }
}
