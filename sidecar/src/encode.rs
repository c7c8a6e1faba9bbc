//! Encoding 16-bit mono PCM at the voice's rate into each `response_format`, by codec
//! libraries: libmp3lame (MP3), libopus in Ogg pages after resampling to 48 kHz (Opus),
//! flacenc (FLAC). Audio is pushed a sentence at a time and each push returns the bytes ready
//! to send, so a streamed answer leaves with its first sentence.

use std::ffi::c_int;

use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use rubato::{FftFixedIn, Resampler};
use voxgate_rules::ResponseFormat;

use crate::audio;

#[derive(Debug, thiserror::Error)]
#[error("{format} encoding failed: {detail}")]
pub struct EncodeError {
    format: &'static str,
    detail: String,
}

fn failed(format: ResponseFormat, detail: impl ToString) -> EncodeError {
    EncodeError {
        format: format.name(),
        detail: detail.to_string(),
    }
}

/// An encoder for one answer.
pub struct Encoder {
    format: ResponseFormat,
    kind: Kind,
}

enum Kind {
    Pcm,
    /// A streamed WAV gets the open-ended header before its first samples; a complete one
    /// is held until its length is known.
    Wav {
        sample_rate: u32,
        streamed: bool,
        held: Vec<u8>,
        started: bool,
    },
    Mp3(Lame),
    Opus(Box<OggOpus>),
    /// A FLAC header carries totals: the samples are held until the end.
    Flac {
        sample_rate: u32,
        samples: Vec<i32>,
    },
}

impl Encoder {
    pub fn new(
        format: ResponseFormat,
        sample_rate: u32,
        streamed: bool,
    ) -> Result<Self, EncodeError> {
        let kind = match format {
            ResponseFormat::Pcm => Kind::Pcm,
            ResponseFormat::Wav => Kind::Wav {
                sample_rate,
                streamed,
                held: Vec::new(),
                started: false,
            },
            ResponseFormat::Mp3 => {
                Kind::Mp3(Lame::new(sample_rate).map_err(|e| failed(format, e))?)
            }
            ResponseFormat::Opus => Kind::Opus(Box::new(
                OggOpus::new(sample_rate).map_err(|e| failed(format, e))?,
            )),
            ResponseFormat::Flac => Kind::Flac {
                sample_rate,
                samples: Vec::new(),
            },
        };
        Ok(Encoder { format, kind })
    }

    /// Encodes `pcm` (16-bit little-endian samples) and returns what is ready to send.
    pub fn push(&mut self, pcm: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let format = self.format;
        match &mut self.kind {
            Kind::Pcm => Ok(pcm.to_vec()),
            Kind::Wav {
                sample_rate,
                streamed: true,
                started,
                ..
            } => {
                let mut out = Vec::with_capacity(audio::WAV_HEADER_LEN + pcm.len());
                if !*started {
                    out.extend_from_slice(&audio::wav_header(*sample_rate, None));
                    *started = true;
                }
                out.extend_from_slice(pcm);
                Ok(out)
            }
            Kind::Wav { held, .. } => {
                held.extend_from_slice(pcm);
                Ok(Vec::new())
            }
            Kind::Mp3(lame) => lame.encode(&samples(pcm)).map_err(|e| failed(format, e)),
            Kind::Opus(opus) => opus.push(&samples(pcm)).map_err(|e| failed(format, e)),
            Kind::Flac { samples: held, .. } => {
                held.extend(samples(pcm).into_iter().map(i32::from));
                Ok(Vec::new())
            }
        }
    }

    /// The bytes that end the answer.
    pub fn finish(self) -> Result<Vec<u8>, EncodeError> {
        let format = self.format;
        match self.kind {
            Kind::Pcm => Ok(Vec::new()),
            Kind::Wav { streamed: true, .. } => Ok(Vec::new()),
            Kind::Wav {
                sample_rate, held, ..
            } => Ok(audio::wav_file(sample_rate, &held)),
            Kind::Mp3(mut lame) => lame.flush().map_err(|e| failed(format, e)),
            Kind::Opus(opus) => opus.finish().map_err(|e| failed(format, e)),
            Kind::Flac {
                sample_rate,
                samples,
            } => flac(sample_rate, &samples).map_err(|e| failed(format, e)),
        }
    }
}

fn samples(pcm: &[u8]) -> Vec<i16> {
    pcm.chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect()
}

