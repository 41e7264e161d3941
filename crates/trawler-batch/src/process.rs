//! Processing a downloaded image, on a pool of threads sized to the cores
//! so that downloads (on the async runtime) never wait on decoding.
//!
//! For each body: the format is told by its first bytes (JPEG, PNG, WebP
//! accepted; anything else is not an image), the dimensions read from the
//! header and checked against `max_pixels` before decoding, then the image
//! is decoded (`image`, zune-jpeg inside), reduced to a thumbnail whose
//! longest side is `thumbnail` pixels (a box filter: fast, and good enough
//! for a preview), encoded as JPEG (`jpeg-encoder`: a third of the time
//! `image`'s encoder took for a 64-pixel thumbnail), and hashed:
//!
//! * **content hash**: xxh3-64 of the downloaded bytes;
//! * **dHash** (the perceptual hash): the thumbnail in grey, reduced to
//!   9×8, one bit per pair of horizontal neighbours (left brighter than
//!   right), 64 bits; near-identical images differ in few bits.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use image::{DynamicImage, GenericImageView, ImageFormat, ImageReader};
use tokio::sync::{mpsc, oneshot};

/// What processing found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `jpeg`, `png` or `webp`.
    pub format: &'static str,
    /// xxh3-64 of the bytes.
    pub content_hash: u64,
    /// The perceptual hash.
    pub dhash: u64,
    /// The thumbnail, JPEG.
    pub thumbnail: Vec<u8>,
}

/// Processes one body (on the calling thread).
pub fn process(body: &[u8], thumbnail: u32, max_pixels: u64) -> Result<Processed, String> {
    let reader = ImageReader::new(Cursor::new(body))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let format = match reader.format() {
        Some(ImageFormat::Jpeg) => "jpeg",
        Some(ImageFormat::Png) => "png",
        Some(ImageFormat::WebP) => "webp",
        Some(other) => return Err(format!("{other:?} is not an accepted format")),
        None => return Err("not an image (unknown format)".into()),
    };
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| format!("{format}: {e}"))?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(format!("{width}×{height} is over max_pixels {max_pixels}"));
    }
    let image = ImageReader::new(Cursor::new(body))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| format!("{format}: {e}"))?;
    let thumb = thumbnail_of(&image, thumbnail);
    let mut jpeg = Vec::with_capacity(4096);
    // Sides are at most 1,024 (`process.thumbnail` is checked), so they fit.
    jpeg_encoder::Encoder::new(&mut jpeg, 75)
        .encode(
            thumb.as_raw(),
            thumb.width() as u16,
            thumb.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .map_err(|e| format!("encoding the thumbnail: {e}"))?;
    Ok(Processed {
        width,
        height,
        format,
        content_hash: xxhash_rust::xxh3::xxh3_64(body),
        dhash: dhash(&thumb),
        thumbnail: jpeg,
    })
}

fn thumbnail_of(image: &DynamicImage, side: u32) -> image::RgbImage {
    let (w, h) = image.dimensions();
    let scale = f64::from(side) / f64::from(w.max(h));
    let (tw, th) = if scale >= 1.0 {
        (w, h)
    } else {
        (
            ((f64::from(w) * scale).round() as u32).max(1),
            ((f64::from(h) * scale).round() as u32).max(1),
        )
    };
    match image {
        DynamicImage::ImageRgb8(rgb) => box_resize(rgb, tw, th),
        other => box_resize(&other.to_rgb8(), tw, th),
    }
}

/// Downscales by averaging each output pixel's block of source pixels, in
/// integers. `image::imageops::thumbnail` does the same in floating point
/// per channel and took 30 % of the crawl's CPU in a profile; this takes a
/// few percent.
pub fn box_resize<P>(
    src: &image::ImageBuffer<P, Vec<u8>>,
    tw: u32,
    th: u32,
) -> image::ImageBuffer<P, Vec<u8>>
where
    P: image::Pixel<Subpixel = u8>,
{
    let (w, h) = src.dimensions();
    let c = usize::from(P::CHANNEL_COUNT);
    let raw = src.as_raw();
    let mut out = vec![0u8; tw as usize * th as usize * c];
    let mut sums = vec![0u32; c];
    for oy in 0..th {
        let (y0, y1) = (oy * h / th, ((oy + 1) * h / th).max(oy * h / th + 1));
        for ox in 0..tw {
            let (x0, x1) = (ox * w / tw, ((ox + 1) * w / tw).max(ox * w / tw + 1));
            sums.iter_mut().for_each(|s| *s = 0);
            for y in y0..y1 {
                let row = &raw[(y as usize * w as usize + x0 as usize) * c
                    ..(y as usize * w as usize + x1 as usize) * c];
                for px in row.chunks_exact(c) {
                    for (s, v) in sums.iter_mut().zip(px) {
                        *s += u32::from(*v);
                    }
                }
            }
            let n = (y1 - y0) * (x1 - x0);
            let at = (oy as usize * tw as usize + ox as usize) * c;
            for (o, s) in out[at..at + c].iter_mut().zip(&sums) {
                *o = ((s + n / 2) / n) as u8;
            }
        }
    }
    image::ImageBuffer::from_raw(tw, th, out).expect("the buffer has the right size")
}

