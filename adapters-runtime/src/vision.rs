//! Image preprocessing for vision models: what Hugging Face's (slow) `ViTImageProcessor` does to a
//! PIL image, reproduced bit for bit.
//!
//! The pipeline, as transformers runs it on a uint8 RGB image:
//! 1. resize with Pillow's `Image.resize((w, h), BILINEAR)` (uint8 out), see [`resize_bilinear`];
//! 2. rescale: `float32(float64(u8) * rescale_factor)`;
//! 3. normalize: `float32 (x - mean) / std` per channel;
//! 4. channels first, batch of one: `[1, 3, H, W]`.
//!
//! Pillow's resize is integer arithmetic on fixed-point weights with a uint8 rounding between the
//! horizontal and the vertical pass, so a float bilinear (torch's `interpolate`, even with
//! `antialias=True`) is off by one level here and there; the port below follows Pillow 13's
//! `ImagingResampleInner` step by step instead.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::error::{AdapterError, Result};

/// `PILImageResampling.BILINEAR`, the only filter reproduced exactly.
const BILINEAR: u64 = 2;

/// Pillow's fixed-point precision for 8-bit images: `32 - 8 - 2` bits (8 for the pixel, 2 spare
/// for filters with negative lobes), so a weighted sum of uint8 pixels fits an `i32`.
const PRECISION_BITS: u32 = 22;

/// ViTImageProcessor's defaults (`IMAGENET_STANDARD_MEAN` / `_STD`).
const DEFAULT_MEAN_STD: [f32; 3] = [0.5, 0.5, 0.5];

/// ViTImageProcessor's default `size`.
const DEFAULT_SIZE: usize = 224;

/// `preprocessor_config.json` as `ViTImageProcessor` reads it.
///
/// A missing key takes the processor's default (size 224 x 224, mean and std 0.5, rescale 1/255,
/// every `do_*` true, bilinear resample). A `null` `do_resize` / `do_rescale` / `do_normalize`
/// switches the step off, as Python's `if None:` does.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessor {
    pub do_resize: bool,
    /// `(height, width)` of the model's input.
    pub size: (usize, usize),
    /// PIL's filter number; always 2 (bilinear) when `do_resize`, the only one reproduced.
    pub resample: u64,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    /// Per RGB channel, already float32 as numpy makes them (`np.array(mean, dtype=float32)`).
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// Kept for round trips; decoding always converts to RGB8, since the model takes three
    /// channels (on an RGB file both are the same).
    pub do_convert_rgb: Option<bool>,
}

impl Default for ImageProcessor {
    fn default() -> Self {
        ImageProcessor {
            do_resize: true,
            size: (DEFAULT_SIZE, DEFAULT_SIZE),
            resample: BILINEAR,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: DEFAULT_MEAN_STD,
            image_std: DEFAULT_MEAN_STD,
            do_convert_rgb: None,
        }
    }
}