// The part of libmp3lame's API used here (lame.h).
#[link(name = "mp3lame")]
extern "C" {
    fn lame_init() -> *mut std::ffi::c_void;
    fn lame_set_in_samplerate(gfp: *mut std::ffi::c_void, rate: c_int) -> c_int;
    fn lame_set_num_channels(gfp: *mut std::ffi::c_void, channels: c_int) -> c_int;
    fn lame_set_mode(gfp: *mut std::ffi::c_void, mode: c_int) -> c_int;
    fn lame_set_brate(gfp: *mut std::ffi::c_void, kbps: c_int) -> c_int;
    fn lame_set_quality(gfp: *mut std::ffi::c_void, quality: c_int) -> c_int;
    fn lame_set_bWriteVbrTag(gfp: *mut std::ffi::c_void, write: c_int) -> c_int;
    fn lame_init_params(gfp: *mut std::ffi::c_void) -> c_int;
    fn lame_encode_buffer(
        gfp: *mut std::ffi::c_void,
        left: *const i16,
        right: *const i16,
        samples: c_int,
        out: *mut u8,
        out_size: c_int,
    ) -> c_int;
    fn lame_encode_flush(gfp: *mut std::ffi::c_void, out: *mut u8, out_size: c_int) -> c_int;
    fn lame_close(gfp: *mut std::ffi::c_void) -> c_int;
}

/// `MPEG_mode` MONO in lame.h.
const LAME_MONO: c_int = 3;
/// Constant 64 kbit/s: transparent for 16–24 kHz speech, and no VBR header to patch at the
/// end of a stream.
const MP3_KBPS: c_int = 64;
/// lame's `-q 5`, its default speed/quality balance.
const MP3_QUALITY: c_int = 5;
/// Room lame.h asks for after encoding `n` samples: 1.25 n + 7200 bytes.
fn mp3_room(samples: usize) -> usize {
    samples + samples / 4 + 7200
}

/// One lame encoder; closed on drop.
struct Lame(*mut std::ffi::c_void);

// SAFETY: the handle is owned by one encoder and used by one thread at a time; lame keeps no
// thread-local state.
unsafe impl Send for Lame {}

impl Lame {
    fn new(sample_rate: u32) -> Result<Self, String> {
        // SAFETY: lame_init returns an owned handle or null; the setters only read it.
        unsafe {
            let handle = lame_init();
            if handle.is_null() {
                return Err("lame_init failed".into());
            }
            let lame = Lame(handle);
            let rate = c_int::try_from(sample_rate).map_err(|e| e.to_string())?;
            let set = lame_set_in_samplerate(handle, rate)
                | lame_set_num_channels(handle, 1)
                | lame_set_mode(handle, LAME_MONO)
                | lame_set_brate(handle, MP3_KBPS)
                | lame_set_quality(handle, MP3_QUALITY)
                | lame_set_bWriteVbrTag(handle, 0);
            if set != 0 || lame_init_params(handle) < 0 {
                return Err(format!(
                    "lame refused the settings for {sample_rate} Hz mono"
                ));
            }
            Ok(lame)
        }
    }

    fn encode(&mut self, samples: &[i16]) -> Result<Vec<u8>, String> {
        let count = c_int::try_from(samples.len()).map_err(|e| e.to_string())?;
        let mut out = vec![0u8; mp3_room(samples.len())];
        let room = c_int::try_from(out.len()).map_err(|e| e.to_string())?;
        // SAFETY: `samples` holds `count` samples (mono: the right channel is not read) and
        // `out` has `room` bytes, the size lame.h asks for.
        let written = unsafe {
            lame_encode_buffer(
                self.0,
                samples.as_ptr(),
                samples.as_ptr(),
                count,
                out.as_mut_ptr(),
                room,
            )
        };
        Self::take(out, written)
    }

    fn flush(&mut self) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; 7200];
        let room = c_int::try_from(out.len()).map_err(|e| e.to_string())?;
        // SAFETY: `out` has `room` bytes, more than the 7200 lame.h asks for a flush.
        let written = unsafe { lame_encode_flush(self.0, out.as_mut_ptr(), room) };
        Self::take(out, written)
    }

    fn take(mut out: Vec<u8>, written: c_int) -> Result<Vec<u8>, String> {
        let written = usize::try_from(written).map_err(|_| format!("lame error {written}"))?;
        out.truncate(written);
        Ok(out)
    }
}

impl Drop for Lame {
    fn drop(&mut self) {
        // SAFETY: the handle came from lame_init and is closed once.
        unsafe {
            lame_close(self.0);
        }
    }
}

