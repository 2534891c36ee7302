//! Raw declarations for the part of libopus's API (include/opus.h, opus_defines.h) the relay
//! uses; the library itself is compiled from opus/ by build.rs. The safe wrapper is
//! `relay::codec::opus`.

#![no_std]
#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_int, c_uchar};

/// Opaque decoder state (`OpusDecoder`).
#[repr(C)]
pub struct OpusDecoder {
    _private: [u8; 0],
}

/// Opaque encoder state (`OpusEncoder`).
#[repr(C)]
pub struct OpusEncoder {
    _private: [u8; 0],
}

pub type opus_int16 = i16;
pub type opus_int32 = i32;

pub const OPUS_OK: c_int = 0;
pub const OPUS_BAD_ARG: c_int = -1;
pub const OPUS_APPLICATION_VOIP: c_int = 2048;
pub const OPUS_SET_BITRATE_REQUEST: c_int = 4002;
pub const OPUS_SET_MAX_BANDWIDTH_REQUEST: c_int = 4004;
pub const OPUS_SET_VBR_REQUEST: c_int = 4006;
pub const OPUS_SET_COMPLEXITY_REQUEST: c_int = 4010;
pub const OPUS_SET_INBAND_FEC_REQUEST: c_int = 4012;
pub const OPUS_SET_PACKET_LOSS_PERC_REQUEST: c_int = 4014;
pub const OPUS_SET_DTX_REQUEST: c_int = 4016;
pub const OPUS_SET_SIGNAL_REQUEST: c_int = 4024;
pub const OPUS_SIGNAL_VOICE: c_int = 3001;
pub const OPUS_BANDWIDTH_NARROWBAND: c_int = 1101;
pub const OPUS_BANDWIDTH_WIDEBAND: c_int = 1103;

unsafe extern "C" {
    pub fn opus_get_version_string() -> *const c_char;
    pub fn opus_strerror(error: c_int) -> *const c_char;

    pub fn opus_decoder_create(
        fs: opus_int32,
        channels: c_int,
        error: *mut c_int,
    ) -> *mut OpusDecoder;
    pub fn opus_decode(
        st: *mut OpusDecoder,
        data: *const c_uchar,
        len: opus_int32,
        pcm: *mut opus_int16,
        frame_size: c_int,
        decode_fec: c_int,
    ) -> c_int;
    pub fn opus_decoder_destroy(st: *mut OpusDecoder);
    pub fn opus_packet_get_nb_samples(
        packet: *const c_uchar,
        len: opus_int32,
        fs: opus_int32,
    ) -> c_int;

    pub fn opus_encoder_create(
        fs: opus_int32,
        channels: c_int,
        application: c_int,
        error: *mut c_int,
    ) -> *mut OpusEncoder;
    pub fn opus_encode(
        st: *mut OpusEncoder,
        pcm: *const opus_int16,
        frame_size: c_int,
        data: *mut c_uchar,
        max_data_bytes: opus_int32,
    ) -> opus_int32;
    pub fn opus_encoder_ctl(st: *mut OpusEncoder, request: c_int, ...) -> c_int;
    pub fn opus_encoder_destroy(st: *mut OpusEncoder);
}