impl ImageProcessor {
    /// Reads a `preprocessor_config.json`; errors name the file (and the key at fault).
    pub fn from_file(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| AdapterError::file(&origin, format!("cannot read: {e}")))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| AdapterError::file(&origin, format!("not valid JSON: {e}")))?;
        Self::from_value(&value, &origin)
    }

    /// Parses the JSON object of a `preprocessor_config.json`; `origin` names it in errors.
    /// Keys other than the processor's own (`image_processor_type`, ...) are ignored.
    pub fn from_value(v: &Value, origin: &str) -> Result<Self> {
        let key_err = |key: &str, reason: String| AdapterError::ConfigKey { file: origin.into(), key: key.into(), reason };
        let object = v.as_object().ok_or_else(|| key_err("(top level)", "expected a JSON object".into()))?;
        let defaults = Self::default();
        let flag = |key: &str, default: bool| -> Result<bool> {
            match object.get(key) {
                None => Ok(default),
                Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(key_err(key, format!("expected true, false or null, got {other}"))),
            }
        };
        let do_resize = flag("do_resize", defaults.do_resize)?;
        let do_rescale = flag("do_rescale", defaults.do_rescale)?;
        let do_normalize = flag("do_normalize", defaults.do_normalize)?;
        let do_convert_rgb = match object.get("do_convert_rgb") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => return Err(key_err("do_convert_rgb", format!("expected true, false or null, got {other}"))),
        };
        let size = parse_size(object.get("size")).map_err(|r| key_err("size", r))?;
        let resample = parse_resample(object.get("resample"), do_resize).map_err(|r| key_err("resample", r))?;
        let rescale_factor = match object.get("rescale_factor") {
            None => defaults.rescale_factor,
            Some(value) => match value.as_f64() {
                Some(f) => f,
                // Python multiplies by None and fails: only an error when the step runs
                None if !do_rescale && value.is_null() => defaults.rescale_factor,
                None => return Err(key_err("rescale_factor", format!("expected a number, got {value}"))),
            },
        };
        let image_mean = parse_channels(object.get("image_mean")).map_err(|r| key_err("image_mean", r))?;
        let image_std = parse_channels(object.get("image_std")).map_err(|r| key_err("image_std", r))?;
        Ok(ImageProcessor { do_resize, size, resample, do_rescale, rescale_factor, do_normalize, image_mean, image_std, do_convert_rgb })
    }

    /// Decodes a PNG or JPEG file (format sniffed from its bytes, not its name), converts it to
    /// RGB8 like PIL's `.convert("RGB")`, then runs [`ImageProcessor::preprocess_rgb`].
    /// F32 `[1, 3, H, W]` on the CPU.
    pub fn preprocess_file(&self, path: &Path) -> Result<Tensor> {
        let (rgb, width, height) = decode_rgb8(path)?;
        self.preprocess_rgb(&rgb, width, height)
    }

    /// Runs the processor on HWC uint8 RGB pixels `width` wide and `height` high: F32
    /// `[1, 3, H, W]` on the CPU (H, W the configured size when `do_resize`, else the image's).
    /// With neither rescale nor normalize the values are the uint8 levels as floats.
    pub fn preprocess_rgb(&self, rgb: &[u8], width: usize, height: usize) -> Result<Tensor> {
        if width == 0 || height == 0 || rgb.len() != width * height * 3 {
            return Err(AdapterError::InvalidInput(format!(
                "an RGB image {width} wide and {height} high needs {} bytes (HWC), got {}",
                width * height * 3,
                rgb.len()
            )));
        }
        let (out_h, out_w) = if self.do_resize { self.size } else { (height, width) };
        let pixels = if self.do_resize { resize_bilinear(rgb, width, height, out_w, out_h)? } else { rgb.to_vec() };
        let chw = self.to_chw_f32(&pixels, out_w, out_h);
        Ok(Tensor::from_vec(chw, (1, 3, out_h, out_w), &Device::Cpu)?)
    }

    /// Rescale and normalize each uint8 level, laid out channels first.
    fn to_chw_f32(&self, hwc: &[u8], width: usize, height: usize) -> Vec<f32> {
        let plane = width * height;
        let mut chw = vec![0f32; 3 * plane];
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            for (c, &level) in px.iter().enumerate() {
                chw[c * plane + i] = self.level_value(level, c);
            }
        }
        chw
    }

    /// One channel value, in the precisions numpy uses: the rescale multiplies in float64 and
    /// rounds to float32 (`rescale`'s `astype`), the normalization is all float32.
    fn level_value(&self, level: u8, channel: usize) -> f32 {
        let x = if self.do_rescale { (level as f64 * self.rescale_factor) as f32 } else { level as f32 };
        if self.do_normalize {
            (x - self.image_mean[channel]) / self.image_std[channel]
        } else {
            x
        }
    }
}