/// Opus runs at 48 kHz; frames of 20 ms.
const OPUS_RATE: u32 = 48_000;
const OPUS_FRAME: usize = 960;
const OPUS_BITRATE: i32 = 32_000;
const OPUS_COMPLEXITY: i32 = 2;
const OGG_SERIAL: u32 = 0x766f_7867;
/// Input frames per resampler call.
const RESAMPLE_CHUNK: usize = 1024;

/// Ogg Opus (RFC 7845): the ID and comment headers, then 20 ms packets, a page per push.
struct OggOpus {
    encoder: opus::Encoder,
    resampler: FftFixedIn<f32>,
    input_rate: u32,
    /// Input samples not yet resampled.
    input: Vec<f32>,
    /// Resampled samples not yet encoded.
    resampled: Vec<f32>,
    /// Resampler output still to drop: its delay.
    delay_left: usize,
    input_total: u64,
    resampled_total: u64,
    /// 48 kHz samples in the packets written, the encoder's pre-skip included.
    granule: u64,
    pre_skip: u16,
    pages: PacketWriter<'static, Vec<u8>>,
}

impl OggOpus {
    fn new(input_rate: u32) -> Result<Self, String> {
        let mut encoder =
            opus::Encoder::new(OPUS_RATE, opus::Channels::Mono, opus::Application::Voip)
                .map_err(|e| e.to_string())?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))
            .map_err(|e| e.to_string())?;
        // libopus's default complexity (10) adds a sixth of the synthesis CPU, 5 still a
        // tenth; at 2 it adds about 5% (benchmark 8), and speech at 32 kbit/s stays clear.
        encoder
            .set_complexity(OPUS_COMPLEXITY)
            .map_err(|e| e.to_string())?;
        encoder
            .set_signal(opus::Signal::Voice)
            .map_err(|e| e.to_string())?;
        let pre_skip = u16::try_from(encoder.get_lookahead().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let resampler = FftFixedIn::new(
            input_rate as usize,
            OPUS_RATE as usize,
            RESAMPLE_CHUNK,
            2,
            1,
        )
        .map_err(|e| e.to_string())?;
        let delay_left = resampler.output_delay();
        let mut pages = PacketWriter::new(Vec::new());
        let mut head = b"OpusHead".to_vec();
        head.push(1); // version
        head.push(1); // channels
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&input_rate.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // mapping family: mono/stereo
        let mut tags = b"OpusTags".to_vec();
        let vendor = b"voxgate";
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes()); // no comments
        for packet in [head, tags] {
            pages
                .write_packet(packet, OGG_SERIAL, PacketWriteEndInfo::EndPage, 0)
                .map_err(|e| e.to_string())?;
        }
        Ok(OggOpus {
            encoder,
            resampler,
            input_rate,
            input: Vec::new(),
            resampled: Vec::new(),
            delay_left,
            input_total: 0,
            resampled_total: 0,
            granule: u64::from(pre_skip),
            pre_skip,
            pages,
        })
    }

    fn push(&mut self, samples: &[i16]) -> Result<Vec<u8>, String> {
        self.input_total += samples.len() as u64;
        self.input
            .extend(samples.iter().map(|&s| f32::from(s) / 32768.0));
        while self.input.len() >= self.resampler.input_frames_next() {
            let take = self.resampler.input_frames_next();
            let chunk: Vec<f32> = self.input.drain(..take).collect();
            let out = self
                .resampler
                .process(&[chunk], None)
                .map_err(|e| e.to_string())?;
            self.keep_resampled(&out[0]);
        }
        self.write_frames(false)
    }

    fn finish(mut self) -> Result<Vec<u8>, String> {
        let rest = std::mem::take(&mut self.input);
        // rubato refuses an empty partial chunk; input that filled whole chunks has none left.
        if !rest.is_empty() {
            let out = self
                .resampler
                .process_partial(Some(&[rest]), None)
                .map_err(|e| e.to_string())?;
            self.keep_resampled(&out[0]);
        }
        // The resampler holds its delay's worth of samples back: flush them with silence.
        while self.resampled_total < self.wanted() {
            let out = self
                .resampler
                .process_partial(None::<&[Vec<f32>]>, None)
                .map_err(|e| e.to_string())?;
            if out[0].is_empty() {
                break;
            }
            self.keep_resampled(&out[0]);
        }
        self.write_frames(true)
    }

    /// 48 kHz samples the input so far accounts for.
    fn wanted(&self) -> u64 {
        let wanted = u128::from(self.input_total) * u128::from(OPUS_RATE)
            / u128::from(self.input_rate.max(1));
        u64::try_from(wanted).unwrap_or(u64::MAX)
    }

    /// Keeps resampled samples up to what the input accounts for, after the delay.
    fn keep_resampled(&mut self, out: &[f32]) {
        let skip = self.delay_left.min(out.len());
        self.delay_left -= skip;
        let room = self.wanted().saturating_sub(self.resampled_total) as usize;
        let kept = &out[skip..][..room.min(out.len() - skip)];
        self.resampled_total += kept.len() as u64;
        self.resampled.extend_from_slice(kept);
    }

    /// Encodes whole frames (and, at the end, the last one padded with silence) and returns
    /// the finished pages.
    fn write_frames(&mut self, last: bool) -> Result<Vec<u8>, String> {
        if last {
            // The decoder drops the first `pre_skip` samples: the same count of silence at the
            // end keeps the last of the audio.
            let wanted = self.resampled.len() + usize::from(self.pre_skip);
            let padded = wanted.div_ceil(OPUS_FRAME).max(1) * OPUS_FRAME;
            self.resampled.resize(padded, 0.0);
        }
        let frames = self.resampled.len() / OPUS_FRAME;
        let mut packet = vec![0u8; 4000];
        for index in 0..frames {
            let frame = &self.resampled[index * OPUS_FRAME..][..OPUS_FRAME];
            let len = self
                .encoder
                .encode_float(frame, &mut packet)
                .map_err(|e| e.to_string())?;
            let end = if index + 1 < frames {
                PacketWriteEndInfo::NormalPacket
            } else if last {
                PacketWriteEndInfo::EndStream
            } else {
                PacketWriteEndInfo::EndPage
            };
            self.granule = if end == PacketWriteEndInfo::EndStream {
                // The last page's granule position marks where the real audio ends.
                u64::from(self.pre_skip) + self.resampled_total
            } else {
                self.granule + OPUS_FRAME as u64
            };
            self.pages
                .write_packet(packet[..len].to_vec(), OGG_SERIAL, end, self.granule)
                .map_err(|e| e.to_string())?;
        }
        self.resampled.drain(..frames * OPUS_FRAME);
        Ok(std::mem::take(self.pages.inner_mut()))
    }
}