/// The 64-bit difference hash of an image.
pub fn dhash(image: &image::RgbImage) -> u64 {
    let grey = image::imageops::grayscale(image);
    let small = box_resize(&grey, 9, 8);
    let mut bits = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            let left = small.get_pixel(x, y).0[0];
            let right = small.get_pixel(x + 1, y).0[0];
            bits = bits << 1 | u64::from(left > right);
        }
    }
    bits
}

type Job = (Bytes, oneshot::Sender<Result<Processed, String>>);

/// The processing threads.
#[derive(Debug, Clone)]
pub struct Pool {
    tx: mpsc::Sender<Job>,
}

impl Pool {
    /// Starts `workers` threads named `batch-process-N`.
    pub fn start(workers: usize, thumbnail: u32, max_pixels: u64) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>(workers * 4);
        // One receiver behind a lock: the thread holding it waits for work,
        // the others wait for the lock; a job never waits while a thread
        // is idle.
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("batch-process-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).blocking_recv();
                    let Some((body, reply)) = job else {
                        return;
                    };
                    let _ = reply.send(process(&body, thumbnail, max_pixels));
                })
                .expect("spawning a processing thread");
        }
        Pool { tx }
    }

    /// Processes `body` on the pool.
    pub async fn process(&self, body: Bytes) -> Result<Processed, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((body, reply))
            .await
            .map_err(|_| "the processing pool stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the processing pool stopped".to_owned())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: ImageFormat, w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn formats_decode_and_thumbnails_are_small() {
        for (format, name) in [
            (ImageFormat::Jpeg, "jpeg"),
            (ImageFormat::Png, "png"),
            (ImageFormat::WebP, "webp"),
        ] {
            let p = process(&encoded(format, 256, 128), 64, 1 << 30).unwrap();
            assert_eq!((p.width, p.height, p.format), (256, 128, name));
            let thumb = image::load_from_memory(&p.thumbnail).unwrap();
            assert_eq!((thumb.width(), thumb.height()), (64, 32));
        }
    }

    #[test]
    fn what_is_not_an_image_is_refused() {
        assert!(process(b"<html></html>", 64, 1 << 30).is_err());
        let mut broken = vec![0xFF, 0xD8, 0xFF, 0xE0];
        broken.extend([7u8; 300]);
        assert!(process(&broken, 64, 1 << 30).is_err());
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert!(process(gif, 64, 1 << 30).unwrap_err().contains("Gif"));
        assert!(process(&encoded(ImageFormat::Png, 100, 100), 64, 9_999)
            .unwrap_err()
            .contains("max_pixels"));
    }

    #[test]
    fn box_resize_averages_blocks() {
        let img = image::RgbImage::from_fn(4, 2, |x, _| image::Rgb([(x * 10) as u8, 100, 255]));
        let small = box_resize(&img, 2, 1);
        assert_eq!(small.get_pixel(0, 0).0, [5, 100, 255]);
        assert_eq!(small.get_pixel(1, 0).0, [25, 100, 255]);
        // Upscaling repeats pixels; odd ratios cover every source pixel.
        assert_eq!(box_resize(&img, 8, 4).dimensions(), (8, 4));
        assert_eq!(box_resize(&img, 3, 1).dimensions(), (3, 1));
    }

    #[test]
    fn dhash_is_stable_under_small_changes() {
        let a =
            image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 0]));
        let mut b = a.clone();
        b.put_pixel(3, 3, image::Rgb([255, 255, 255]));
        let flipped = image::imageops::flip_horizontal(&a);
        assert!((dhash(&a) ^ dhash(&b)).count_ones() <= 2);
        assert!((dhash(&a) ^ dhash(&flipped)).count_ones() > 32);
    }
}