/// `size`: `{"height": h, "width": w}`, or one integer for a square (`get_size_dict`); missing or
/// null is 224 x 224. `shortest_edge` forms are refused: ViT's `resize` needs both sides.
fn parse_size(value: Option<&Value>) -> std::result::Result<(usize, usize), String> {
    let side = |v: Option<&Value>, name: &str| -> std::result::Result<usize, String> {
        match v.and_then(Value::as_u64) {
            Some(n) if n > 0 => Ok(n as usize),
            _ => Err(format!("`{name}` must be a positive integer, got {}", v.map_or("nothing".into(), Value::to_string))),
        }
    };
    match value {
        None | Some(Value::Null) => Ok((DEFAULT_SIZE, DEFAULT_SIZE)),
        Some(n @ Value::Number(_)) => side(Some(n), "size").map(|s| (s, s)),
        Some(Value::Object(o)) if o.contains_key("height") || o.contains_key("width") => Ok((side(o.get("height"), "height")?, side(o.get("width"), "width")?)),
        Some(other) => Err(format!("ViTImageProcessor needs {{\"height\": h, \"width\": w}} (or one integer), got {other}")),
    }
}

/// `resample`: only PIL's bilinear (2) is reproduced exactly, so any other filter is refused
/// rather than approximated; it does not matter when nothing is resized. Null means bilinear
/// (transformers' `resize` falls back to it).
fn parse_resample(value: Option<&Value>, do_resize: bool) -> std::result::Result<u64, String> {
    let resample = match value {
        None | Some(Value::Null) => BILINEAR,
        Some(v) => v.as_u64().ok_or_else(|| format!("expected a PIL resampling filter number, got {v}"))?,
    };
    if do_resize && resample != BILINEAR {
        let name = ["nearest", "lanczos", "bilinear", "bicubic", "box", "hamming"].get(resample as usize).copied().unwrap_or("unknown");
        return Err(format!("resample {resample} ({name}) is not supported: only 2 (bilinear) is reproduced exactly"));
    }
    Ok(resample)
}

/// `image_mean` / `image_std`: three numbers, or one for every channel (transformers accepts
/// both); missing or null is 0.5. Rounded to float32, as `np.array(..., dtype=float32)` does.
fn parse_channels(value: Option<&Value>) -> std::result::Result<[f32; 3], String> {
    match value {
        None | Some(Value::Null) => Ok(DEFAULT_MEAN_STD),
        Some(Value::Number(n)) => n.as_f64().map(|f| [f as f32; 3]).ok_or_else(|| format!("expected a number, got {n}")),
        Some(Value::Array(items)) if items.len() == 3 => {
            let mut out = [0f32; 3];
            for (slot, item) in out.iter_mut().zip(items) {
                *slot = item.as_f64().ok_or_else(|| format!("expected numbers, got {item}"))? as f32;
            }
            Ok(out)
        }
        Some(other) => Err(format!("expected 3 numbers (one per RGB channel) or one number, got {other}")),
    }
}

/// Reads and decodes an image file into HWC RGB8 pixels, `(pixels, width, height)`. Errors name
/// the file: unreadable, not an image format the `image` crate knows (PNG, JPEG), or corrupt.
fn decode_rgb8(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let origin = path.display();
    let reader = image::ImageReader::open(path).map_err(|e| AdapterError::file(&origin, format!("cannot read the image: {e}")))?;
    let reader = reader.with_guessed_format().map_err(|e| AdapterError::file(&origin, format!("cannot read the image: {e}")))?;
    let decoded = reader.decode().map_err(|e| AdapterError::file(&origin, format!("cannot decode as a PNG or JPEG image: {e}")))?;
    let rgb = decoded.to_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    Ok((rgb.into_raw(), width, height))
}