fn flac(sample_rate: u32, samples: &[i32]) -> Result<Vec<u8>, String> {
    use flacenc::component::BitRepr;

    let stream = flac_stream(sample_rate, samples)?;
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream.write(&mut sink).map_err(|e| format!("{e:?}"))?;
    Ok(sink.as_slice().to_vec())
}

/// The shortest frame flacenc encodes.
const MIN_FLAC_BLOCK: usize = 64;

/// The samples as FLAC frames of the encoder's block size, the last one only as long as what
/// is left: `encode_with_fixed_block_size` pads the last block to full size with silence,
/// which decoders play (up to 0.19 s at 22050 Hz). flacenc's shortest frame is
/// `MIN_FLAC_BLOCK` samples, so a shorter tail is padded to that (under 3 ms).
fn flac_stream(sample_rate: u32, samples: &[i32]) -> Result<flacenc::component::Stream, String> {
    use flacenc::error::Verify;
    use flacenc::source::{Context, Fill, FrameBuf};

    let config = flacenc::config::Encoder::default()
        .into_verified()
        .map_err(|(_, e)| format!("{e:?}"))?;
    let debug = |e: &dyn std::fmt::Debug| format!("{e:?}");
    let mut samples = samples.to_vec();
    let tail = samples.len() % config.block_size;
    if tail != 0 && tail < MIN_FLAC_BLOCK {
        samples.resize(samples.len() - tail + MIN_FLAC_BLOCK, 0);
    }
    // The header's checksum first: every sample is here already. Each frame added counts its
    // samples into the header's total.
    let mut context = Context::new(16, 1, config.block_size);
    for block in samples.chunks(config.block_size) {
        context.fill_interleaved(block).map_err(|e| debug(&e))?;
    }
    let mut info = flacenc::component::StreamInfo::new(sample_rate as usize, 1, 16).map_err(|e| debug(&e))?;
    info.set_md5_digest(&context.md5_digest());
    let mut stream = flacenc::component::Stream::with_stream_info(info);
    for (number, block) in samples.chunks(config.block_size).enumerate() {
        let mut frame = FrameBuf::with_size(1, block.len()).map_err(|e| debug(&e))?;
        frame.fill_interleaved(block).map_err(|e| debug(&e))?;
        let encoded = flacenc::encode_fixed_size_frame(&config, &frame, number, stream.stream_info())
            .map_err(|e| debug(&e))?;
        stream.add_frame(encoded);
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One second of a 440 Hz tone at 22050 Hz, as 16-bit PCM.
    fn tone() -> Vec<u8> {
        tone_of(22050)
    }

    fn tone_of(count: usize) -> Vec<u8> {
        let samples: Vec<f32> = (0..count)
            .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 22050.0).sin() * 0.5)
            .collect();
        let mut pcm = Vec::new();
        audio::append_pcm16le(&mut pcm, &samples);
        pcm
    }

    fn encode(format: ResponseFormat, streamed: bool) -> Vec<u8> {
        let pcm = tone();
        let mut encoder = Encoder::new(format, 22050, streamed).expect("encoder");
        let mut out = Vec::new();
        for sentence in pcm.chunks(8820) {
            out.extend(encoder.push(sentence).expect("push"));
        }
        out.extend(encoder.finish().expect("finish"));
        out
    }

    #[test]
    fn each_format_has_its_container() {
        let mp3 = encode(ResponseFormat::Mp3, true);
        assert!(
            mp3[0] == 0xFF && mp3[1] & 0xE0 == 0xE0,
            "an MPEG frame sync first"
        );
        // 64 kbit/s for one second, give or take a frame.
        assert!((7000..9500).contains(&mp3.len()), "{}", mp3.len());
        let opus = encode(ResponseFormat::Opus, true);
        assert_eq!(&opus[..4], b"OggS");
        assert_eq!(&opus[28..36], b"OpusHead");
        let flac = encode(ResponseFormat::Flac, false);
        assert_eq!(&flac[..4], b"fLaC");
        let wav = encode(ResponseFormat::Wav, false);
        assert_eq!(wav.len(), audio::WAV_HEADER_LEN + 44100);
        assert_eq!(encode(ResponseFormat::Wav, true).len(), wav.len());
        assert_eq!(encode(ResponseFormat::Pcm, true), tone());
    }

    #[test]
    fn flac_frames_hold_exactly_the_samples_without_padding() {
        for (count, padded) in [(1, 64), (4095, 4095), (4096, 4096), (4097, 4096 + 64), (4200, 4200), (22050, 22050)] {
            let samples: Vec<i32> = (0..count).map(|i| (i % 200) - 100).collect();
            let stream = flac_stream(22050, &samples).unwrap();
            let held: usize = (0..stream.frame_count()).map(|n| stream.frame(n).unwrap().block_size()).sum();
            assert_eq!(held, padded, "{count} samples");
            assert_eq!(stream.stream_info().total_samples(), padded);
        }
    }

    #[test]
    fn opus_pages_end_where_the_audio_ends() {
        let opus = encode(ResponseFormat::Opus, true);
        let mut reader = ogg::reading::PacketReader::new(std::io::Cursor::new(opus));
        let head = reader.read_packet().expect("valid Ogg").expect("OpusHead");
        let pre_skip = u64::from(u16::from_le_bytes([head.data[10], head.data[11]]));
        let mut last_granule = 0;
        let mut packets = 1;
        while let Some(packet) = reader.read_packet().expect("valid Ogg") {
            packets += 1;
            last_granule = packet.absgp_page();
        }
        // Two headers, then 20 ms packets for one second plus the encoder's lookahead.
        assert_eq!(packets, 2 + (48_000 + pre_skip as usize).div_ceil(960));
        assert_eq!(last_granule, pre_skip + 48_000);
    }

    #[test]
    fn opus_ends_for_lengths_the_rates_do_not_divide() {
        let mut encoder = Encoder::new(ResponseFormat::Opus, 22050, false).expect("encoder");
        encoder.push(&tone_of(12_345)).expect("push");
        assert!(!encoder.finish().expect("finish").is_empty());
    }

    #[test]
    fn opus_ends_for_audio_that_fills_whole_resampler_chunks() {
        for chunks in [1, 3] {
            let mut encoder = Encoder::new(ResponseFormat::Opus, 22050, false).expect("encoder");
            encoder.push(&tone_of(RESAMPLE_CHUNK * chunks)).expect("push");
            assert!(!encoder.finish().expect("finish").is_empty(), "{chunks} chunks");
        }
    }

    #[test]
    fn a_streamed_mp3_leaves_with_the_first_sentence() {
        let pcm = tone();
        let mut encoder = Encoder::new(ResponseFormat::Mp3, 22050, true).expect("encoder");
        assert!(!encoder.push(&pcm[..8820]).expect("push").is_empty());
        let mut opus = Encoder::new(ResponseFormat::Opus, 22050, true).expect("encoder");
        assert!(!opus.push(&pcm[..8820]).expect("push").is_empty());
    }
}
