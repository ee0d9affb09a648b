"""Video and image I/O (PyAV, OpenCV, Pillow) plus the paper's centre-crop/resize geometry.

Frames are always ``uint8`` RGB arrays shaped ``(N, H, W, 3)``. Supported inputs: video files (mp4, webm, mov, mkv,
avi, gif) and image sequences (a folder of PNG/JPG frames or a glob pattern). Outputs: ``.mp4``/``.mov``/``.mkv``
(H.264, yuv420p), ``.webm`` (VP9), ``.gif`` (adaptive palette) or a folder of PNG frames.
"""

from __future__ import annotations

import glob as _glob
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif")
DEFAULT_SEQUENCE_FPS = 8.0


class VideoReadError(RuntimeError):
    """A file exists but cannot be decoded into frames (corrupt, not a video, or zero frames)."""


@dataclass
class VideoClip:
    """Decoded frames (uint8 RGB, (N,H,W,3)), their frame rate and where they came from."""

    frames: np.ndarray
    fps: float
    source: str

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def duration(self) -> float:
        """Length in seconds (num_frames / fps)."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0


@dataclass
class WriteInfo:
    """What `write_video` actually wrote; `note` says whether frames were padded to even size."""

    path: str
    codec: str
    num_frames: int
    fps: Fraction
    height: int
    width: int
    note: str = ""


# --------------------------------------------------------------------------------------------- helpers


def fps_fraction(fps: float | Fraction | int) -> Fraction:
    """Exact rational frame rate: 29.97002997 -> 30000/1001, 8.0 -> 8, 12.5 -> 25/2."""
    if isinstance(fps, Fraction):
        frac = fps
    else:
        if not math.isfinite(float(fps)):
            raise ValueError(f"fps must be finite, got {fps!r}")
        frac = Fraction(float(fps)).limit_denominator(1001)
    if frac <= 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    return frac


def _natural_key(path: str) -> list[object]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", os.path.basename(path))]


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Grayscale / RGBA / 16-bit / float arrays -> (H,W,3) uint8 RGB (alpha composited over white)."""
    arr = np.asarray(image)
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif arr.dtype in (np.float32, np.float64):
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an image array (H,W[,C]), got shape {arr.shape}")
    channels = arr.shape[2]
    if channels == 1:
        return np.repeat(arr, 3, axis=2)
    if channels == 2:  # gray + alpha
        arr = np.concatenate([np.repeat(arr[:, :, :1], 3, axis=2), arr[:, :, 1:]], axis=2)
        channels = 4
    if channels == 4:
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        rgb = arr[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return rgb.round().astype(np.uint8)
    if channels == 3:
        return np.ascontiguousarray(arr)
    raise ValueError(f"unsupported channel count {channels}")


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as (H,W,3) uint8 RGB: grayscale expanded, RGBA over white, EXIF orientation applied."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        from PIL import Image, ImageOps

        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode == "P":
                im = im.convert("RGBA")
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr16 = np.asarray(im).astype(np.float32)
                scale = 257.0 if arr16.max() <= 65535 else arr16.max() / 255.0
                return _to_uint8_rgb((arr16 / scale).clip(0, 255).round().astype(np.uint8))
            elif im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            return _to_uint8_rgb(np.asarray(im))
    except ImportError:  # Pillow missing: OpenCV fallback (no EXIF handling for PNG; JPEG orientation by OpenCV)
        pass
    except Exception as exc:  # PIL.UnidentifiedImageError and friends
        raise VideoReadError(f"cannot decode image {p}: {exc}") from exc
    arr = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise VideoReadError(f"cannot decode image {p}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    return _to_uint8_rgb(arr)


def _check_selection(start: int, stride: int, max_frames: int | None) -> None:
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")


def _list_sequence(path: str) -> list[str]:
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS)]
    else:
        files = [f for f in _glob.glob(path) if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(f)]
    return sorted(files, key=_natural_key)