/// Pillow 13's `Image.resize((new_width, new_height), BILINEAR)` on HWC uint8 RGB, exactly.
///
/// Separable, one fixed-point pass per changed axis ([`resample_axis`]) with uint8 rounding in
/// between, so the pass order changes the result: horizontal first, unless the height shrinks by
/// more than twice as many pixels as the width, `(H - h) > 0 && (H - h) > 2 (W - w)` (Pillow 13
/// does the larger reduction first; Pillow 12 was always horizontal first). An unchanged axis is
/// skipped and an unchanged size is a copy.
/// A buffer that is not `width * height * 3` bytes is an `InvalidInput` error.
pub fn resize_bilinear(rgb: &[u8], width: usize, height: usize, new_width: usize, new_height: usize) -> Result<Vec<u8>> {
    if rgb.len() != width * height * 3 {
        return Err(AdapterError::InvalidInput(format!("a {width}x{height} RGB image needs {} bytes, not {}", width * height * 3, rgb.len())));
    }
    let (dh, dw) = (height as i64 - new_height as i64, width as i64 - new_width as i64);
    let vertical_first = dh > 0 && dh > 2 * dw;
    let (mut pixels, mut w, mut h) = (rgb.to_vec(), width, height);
    let horizontal_then_vertical = if vertical_first { [false, true] } else { [true, false] };
    for horizontal in horizontal_then_vertical {
        if horizontal && w != new_width {
            // rows are the outer dimension, columns the resampled one, RGB the inner
            pixels = resample_axis(&pixels, h, w, 3, new_width);
            w = new_width;
        } else if !horizontal && h != new_height {
            // the whole image is one block of rows; a row of RGB pixels is the inner dimension
            pixels = resample_axis(&pixels, 1, h, w * 3, new_height);
            h = new_height;
        }
    }
    Ok(pixels)
}

/// The input samples one output index reads: `weights[j]` applies to input index `start + j`.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// One pass of Pillow's 8-bit resampler (`ImagingResample{Horizontal,Vertical}_8bpc`) over the
/// middle axis of a `[outer, len, inner]` uint8 array, giving `[outer, new_len, inner]`: each
/// output is `clamp(((1 << 21) + sum(p * k)) >> 22, 0, 255)`.
fn resample_axis(src: &[u8], outer: usize, len: usize, inner: usize, new_len: usize) -> Vec<u8> {
    let taps = bilinear_taps(len, new_len);
    let mut out = vec![0u8; outer * new_len * inner];
    for o in 0..outer {
        let block = &src[o * len * inner..(o + 1) * len * inner];
        for (i, tap) in taps.iter().enumerate() {
            let dst = &mut out[(o * new_len + i) * inner..(o * new_len + i + 1) * inner];
            for (e, slot) in dst.iter_mut().enumerate() {
                // i64 where Pillow has int: the same value, as bilinear weights are never negative
                let sum = tap
                    .weights
                    .iter()
                    .enumerate()
                    .fold(1i64 << (PRECISION_BITS - 1), |acc, (j, &k)| acc + block[(tap.start + j) * inner + e] as i64 * k as i64);
                *slot = (sum >> PRECISION_BITS).clamp(0, 255) as u8;
            }
        }
    }
    out
}

