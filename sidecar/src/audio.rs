//! Raw audio: 16-bit little-endian mono PCM, and WAV around it, including the open-ended
//! WAV header used for streaming (the other formats are in `encode`).

use std::time::Duration;

const CHANNELS: u16 = 1;
const BITS_PER_SAMPLE: u16 = 16;
const BYTES_PER_SAMPLE: u32 = (BITS_PER_SAMPLE / 8) as u32;

/// Length of the canonical RIFF/WAVE header written before the samples.
pub const WAV_HEADER_LEN: usize = 44;

/// Size written into the RIFF and `data` chunk sizes of a streamed WAV, whose length is not
/// known when the header leaves. Readers such as libsndfile, ffmpeg and Python's `wave` then
/// read samples until the end of the stream.
pub const STREAMING_CHUNK_SIZE: u32 = u32::MAX;

/// Converts samples in [-1, 1] to signed 16-bit little-endian bytes, appending to `out`.
/// Values outside the range are clipped rather than wrapped.
pub fn append_pcm16le(out: &mut Vec<u8>, samples: &[f32]) {
    out.reserve(samples.len() * 2);
    for &sample in samples {
        let value = (sample.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16;
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// Appends `samples` zero samples (silence) as 16-bit PCM.
pub fn append_silence(out: &mut Vec<u8>, samples: usize) {
    out.resize(out.len() + samples * BYTES_PER_SAMPLE as usize, 0);
}

/// Number of samples lasting `gap` at `sample_rate`.
pub fn samples_for(gap: Duration, sample_rate: u32) -> usize {
    (gap.as_secs_f64() * f64::from(sample_rate)).round() as usize
}

/// Seconds of audio held by `pcm_bytes` bytes of 16-bit mono PCM.
pub fn pcm_seconds(pcm_bytes: usize, sample_rate: u32) -> f64 {
    pcm_bytes as f64 / f64::from(BYTES_PER_SAMPLE * sample_rate.max(1))
}

/// WAV header for `data_len` bytes of 16-bit mono PCM; `None` writes the streaming sizes.
pub fn wav_header(sample_rate: u32, data_len: Option<u32>) -> [u8; WAV_HEADER_LEN] {
    let (riff_size, data_size) = match data_len {
        Some(len) => (len.saturating_add(36), len),
        None => (STREAMING_CHUNK_SIZE, STREAMING_CHUNK_SIZE),
    };
    let block_align = CHANNELS * BITS_PER_SAMPLE / 8;
    let byte_rate = sample_rate * u32::from(block_align);

    let mut header = [0u8; WAV_HEADER_LEN];
    header[0..4].copy_from_slice(b"RIFF");
    header[4..8].copy_from_slice(&riff_size.to_le_bytes());
    header[8..12].copy_from_slice(b"WAVE");
    header[12..16].copy_from_slice(b"fmt ");
    header[16..20].copy_from_slice(&16u32.to_le_bytes());
    header[20..22].copy_from_slice(&1u16.to_le_bytes()); // integer PCM
    header[22..24].copy_from_slice(&CHANNELS.to_le_bytes());
    header[24..28].copy_from_slice(&sample_rate.to_le_bytes());
    header[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    header[32..34].copy_from_slice(&block_align.to_le_bytes());
    header[34..36].copy_from_slice(&BITS_PER_SAMPLE.to_le_bytes());
    header[36..40].copy_from_slice(b"data");
    header[40..44].copy_from_slice(&data_size.to_le_bytes());
    header
}

/// A complete WAV file around `pcm`. Audio too long for 32-bit sizes keeps the streaming
/// sizes, which readers treat as "until the end of the file".
pub fn wav_file(sample_rate: u32, pcm: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(WAV_HEADER_LEN + pcm.len());
    out.extend_from_slice(&wav_header(sample_rate, u32::try_from(pcm.len()).ok()));
    out.extend_from_slice(pcm);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(samples: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        append_pcm16le(&mut out, samples);
        out
    }

    #[test]
    fn pcm_scales_rounds_and_clips() {
        let bytes = pcm(&[0.0, 1.0, -1.0, 0.5, 2.0, -3.0, f32::NAN]);
        let values: Vec<i16> = bytes
            .chunks_exact(2)
            .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        assert_eq!(values, vec![0, 32767, -32767, 16384, 32767, -32767, 0]);
    }

    #[test]
    fn silence_is_zero_samples_of_the_right_length() {
        let mut out = vec![1u8, 2];
        append_silence(&mut out, samples_for(Duration::from_millis(120), 22050));
        assert_eq!(out.len(), 2 + 2646 * 2);
        assert!(out[2..].iter().all(|&b| b == 0));
    }

    #[test]
    fn wav_file_is_read_back_by_a_wav_decoder() {
        let samples = [0.0f32, 0.25, -0.25, 1.0];
        let file = wav_file(22050, &pcm(&samples));
        assert_eq!(file.len(), WAV_HEADER_LEN + 8);
        let reader = hound::WavReader::new(std::io::Cursor::new(file)).expect("valid WAV");
        let spec = reader.spec();
        assert_eq!(spec.channels, 1);
        assert_eq!(spec.sample_rate, 22050);
        assert_eq!(spec.bits_per_sample, 16);
        assert_eq!(spec.sample_format, hound::SampleFormat::Int);
        let decoded: Vec<i16> = reader.into_samples().map(|s| s.expect("sample")).collect();
        assert_eq!(decoded, vec![0, 8192, -8192, 32767]);
    }

    #[test]
    fn streaming_header_has_open_ended_sizes() {
        let header = wav_header(16000, None);
        assert_eq!(&header[0..4], b"RIFF");
        assert_eq!(&header[4..8], &u32::MAX.to_le_bytes());
        assert_eq!(&header[36..40], b"data");
        assert_eq!(&header[40..44], &u32::MAX.to_le_bytes());
        assert_eq!(&header[24..28], &16000u32.to_le_bytes());
        assert_eq!(&header[28..32], &32000u32.to_le_bytes());
    }

    #[test]
    fn pcm_seconds_counts_two_bytes_per_sample() {
        assert!((pcm_seconds(44100, 22050) - 1.0).abs() < 1e-9);
        assert_eq!(pcm_seconds(0, 22050), 0.0);
    }
}