def _read_sequence(path: str, max_frames: int | None, start: int, stride: int, fps: float | None) -> VideoClip:
    files = _list_sequence(path)
    if not files:
        raise VideoReadError(f"no PNG/JPG frames found in {path!r} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    chosen = files[start::stride]
    if max_frames is not None:
        chosen = chosen[:max_frames]
    if not chosen:
        raise VideoReadError(f"{path!r} has {len(files)} frames; start={start} selects none")
    frames = [read_image(f) for f in chosen]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoReadError(f"frames in {path!r} differ in size: {sorted(shapes)}")
    return VideoClip(np.stack(frames), float(fps if fps is not None else DEFAULT_SEQUENCE_FPS), path)


def _rotate(arr: np.ndarray, degrees: float) -> np.ndarray:
    """Apply a display-matrix rotation (counter-clockwise degrees, FFmpeg convention) to one frame."""
    k = int(round(degrees / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(arr, k=k)) if k else arr


def _read_container(path: str, max_frames: int | None, start: int, stride: int) -> VideoClip:
    import av

    try:
        container = av.open(path)
    except Exception as exc:  # av.error.InvalidDataError, av.FFmpegError, ...
        raise VideoReadError(f"cannot open {path!r} as a video: {exc}") from exc
    frames: list[np.ndarray] = []
    try:
        if not container.streams.video:
            raise VideoReadError(f"{path!r} contains no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        is_gif = stream.codec_context.name == "gif"
        index = 0
        first_pts: int | None = None
        end_pts: int | None = None
        for frame in container.decode(stream):
            if frame.pts is not None:
                first_pts = frame.pts if first_pts is None else first_pts
                dur = getattr(frame, "duration", None) or 0
                end_pts = frame.pts + dur
            if index >= start and (index - start) % stride == 0:
                arr = frame.to_ndarray(format="rgb24")
                rot = getattr(frame, "rotation", 0) or 0
                frames.append(_rotate(arr, rot))
                if max_frames is not None and len(frames) >= max_frames:
                    index += 1
                    break
            index += 1
        fps = _stream_fps(stream, is_gif, index, first_pts, end_pts)
    except VideoReadError:
        raise
    except Exception as exc:
        raise VideoReadError(f"error while decoding {path!r} after {len(frames)} frames: {exc}") from exc
    finally:
        container.close()
    if not frames:
        what = "zero frames" if index == 0 else f"{index} frames; start={start} selects none"
        raise VideoReadError(f"{path!r} decoded to {what}")
    return VideoClip(np.stack(frames), fps, path)


def _stream_fps(stream, is_gif: bool, n: int, first_pts: int | None, end_pts: int | None) -> float:  # noqa: ANN001
    """Frame rate of a decoded stream; for GIFs, frames / total delay (GIF delays are 1/100 s)."""
    if is_gif and n > 0 and first_pts is not None and end_pts is not None and stream.time_base:
        total = (end_pts - first_pts) * stream.time_base
        if total > 0:
            return float(Fraction(n) / total)
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return DEFAULT_SEQUENCE_FPS


def read_video(
    path: str | os.PathLike[str],
    max_frames: int | None = None,
    start: int = 0,
    stride: int = 1,
    fps: float | None = None,
) -> VideoClip:
    """Read a video file, a folder of image frames, or a glob pattern into a `VideoClip`.

    Frames ``start, start+stride, ...`` are kept, at most `max_frames`. `fps` sets the rate of an image sequence
    (default 8); for video files it overrides the stored rate only if given. The returned fps is the source rate
    (not divided by `stride`).
    """
    _check_selection(start, stride, max_frames)
    spath = os.fspath(path)
    if os.path.isdir(spath) or (_is_glob(spath) and not os.path.exists(spath)):
        return _read_sequence(spath, max_frames, start, stride, fps)
    if not os.path.isfile(spath):
        raise FileNotFoundError(f"video not found: {spath}")
    if spath.lower().endswith(IMAGE_EXTENSIONS):  # a single still image -> one-frame clip
        if start > 0:
            raise VideoReadError(f"{spath!r} is a single image; start={start} selects no frame")
        return VideoClip(read_image(spath)[None], float(fps if fps is not None else DEFAULT_SEQUENCE_FPS), spath)
    clip = _read_container(spath, max_frames, start, stride)
    if fps is not None:
        clip.fps = float(fps)
    return clip


# --------------------------------------------------------------------------------------------- writing


def _as_uint8_frames(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    arr = np.asarray(frames) if not isinstance(frames, np.ndarray) else frames
    if arr.ndim == 3:  # (N,H,W) gray
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"frames must be (N,H,W,3) or (N,H,W), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("no frames to write")
    return np.stack([_to_uint8_rgb(f) for f in arr]) if arr.dtype != np.uint8 or arr.shape[-1] != 3 else arr


def _make_even(frames: np.ndarray, mode: str) -> tuple[np.ndarray, str]:
    """yuv420p needs even sizes: pad one edge row/column (mode 'pad') or drop it (mode 'crop')."""
    n, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if not (ph or pw):
        return frames, ""
    if mode == "crop":
        if h - ph < 2 or w - pw < 2:
            raise ValueError(f"frames of {w}x{h} are too small to crop to an even size")
        note = f"cropped {w}x{h} to {w - pw}x{h - ph} (W x H, last row/column) for yuv420p"
        return frames[:, : h - ph, : w - pw], note
    if mode != "pad":
        raise ValueError(f"even must be 'pad' or 'crop', got {mode!r}")
    padded = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return padded, f"padded {w}x{h} to {w + pw}x{h + ph} (W x H, edge pixels repeated) for yuv420p"


def _write_av(path: str, frames: np.ndarray, rate: Fraction, codec: str, crf: int, even: str) -> WriteInfo:
    import av

    frames, note = _make_even(frames, even)
    n, h, w, _ = frames.shape
    options = {"crf": str(crf)}
    if codec == "libvpx-vp9":
        options.update({"b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"})
    else:
        options.update({"preset": "medium"})
    time_base = Fraction(rate.denominator, rate.numerator)
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        for i in range(n):
            vf = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            vf.pts, vf.time_base = i, time_base
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return WriteInfo(path, codec, n, rate, h, w, note)


def _write_gif(path: str, frames: np.ndarray, rate: Fraction) -> WriteInfo:
    from PIL import Image

    # GIF delays are whole 1/100 s: spread rounding so the total length stays n / fps.
    ends = [round(Fraction(100 * (i + 1)) / rate) for i in range(len(frames))]
    delays_cs = [e - s for s, e in zip([0] + ends[:-1], ends)]
    images = [
        Image.fromarray(f).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) for f in frames
    ]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=[10 * d for d in delays_cs], loop=0, disposal=1
    )
    exact = all(d == delays_cs[0] for d in delays_cs)
    note = "" if exact else f"GIF delays are 1/100 s: used {sorted(set(delays_cs))} cs to average {float(rate):g} fps"
    n, h, w, _ = frames.shape
    return WriteInfo(path, "gif", n, rate, h, w, note)


def _write_png_dir(path: str, frames: np.ndarray, rate: Fraction) -> WriteInfo:
    os.makedirs(path, exist_ok=True)
    for i, f in enumerate(frames):
        target = os.path.join(path, f"frame_{i:05d}.png")
        if not cv2.imwrite(target, cv2.cvtColor(f, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {target}")
    n, h, w, _ = frames.shape
    return WriteInfo(path, "png", n, rate, h, w, "PNG folders do not store fps; pass fps= when reading back")


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray | Sequence[np.ndarray],
    fps: float | Fraction,
    crf: int | None = None,
    even: str = "pad",
) -> WriteInfo:
    """Write (N,H,W,3) RGB frames; the format comes from the extension, the frame rate is kept exactly.

    ``.mp4/.mov/.mkv``: H.264 yuv420p (odd sizes: ``even="pad"`` repeats the last row/column, ``"crop"`` drops
    it; reported in ``WriteInfo.note``);
    ``.webm``: VP9 yuv420p; ``.gif``: 256-colour adaptive palette; no extension or an existing folder: PNG
    frames ``frame_00000.png ...``. `crf` is the H.264 (0-51, default 18) or VP9 (0-63, default 24) quality,
    lower = better.
    """
    spath = os.fspath(path)
    arr = _as_uint8_frames(frames)
    rate = fps_fraction(fps)
    ext = os.path.splitext(spath)[1].lower()
    if os.path.isdir(spath) or ext == "" or spath.endswith(("/", os.sep)):
        return _write_png_dir(spath, arr, rate)
    parent = os.path.dirname(spath)
    if parent:
        os.makedirs(parent, exist_ok=True)
    if ext in (".mp4", ".m4v", ".mov", ".mkv"):
        return _write_av(spath, arr, rate, "libx264", 18 if crf is None else crf, even)
    if ext == ".webm":
        return _write_av(spath, arr, rate, "libvpx-vp9", 24 if crf is None else crf, even)
    if ext == ".gif":
        return _write_gif(spath, arr, rate)
    raise ValueError(f"unsupported output extension {ext!r} (use .mp4, .mov, .mkv, .webm, .gif or a folder)")


# --------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class CropInfo:
    """A centre crop of the source followed by a resize.

    Coordinates use the pixel-centre convention of OpenCV's resize: pixel ``i`` covers ``[i-0.5, i+0.5]``.
    A source point ``(x, y)`` maps to ``((x - x0 + 0.5) * scale_x - 0.5, (y - y0 + 0.5) * scale_y - 0.5)``.
    """

    src_height: int
    src_width: int
    x0: int
    y0: int
    crop_width: int
    crop_height: int
    out_height: int
    out_width: int

    @property
    def crop_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in source pixels, x1/y1 exclusive."""
        return (self.x0, self.y0, self.x0 + self.crop_width, self.y0 + self.crop_height)

    @property
    def scale_x(self) -> float:
        return self.out_width / self.crop_width

    @property
    def scale_y(self) -> float:
        return self.out_height / self.crop_height

    def describe(self) -> str:
        x0, y0, x1, y1 = self.crop_box
        cropped = []
        if self.crop_width != self.src_width:
            cropped.append(f"{self.src_width - self.crop_width} px of width (x {x0}..{x1})")
        if self.crop_height != self.src_height:
            cropped.append(f"{self.src_height - self.crop_height} px of height (y {y0}..{y1})")
        crop_txt = "cropped " + " and ".join(cropped) if cropped else "no crop needed"
        return (
            f"source {self.src_width}x{self.src_height} (WxH): {crop_txt} -> {self.crop_width}x{self.crop_height}, "
            f"resized to {self.out_width}x{self.out_height} (scale x{self.scale_x:.4g}, y{self.scale_y:.4g})"
        )

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """Source pixel coords (...,2+) -> output coords; channels after x,y (e.g. confidence) are kept."""
        pts = np.array(points, dtype=np.float64, copy=True)
        if pts.shape[-1] < 2:
            raise ValueError(f"points must have a last dimension >= 2 (x, y), got shape {pts.shape}")
        pts[..., 0] = (pts[..., 0] - self.x0 + 0.5) * self.scale_x - 0.5
        pts[..., 1] = (pts[..., 1] - self.y0 + 0.5) * self.scale_y - 0.5
        return pts

    def unmap_points(self, points: np.ndarray) -> np.ndarray:
        """Inverse of `map_points`: output coords -> source coords."""
        pts = np.array(points, dtype=np.float64, copy=True)
        pts[..., 0] = (pts[..., 0] + 0.5) / self.scale_x - 0.5 + self.x0
        pts[..., 1] = (pts[..., 1] + 0.5) / self.scale_y - 0.5 + self.y0
        return pts


def compute_center_crop(src_height: int, src_width: int, height: int, width: int) -> CropInfo:
    """The centred crop of a (src_height, src_width) image with the aspect ratio width:height, resized to it."""
    if min(src_height, src_width, height, width) < 1:
        raise ValueError("all sizes must be >= 1")
    target = Fraction(width, height)
    if Fraction(src_width, src_height) > target:  # too wide: crop width
        crop_h = src_height
        crop_w = max(1, min(src_width, round(src_height * target)))
    else:  # too tall (or exact): crop height
        crop_w = src_width
        crop_h = max(1, min(src_height, round(src_width / target)))
    x0 = (src_width - crop_w) // 2
    y0 = (src_height - crop_h) // 2
    return CropInfo(src_height, src_width, x0, y0, crop_w, crop_h, height, width)


def apply_crop(array: np.ndarray, info: CropInfo, interpolation: int | None = None) -> np.ndarray:
    """Apply `info` to (N,H,W), (N,H,W,C), (H,W) or (H,W,C) arrays whose H,W match the source.

    Default interpolation: area when shrinking, bicubic when enlarging (nearest for bool/integer label maps
    is chosen by `crop_resize_masks`).
    """
    arr = np.asarray(array)
    batched = arr.ndim == 4 or (arr.ndim == 3 and arr.shape[1:] == (info.src_height, info.src_width))
    frames = arr if batched else arr[None]
    if frames.shape[1:3] != (info.src_height, info.src_width):
        raise ValueError(
            f"array spatial size {frames.shape[1:3]} does not match the crop's source "
            f"({info.src_height}, {info.src_width})"
        )
    x0, y0, x1, y1 = info.crop_box
    cropped = frames[:, y0:y1, x0:x1]
    if interpolation is None:
        shrink = info.out_width <= info.crop_width and info.out_height <= info.crop_height
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    size = (info.out_width, info.out_height)
    if (info.crop_width, info.crop_height) == size:
        out = np.ascontiguousarray(cropped)
    else:
        out = np.stack([_resize(f, size, interpolation) for f in cropped])
    if out.dtype != frames.dtype:
        out = out.astype(frames.dtype)
    return out if batched else out[0]


def _resize(img: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    work = img
    if img.dtype == bool:
        work = img.astype(np.uint8)
    elif img.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        work = img.astype(np.float32)
    out = cv2.resize(np.ascontiguousarray(work), size, interpolation=interpolation)
    if img.ndim == 3 and out.ndim == 2:  # OpenCV drops a trailing 1-channel axis
        out = out[:, :, None]
    if img.dtype == bool:
        return out.astype(bool)
    if out.dtype != img.dtype:
        if np.issubdtype(img.dtype, np.integer):
            info = np.iinfo(img.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        out = out.astype(img.dtype)
    return out


def crop_resize_masks(masks: np.ndarray, info: CropInfo) -> np.ndarray:
    """Same transform for masks (N,H,W) or (H,W): nearest for bool/integer labels, area/linear for float masks."""
    m = np.asarray(masks)
    if m.dtype == bool or np.issubdtype(m.dtype, np.integer):
        return apply_crop(m, info, cv2.INTER_NEAREST)
    shrink = info.out_width <= info.crop_width and info.out_height <= info.crop_height
    return apply_crop(m, info, cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def crop_resize_keypoints(points: np.ndarray, info: CropInfo) -> np.ndarray:
    """Same transform for keypoints (...,2) or (...,3) pixel coordinates (see `CropInfo.map_points`)."""
    return info.map_points(points)


def center_crop_resize(
    frames: np.ndarray, height: int, width: int, interpolation: int | None = None
) -> tuple[np.ndarray, CropInfo]:
    """Centre-crop (N,H,W,C) or (N,H,W) frames to the aspect ratio width:height and resize to (height, width).

    The paper crops UBC/mannequin videos along the width to 2:1 (H:W) and resizes to 512x256 (H x W):
    ``center_crop_resize(frames, 512, 256)``.
    """
    arr = np.asarray(frames)
    if arr.ndim not in (3, 4):
        raise ValueError(f"frames must be (N,H,W,C) or (N,H,W), got shape {arr.shape}")
    info = compute_center_crop(arr.shape[1], arr.shape[2], height, width)
    return apply_crop(arr, info, interpolation), info