/// Pillow's `precompute_coeffs` for the bilinear (triangle) filter over the full box, then
/// `normalize_coeffs_8bpc`. When shrinking, the triangle widens by the scale factor (that is
/// Pillow's antialiasing). Float steps are kept in Pillow's order and precision (double, the
/// offset multiplied by `1 / filterscale`, weights divided by their running sum) so that the
/// rounding to fixed point lands on the same integers.
fn bilinear_taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as i64` does
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax.max(xmin)).map(|x| triangle((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = raw.iter().sum();
            let weights = raw.iter().map(|&w| to_fixed_point(if total != 0.0 { w / total } else { w })).collect();
            Taps { start: xmin, weights }
        })
        .collect()
}

/// Pillow's `bilinear_filter`: `1 - |x|` inside `(-1, 1)`, else 0.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// A normalised weight as a `PRECISION_BITS` fixed-point integer, rounded half away from zero
/// by `(int)(w * 2^22 ± 0.5)` as `normalize_coeffs_8bpc` does.
fn to_fixed_point(w: f64) -> i32 {
    let scaled = w * (1u32 << PRECISION_BITS) as f64;
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    fn processor() -> ImageProcessor {
        ImageProcessor::from_file(&fixtures().join("vision/vit/model_cls/preprocessor_config.json")).unwrap()
    }

    /// The fixture's tensors for one image: `pixel_values`, `rgb`, `logits`.
    fn expected(stem_ext: &str) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(fixtures().join(format!("vision/images/{stem_ext}.safetensors")), &Device::Cpu).unwrap()
    }

    /// PIL's decoded pixels `(rgb, width, height)` from a fixture's `rgb` U8 [H, W, 3].
    fn pil_rgb(tensors: &HashMap<String, Tensor>) -> (Vec<u8>, usize, usize) {
        let rgb = &tensors["rgb"];
        let (h, w, c) = rgb.dims3().unwrap();
        assert_eq!(c, 3);
        (rgb.flatten_all().unwrap().to_vec1::<u8>().unwrap(), w, h)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn processor_config_reads_the_fixture_and_defaults() {
        let p = processor();
        assert_eq!((p.size, p.resample, p.do_convert_rgb), ((16, 16), 2, None));
        assert_eq!((p.image_mean, p.image_std), ([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]));
        assert_eq!(p.rescale_factor, 1.0 / 255.0);
        assert_eq!(ImageProcessor::from_value(&serde_json::json!({}), "x").unwrap(), ImageProcessor::default());
        let square = ImageProcessor::from_value(&serde_json::json!({"size": 32, "image_mean": 0.1, "do_resize": null}), "x").unwrap();
        assert_eq!((square.size, square.image_mean, square.do_resize), ((32, 32), [0.1f32; 3], false));
    }

    #[test]
    fn resize_of_pil_pixels_reproduces_python_pixel_values() {
        let want = expected("photo_24x20_png");
        let (rgb, w, h) = pil_rgb(&want);
        assert_eq!((w, h), (24, 20));
        let p = processor();
        let resized = resize_bilinear(&rgb, w, h, 16, 16).unwrap();
        let got = Tensor::from_vec(p.to_chw_f32(&resized, 16, 16), (1, 3, 16, 16), &Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&got, &want["pixel_values"]), 0.0);
    }

    #[test]
    fn png_files_preprocess_exactly() {
        let p = processor();
        for (file, stem) in [("red_16.png", "red_16_png"), ("photo_24x20.png", "photo_24x20_png")] {
            let got = p.preprocess_file(&fixtures().join("vision/images").join(file)).unwrap();
            assert_eq!(max_abs_diff(&got, &expected(stem)["pixel_values"]), 0.0, "{file}");
        }
    }

    #[test]
    fn jpeg_pixels_preprocess_exactly_and_the_decode_is_close() {
        let want = expected("photo_24x20_jpg");
        let (pil, w, h) = pil_rgb(&want);
        let p = processor();
        // the processor itself is exact on PIL's decoded pixels
        assert_eq!(max_abs_diff(&p.preprocess_rgb(&pil, w, h).unwrap(), &want["pixel_values"]), 0.0);

        let path = fixtures().join("vision/images/photo_24x20.jpg");
        let (ours, ow, oh) = decode_rgb8(&path).unwrap();
        assert_eq!((ow, oh), (w, h));
        let level_diff = |x: usize, y: usize| (0..3).map(|c| ours[(y * w + x) * 3 + c].abs_diff(pil[(y * w + x) * 3 + c])).max().unwrap();
        let decode_diff = (0..h).flat_map(|y| (0..w).map(move |x| (x, y))).map(|(x, y)| level_diff(x, y)).max().unwrap();
        let interior_diff = (0..h - 1).flat_map(|y| (0..w - 1).map(move |x| (x, y))).map(|(x, y)| level_diff(x, y)).max().unwrap();
        let value_diff = max_abs_diff(&p.preprocess_file(&path).unwrap(), &want["pixel_values"]);
        eprintln!("JPEG decode vs PIL: max |diff| {decode_diff} levels ({interior_diff} off the last row and column); pixel_values max |diff| {value_diff}");
        // Measured with image 0.25 (zune-jpeg) against Pillow 13 (libjpeg-turbo 3.2) on this 4:2:0
        // JPEG of random pixels: 3 levels inside, 21 on the last column. zune-jpeg's fancy chroma
        // upsampling rounds between its vertical and horizontal steps (libjpeg-turbo keeps the
        // 3 near + far sums to the end): a level or two of chroma, up to 3-4 after YCbCr -> RGB.
        // On the last real chroma column it blends in the MCU padding column where libjpeg-turbo
        // repeats the edge sample: random chroma makes that 21 levels here. The resize is a convex
        // combination with one rounding per pass, so pixel_values can be off by at most
        // (21 + 2) levels / 255 / the smallest std (0.2) = 0.451; measured 0.2549 (13 levels on
        // the std-0.2 channel). A change of JPEG decoder shows up as a change of these bounds.
        assert!(interior_diff <= 3 && decode_diff <= 21, "decode differs from PIL by {decode_diff} ({interior_diff} inside)");
        assert!(value_diff <= (21.0 + 2.0) / 255.0 / 0.2, "pixel_values differ by {value_diff}");
    }

    /// A reproducible pattern with structure in both axes (so that the pass order shows):
    /// `(37 x + 91 y + 53 c + 13 x y) mod 256`, as the Python reference below built it.
    fn pattern(width: usize, height: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                for c in 0..3 {
                    out.push(((x * 37 + y * 91 + c * 53 + x * y * 13) % 256) as u8);
                }
            }
        }
        out
    }

    /// Pillow 13.0.0's `Image.fromarray(pattern(W, H), "RGB").resize((w, h), Image.BILINEAR)`,
    /// flattened HWC; generated with /work/pyref/bin/python. In every case the other pass order
    /// gives a different result (by 20 to 44 bytes), so each pins the order rule.
    const PIL_REFERENCES: &[(usize, usize, usize, usize, &[u8])] = &[
        // 10x40 -> 8x8: H - h = 32 > 2 (W - w) = 4: vertical first
        (
            10,
            40,
            8,
            8,
            &[
                107, 145, 129, 126, 145, 139, 145, 131, 145, 140, 129, 137, 144, 132, 140, 126, 110, 144, 132, 129, 123, 137, 129, 130, 132, 126, 148, 140,
                120, 150, 140, 114, 162, 133, 117, 136, 143, 123, 123, 136, 107, 143, 136, 137, 137, 145, 120, 127, 139, 118, 120, 120, 126, 110, 100, 136,
                150, 118, 125, 131, 115, 123, 120, 128, 139, 138, 120, 125, 148, 113, 120, 127, 114, 139, 118, 116, 122, 120, 94, 130, 146, 111, 132, 134, 119,
                133, 127, 114, 138, 130, 122, 110, 132, 128, 128, 135, 127, 113, 138, 134, 115, 130, 117, 127, 100, 136, 128, 121, 128, 139, 135, 115, 147,
                122, 139, 129, 117, 146, 119, 127, 140, 126, 113, 118, 137, 126, 99, 147, 95, 121, 150, 114, 120, 149, 132, 108, 143, 117, 130, 142, 127, 125,
                122, 119, 114, 140, 126, 136, 125, 144, 122, 140, 111, 115, 136, 132, 119, 124, 113, 140, 138, 109, 113, 141, 136, 122, 132, 137, 132, 109,
                142, 134, 144, 131, 114, 157, 104, 115, 132, 122, 133, 124, 119, 142, 133, 98, 115, 113, 131, 132, 124, 151,
            ],
        ),
        // 40x10 -> 8x8: H - h = 2, W - w = 32: horizontal first
        (
            40,
            10,
            8,
            8,
            &[
                104, 137, 158, 112, 122, 131, 127, 137, 107, 118, 135, 122, 109, 127, 121, 124, 126, 112, 131, 141, 111, 121, 139, 145, 147, 143, 133, 137,
                135, 132, 133, 130, 123, 128, 121, 119, 119, 117, 114, 115, 112, 110, 128, 108, 105, 140, 123, 149, 141, 131, 120, 129, 126, 135, 134, 132,
                113, 122, 115, 125, 123, 126, 106, 123, 132, 118, 134, 120, 129, 108, 125, 131, 123, 135, 138, 133, 107, 149, 146, 127, 109, 131, 133, 118,
                108, 148, 121, 125, 118, 136, 141, 116, 145, 146, 127, 102, 135, 142, 152, 141, 138, 142, 142, 139, 142, 139, 144, 136, 128, 137, 143, 134,
                132, 134, 134, 132, 138, 137, 132, 133, 139, 116, 169, 157, 119, 136, 156, 122, 151, 159, 133, 138, 139, 118, 159, 155, 116, 134, 153, 120,
                149, 164, 131, 130, 160, 110, 150, 149, 122, 127, 145, 112, 158, 147, 132, 137, 162, 116, 151, 151, 124, 130, 148, 114, 161, 145, 139, 138,
                113, 99, 120, 108, 113, 107, 109, 109, 121, 110, 120, 114, 119, 114, 121, 115, 120, 114, 116, 116, 128, 115, 133, 119,
            ],
        ),
        // 20x30 -> 10x10: H - h = 20 = 2 (W - w), not more: horizontal first (the boundary)
        (
            20,
            30,
            10,
            10,
            &[
                111, 136, 143, 143, 140, 137, 138, 139, 144, 132, 129, 130, 123, 116, 121, 109, 154, 147, 172, 129, 78, 86, 103, 148, 137, 142, 127, 128, 130,
                101, 119, 160, 131, 135, 128, 145, 143, 117, 138, 132, 110, 149, 139, 139, 139, 115, 132, 125, 165, 122, 111, 140, 133, 129, 144, 122, 125,
                118, 143, 119, 143, 115, 156, 147, 114, 164, 147, 121, 132, 147, 121, 135, 147, 125, 128, 147, 118, 135, 147, 114, 164, 147, 121, 146, 147,
                136, 135, 149, 142, 125, 131, 107, 131, 115, 119, 140, 108, 122, 118, 118, 118, 136, 111, 136, 132, 136, 121, 114, 86, 125, 135, 121, 146, 120,
                139, 113, 120, 132, 128, 120, 132, 123, 112, 102, 133, 137, 123, 122, 122, 126, 136, 136, 129, 107, 125, 136, 146, 149, 75, 103, 149, 160, 102,
                106, 124, 137, 144, 126, 115, 127, 111, 140, 103, 99, 141, 137, 120, 130, 151, 119, 136, 133, 111, 122, 157, 75, 114, 163, 42, 92, 145, 70, 73,
                123, 123, 101, 115, 146, 113, 134, 128, 128, 132, 121, 121, 135, 113, 145, 116, 123, 130, 133, 150, 132, 114, 157, 92, 103, 63, 88, 137, 87,
                137, 172, 129, 143, 128, 140, 124, 128, 120, 108, 136, 125, 118, 107, 131, 131, 124, 123, 141, 115, 136, 118, 136, 153, 156, 124, 141, 105,
                130, 136, 150, 136, 110, 110, 124, 122, 98, 147, 136, 124, 124, 115, 143, 100, 135, 135, 142, 116, 151, 130, 136, 129, 114, 124, 117, 134, 144,
                108, 122, 132, 139, 110, 134, 127, 130, 117, 133, 118, 140, 124, 127, 104, 149, 110, 115, 168, 113, 123, 136, 121, 126, 127, 128, 118, 147,
                112, 137, 150, 115, 145, 106, 143, 112, 109, 146, 112, 128, 126,
            ],
        ),
        // 6x30 -> 12x5: the width grows (W - w = -6), the height shrinks: vertical first
        (
            6,
            30,
            12,
            5,
            &[
                97, 146, 126, 108, 144, 133, 131, 140, 147, 133, 142, 147, 114, 150, 133, 123, 143, 135, 160, 120, 153, 166, 113, 155, 141, 121, 141, 134, 130,
                135, 144, 140, 136, 149, 145, 137, 134, 119, 144, 134, 118, 141, 135, 115, 134, 136, 115, 135, 137, 118, 143, 132, 119, 153, 122, 118, 164,
                118, 119, 156, 119, 124, 129, 123, 126, 114, 131, 125, 111, 135, 124, 109, 139, 135, 114, 132, 129, 114, 119, 118, 115, 113, 121, 113, 116,
                140, 108, 107, 144, 124, 86, 134, 160, 92, 127, 166, 123, 122, 142, 133, 120, 128, 123, 119, 123, 118, 118, 121, 116, 127, 137, 117, 126, 134,
                120, 125, 127, 128, 119, 127, 141, 109, 133, 132, 113, 128, 103, 132, 111, 100, 140, 108, 124, 137, 119, 135, 135, 127, 134, 134, 133, 133,
                133, 136, 144, 112, 120, 141, 116, 123, 135, 124, 129, 127, 131, 127, 117, 138, 117, 108, 143, 104, 100, 147, 88, 105, 148, 91, 123, 146, 114,
                133, 147, 131, 136, 151, 143, 137, 153, 149,
            ],
        ),
    ];

    #[test]
    fn resize_matches_pillow_in_both_pass_orders() {
        for &(w, h, nw, nh, want) in PIL_REFERENCES {
            assert_eq!(resize_bilinear(&pattern(w, h), w, h, nw, nh).unwrap(), want, "{w}x{h} -> {nw}x{nh}");
        }
        let same = pattern(5, 4);
        assert_eq!(resize_bilinear(&same, 5, 4, 5, 4).unwrap(), same);
    }

    #[test]
    fn errors_are_typed_and_name_the_file() {
        let p = processor();
        let missing = fixtures().join("vision/images/no_such.png");
        let names_file = |r: Result<Tensor>, name: &str| matches!(&r, Err(AdapterError::File { file, .. }) if file.ends_with(name));
        assert!(names_file(p.preprocess_file(&missing), "no_such.png"));
        let not_an_image = fixtures().join("vision/vit/model_cls/preprocessor_config.json");
        assert!(names_file(p.preprocess_file(&not_an_image), "preprocessor_config.json"));
        let config = ImageProcessor::from_file(&missing.with_extension("json"));
        assert!(matches!(&config, Err(AdapterError::File { file, .. }) if file.ends_with("no_such.json")), "{config:?}");
        for bad in [serde_json::json!({"resample": 3}), serde_json::json!({"resample": 0, "do_resize": true})] {
            let r = ImageProcessor::from_value(&bad, "pp.json");
            assert!(matches!(&r, Err(AdapterError::ConfigKey { file, key, .. }) if file == "pp.json" && key == "resample"), "{r:?}");
        }
        assert!(ImageProcessor::from_value(&serde_json::json!({"resample": 3, "do_resize": false}), "pp.json").is_ok());
        let bad_mean = ImageProcessor::from_value(&serde_json::json!({"image_mean": [0.5, 0.5]}), "pp.json");
        assert!(matches!(bad_mean, Err(AdapterError::ConfigKey { key, .. }) if key == "image_mean"));
        let bad_size = ImageProcessor::from_value(&serde_json::json!({"size": {"shortest_edge": 224}}), "pp.json");
        assert!(matches!(bad_size, Err(AdapterError::ConfigKey { key, .. }) if key == "size"));
        assert!(matches!(p.preprocess_rgb(&[0; 5], 2, 1), Err(AdapterError::InvalidInput(_))));
    }
}
