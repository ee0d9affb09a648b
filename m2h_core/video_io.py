"""Video and image I/O (PyAV, OpenCV, Pillow) plus the paper's centre-crop/resize geometry.

Long videos at flat memory: `read_video_fitted` / `FrameStream` decode, turn upright, centre-crop and resize one
frame at a time, so only model-size frames are ever kept; `VideoWriter` encodes frames as they come and moves the
finished file into place atomically (with `audio=AudioSource(...)` it carries the source's sound, trimmed to the
frames written). `read_video` / `write_video` are the whole-array forms of the same code.

Frames are always ``uint8`` RGB arrays shaped ``(N, H, W, 3)``. Supported inputs: video files (mp4, webm, mov, mkv,
avi, gif) and image sequences (a folder of PNG/JPG frames or a glob pattern). Outputs: ``.mp4``/``.mov``/``.mkv``
(H.264, yuv420p), ``.webm`` (VP9), ``.gif`` (adaptive palette) or a folder of PNG frames.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

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
    notes: list[str] = field(default_factory=list)  # what the reader handled (rotation, VFR, truncated tail...)

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
    audio: str = ""  # "" (none asked, or a silent source), "audio kept: ..." or "audio not kept: <why>"


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


def _rotate(arr: np.ndarray, degrees: float) -> np.ndarray:
    """Apply a display-matrix rotation (counter-clockwise degrees, FFmpeg convention) to one frame."""
    k = int(round(degrees / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(arr, k=k)) if k else arr


def _stream_fps(stream, is_gif: bool, n: int, first_pts: int | None, end_pts: int | None) -> float:
    """Frame rate of a decoded stream; for GIFs, frames / total delay (GIF delays are 1/100 s)."""
    if is_gif and n > 0 and first_pts is not None and end_pts is not None and stream.time_base:
        total = (end_pts - first_pts) * stream.time_base
        if total > 0:
            return float(Fraction(n) / total)
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return DEFAULT_SEQUENCE_FPS


class FrameStream:
    """Frames of a video file, image folder/glob or single image, decoded one at a time.

    Iterate it once to get (H, W, 3) uint8 RGB frames: at the source size (rotation metadata applied), or, with
    `height`/`width`, centre-cropped to width:height and resized (`CropInfo` of each frame's own size), so only
    model-size frames exist at any time. While and after iterating, `fps`, `crop` (of the first frame), `notes`
    (what was handled: rotation, variable frame rate, size changes, a damaged/truncated tail) and `expected`
    (frames the header promises after selection, None if unknown) describe the stream.
    """

    def __init__(self, path: str | os.PathLike[str], height: int | None = None, width: int | None = None,
                 max_frames: int | None = None, start: int = 0, stride: int = 1, fps: float | None = None,
                 interpolation: int | None = None):
        _check_selection(start, stride, max_frames)
        if (height is None) != (width is None):
            raise ValueError("give both height and width (or neither, for the source size)")
        self.path = os.fspath(path)
        self.size = None if height is None else (int(height), int(width))
        self.max_frames, self.start, self.stride, self.interpolation = max_frames, start, stride, interpolation
        self.fps_override = None if fps is None else float(fps)
        self.fps: float = float(fps) if fps is not None else DEFAULT_SEQUENCE_FPS
        self.crop: CropInfo | None = None
        self.notes: list[str] = []
        self.expected: int | None = None
        self.count = 0
        self._crops: dict[tuple[int, int], CropInfo] = {}
        spath = self.path
        if os.path.isdir(spath) or (_is_glob(spath) and not os.path.exists(spath)):
            self._kind = "sequence"
            self._files = _list_sequence(spath)
            if not self._files:
                raise VideoReadError(f"no PNG/JPG frames found in {spath!r} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
            self.expected = len(self._selected(len(self._files)))
        elif not os.path.isfile(spath):
            raise FileNotFoundError(f"video not found: {spath}")
        elif spath.lower().endswith(IMAGE_EXTENSIONS):
            if start > 0:
                raise VideoReadError(f"{spath!r} is a single image; start={start} selects no frame")
            self._kind, self._files, self.expected = "image", [spath], 1
        else:
            self._kind = "container"

    def _selected(self, n: int) -> range:
        r = range(self.start, n, self.stride)
        return r if self.max_frames is None else r[: self.max_frames]

    def _fit(self, arr: np.ndarray, index: int) -> np.ndarray:
        """Rotated source frame -> output frame; notes a change of source size mid-stream."""
        if self.size is None:
            if self.crop is None:
                self.crop = compute_center_crop(arr.shape[0], arr.shape[1], arr.shape[0], arr.shape[1])
            elif arr.shape[:2] != (self.crop.src_height, self.crop.src_width):  # whole-size output must stack
                self._note_size_change(arr, index, "resized to the first frame's size")
                return _resize(arr, (self.crop.src_width, self.crop.src_height), cv2.INTER_AREA)
            return arr
        key = arr.shape[:2]
        info = self._crops.get(key)
        if info is None:
            info = compute_center_crop(key[0], key[1], *self.size)
            if self.crop is None:
                self.crop = info
            else:
                self._note_size_change(arr, index, "each frame is cropped from its own size")
            self._crops[key] = info
        return apply_crop(arr, info, self.interpolation)

    def _note_size_change(self, arr: np.ndarray, index: int, what: str) -> None:
        if not any(n.startswith("frame size changes") for n in self.notes):
            self.notes.append(f"frame size changes at frame {index}: {self.crop.src_width}x{self.crop.src_height} -> "
                              f"{arr.shape[1]}x{arr.shape[0]} (WxH); {what}")

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.count:
            raise RuntimeError("a FrameStream can be iterated once; open a new one")
        if self._kind == "container":
            yield from self._iter_container()
            return
        chosen = [self._files[i] for i in self._selected(len(self._files))]
        if not chosen:
            raise VideoReadError(f"{self.path!r} has {len(self._files)} frames; start={self.start} selects none")
        for i, f in enumerate(chosen):
            self.count += 1
            yield self._fit(read_image(f), i)

    def _iter_container(self) -> Iterator[np.ndarray]:
        import av

        path = self.path
        try:
            container = av.open(path)
        except Exception as exc:  # av.error.InvalidDataError, av.FFmpegError, ...
            raise VideoReadError(f"cannot open {path!r} as a video: {exc}") from exc
        try:
            if not container.streams.video:
                raise VideoReadError(f"{path!r} contains no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            is_gif = stream.codec_context.name == "gif"
            if stream.frames:
                self.expected = len(self._selected(stream.frames))
            index, first_pts, end_pts, prev_pts = 0, None, None, None
            gaps = [math.inf, 0.0]  # shortest, longest interval between frames (s)
            rotations: set[int] = set()
            complete = True  # stopped by max_frames, not by the end of the data
            tb = stream.time_base
            try:
                for frame in container.decode(stream):
                    if frame.pts is not None:
                        first_pts = frame.pts if first_pts is None else first_pts
                        end_pts = frame.pts + (getattr(frame, "duration", None) or 0)
                        if prev_pts is not None and tb and frame.pts > prev_pts:
                            gap = float((frame.pts - prev_pts) * tb)
                            gaps[0], gaps[1] = min(gaps[0], gap), max(gaps[1], gap)
                        prev_pts = frame.pts
                    if index >= self.start and (index - self.start) % self.stride == 0:
                        rot = round(getattr(frame, "rotation", 0) or 0) % 360
                        rot = rot - 360 if rot > 180 else rot  # -90, 90, 180
                        rotations.add(rot)
                        arr = _rotate(frame.to_ndarray(format="rgb24"), rot)
                        self.count += 1
                        yield self._fit(arr, self.count - 1)
                        if self.max_frames is not None and self.count >= self.max_frames:
                            index += 1
                            complete = False
                            break
                    index += 1
            except VideoReadError:
                raise
            except Exception as exc:
                if self.count == 0:
                    raise VideoReadError(f"error while decoding {path!r} after {index} frames: {exc}") from exc
                self.notes.append(f"decoding stopped at source frame {index} ({exc}): the file's tail is damaged or "
                                  f"truncated; using the {self.count} frames before it")
                complete = False
            self.fps = _stream_fps(stream, is_gif, index, first_pts, end_pts)
            if self.fps_override is not None:
                self.fps = self.fps_override
            if complete:
                self._check_tail(container, stream, index, first_pts, end_pts)
            self._note_timing(gaps, rotations, is_gif)
        finally:
            container.close()
        if self.count == 0:
            what = "zero frames" if index == 0 else f"{index} frames; start={self.start} selects none"
            raise VideoReadError(f"{path!r} decoded to {what}")

    def _check_tail(self, container, stream, n: int, first_pts, end_pts) -> None:
        """A file cut short often decodes without an error: compare with what the header promised."""
        if stream.frames and n < stream.frames:
            self.notes.append(f"the header lists {stream.frames} frames but only {n} could be decoded: the file is "
                              "truncated or its tail is damaged; using the frames that decode")
            return
        if container.duration and end_pts is not None and first_pts is not None and stream.time_base:
            decoded = float((end_pts - first_pts) * stream.time_base)
            header = container.duration / 1e6
            if header - decoded > max(1.5 / max(self.fps, 1e-3), 0.05 * header):
                self.notes.append(f"the header says {header:.2f} s but frames decode only up to {decoded:.2f} s: "
                                  "the file is truncated or its tail is damaged; using the frames that decode")

    def _note_timing(self, gaps: list[float], rotations: set[int], is_gif: bool) -> None:
        lo, hi = gaps
        if not is_gif and math.isfinite(lo) and hi > 1.5 * lo and hi - lo > 1e-3:
            self.notes.append(f"variable frame rate: frame intervals {lo * 1e3:.0f}-{hi * 1e3:.0f} ms; frames are "
                              f"used in order at the average rate {self.fps:.3g} fps")
        turned = sorted(r for r in rotations if r % 360)
        if turned:
            self.notes.append(f"rotation metadata {', '.join(f'{r:+d}' for r in turned)} deg applied "
                              "(frames turned upright before cropping)")


class FittedVideo(NamedTuple):
    """`read_video_fitted`'s result: frames at the model's size and what happened on the way."""

    frames: np.ndarray  # (N, height, width, 3) uint8 RGB
    fps: float
    crop: CropInfo  # the first frame's crop (source size -> model size)
    notes: list[str]


def read_video_fitted(path: str | os.PathLike[str], height: int, width: int, max_frames: int | None = None,
                      fps: float | None = None, start: int = 0, stride: int = 1,
                      interpolation: int | None = None) -> FittedVideo:
    """Read a video (file, image folder, glob or single image) straight to the model's size, frame by frame.

    Each decoded frame is turned upright (rotation metadata), centre-cropped to width:height and resized
    (`center_crop_resize`'s geometry and pixels) before the next one is decoded, so memory is the model-size
    frames plus one source frame. Variable frame rate, rotation, size changes and a damaged or truncated tail
    are handled and described in `notes` (a truncated file gives the frames that decode). `fps` overrides the
    stored rate (sets it for image sequences, default 8).
    """
    stream = FrameStream(path, height, width, max_frames, start, stride, fps, interpolation)
    frames = _collect(stream)
    return FittedVideo(frames, stream.fps, stream.crop, stream.notes)


def _collect(stream: FrameStream) -> np.ndarray:
    """Stack a stream's frames into one array, preallocated when the header gives the count (no second copy)."""
    it = iter(stream)
    first = next(it)
    if stream.expected:
        buf = np.empty((stream.expected, *first.shape), np.uint8)
        buf[0] = first
        n = 1
        extra: list[np.ndarray] = []
        for f in it:
            if n < len(buf):
                buf[n] = f
                n += 1
            else:  # more frames than the header said
                extra.append(f)
        if extra:
            return np.concatenate([buf, np.stack(extra)])
        return buf if n == len(buf) else buf[:n].copy()
    return np.stack([first, *it])


def read_video(
    path: str | os.PathLike[str],
    max_frames: int | None = None,
    start: int = 0,
    stride: int = 1,
    fps: float | None = None,
) -> VideoClip:
    """Read a video file, a folder of image frames, or a glob pattern into a `VideoClip` at the source size.

    Frames ``start, start+stride, ...`` are kept, at most `max_frames`. `fps` sets the rate of an image sequence
    (default 8); for video files it overrides the stored rate only if given. The returned fps is the source rate
    (not divided by `stride`). For the model's input use `read_video_fitted`: it never holds source-size frames.
    """
    stream = FrameStream(path, max_frames=max_frames, start=start, stride=stride, fps=fps)
    frames = _collect(stream)
    return VideoClip(frames, stream.fps, stream.path, stream.notes)


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


_CONTAINER_CODECS = {".mp4": "libx264", ".m4v": "libx264", ".mov": "libx264", ".mkv": "libx264",
                     ".webm": "libvpx-vp9"}
# Generous bytes per pixel of one frame, for the free-space check before compute.
_BYTES_PER_PIXEL = {"libx264": 0.5, "libvpx-vp9": 0.5, "gif": 1.0, "png": 3.0}


def output_kind(path: str | os.PathLike[str]) -> str:
    """The writer a path gets: "libx264", "libvpx-vp9", "gif" or "png" (a folder); ValueError otherwise."""
    spath = os.fspath(path)
    ext = os.path.splitext(spath)[1].lower()
    if os.path.isdir(spath) or ext == "" or spath.endswith(("/", os.sep)):
        return "png"
    if ext in _CONTAINER_CODECS:
        return _CONTAINER_CODECS[ext]
    if ext == ".gif":
        return "gif"
    raise ValueError(f"unsupported output extension {ext!r} (use .mp4, .mov, .mkv, .webm, .gif or a folder)")


def check_output_path(path: str | os.PathLike[str], num_frames: int | None = None,
                      size: tuple[int, int] | None = None) -> str:
    """Fail before any compute when `path` cannot be written: unsupported extension, a file where a PNG folder
    is asked for, a parent that cannot be created or written, or (given the frame count and
    (height, width)) clearly too little free disk space. Creates the parent folder; returns `output_kind`."""
    spath = os.fspath(path).rstrip("/" + os.sep) or os.fspath(path)
    kind = output_kind(path)
    if kind == "png" and os.path.exists(spath) and not os.path.isdir(spath):
        raise ValueError(f"output {spath!r} is a file; PNG frames need a folder (or give a .mp4/.webm/.gif name)")
    parent = os.path.dirname(os.path.abspath(spath))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the output folder {parent!r}: {exc.strerror or exc}") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {parent!r} (no write permission); choose another --out")
    if os.path.exists(spath) and not os.access(spath, os.W_OK):
        raise PermissionError(f"{spath!r} exists and is read-only; remove it or choose another --out")
    if num_frames and size:
        need = int(num_frames * size[0] * size[1] * _BYTES_PER_PIXEL[kind]) + (1 << 20)
        free = shutil.disk_usage(parent).free
        if need > free:
            raise OSError(f"not enough disk space for {spath!r}: about {need / 2**20:.0f} MiB may be needed for "
                          f"{num_frames} frames of {size[1]}x{size[0]}, {free / 2**20:.0f} MiB free")
    return kind


@dataclass(frozen=True)
class AudioSource:
    """The sound to keep in an output: `path`'s first audio stream from `start_s` (seconds after the video's first
    frame), `duration_s` long (None: to its end). `for_frames` gives the span of frames start .. start + n - 1."""

    path: str
    start_s: float = 0.0
    duration_s: float | None = None

    @classmethod
    def for_frames(cls, path: str | os.PathLike[str], num_frames: int, fps: float, start_frame: int = 0
                   ) -> AudioSource:
        return cls(os.fspath(path), start_frame / float(fps), num_frames / float(fps))


AUDIO_CODECS = {"libx264": "aac", "libvpx-vp9": "libopus"}  # what each output container gets (WebM: Opus only)
AUDIO_KEPT, AUDIO_NOT_KEPT = "audio kept:", "audio not kept:"  # how `WriteInfo.audio` begins


def _source_audio_stream(path: str):
    """(open container, its first decodable audio stream or None when no track can be decoded), or None: image
    sequences, files without sound, unreadable files (the video reader reports those)."""
    import av

    if not os.path.isfile(path) or path.lower().endswith(IMAGE_EXTENSIONS):
        return None
    try:
        container = av.open(path)
    except Exception:  # noqa: BLE001 - the video reader reports an unreadable source
        return None
    if not container.streams.audio:
        container.close()
        return None
    return container, next((a for a in container.streams.audio if a.codec_context is not None), None)


def _write_audio(out, audio: AudioSource, codec: str) -> str:
    """Decode `audio`'s span from its file, re-encode it as `codec` (AAC / Opus: every container this writer makes
    carries them; trimming is sample exact, which copying packets is not) into the output container `out`, before
    any video packet. Returns a description; raises on failure (the caller writes the video without sound)."""
    import av

    found = _source_audio_stream(audio.path)
    if found is None:
        return ""
    src, stream = found
    try:
        if stream is None:
            raise ValueError(f"this FFmpeg build cannot decode the sound track of {audio.path!r}")
        vstream = src.streams.video[0] if src.streams.video else None
        t0 = float(vstream.start_time * vstream.time_base) if vstream is not None and vstream.start_time else 0.0
        in_rate = stream.codec_context.sample_rate or stream.rate
        src_layout = stream.codec_context.layout
        layout = "mono" if src_layout is not None and len(src_layout.channels) == 1 else "stereo"
        rate = 48000 if codec == "libopus" else in_rate
        ostream = out.add_stream(codec, rate=rate, layout=layout)
        fmt = ostream.codec_context.format.name
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
        begin = t0 + audio.start_s
        total = None if audio.duration_s is None else round(audio.duration_s * rate)
        pos = 0  # samples written
        step = 1 if ostream.codec_context.format.is_planar else len(av.AudioLayout(layout).channels)
        tol = rate // 50  # 20 ms: timestamps closer than this to the running count are rounding, not gaps

        def emit(arr: np.ndarray) -> None:
            nonlocal pos
            n = arr.shape[-1] // step
            if n <= 0:
                return
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt, layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, pos, Fraction(1, rate)
            out.mux(ostream.encode(frame))
            pos += n

        for decoded in src.decode(stream):
            when = None if decoded.pts is None else float(decoded.pts * decoded.time_base)
            for frame in resampler.resample(decoded):
                arr = frame.to_ndarray()  # planar (C, n); packed (1, n * C)
                first = pos if when is None else round((when - begin) * rate)
                when = None  # following resampled pieces continue from where this one ends
                if first < pos - (0 if pos == 0 else tol):  # before the span's start (or an overlap): cut
                    arr = arr[:, (pos - first) * step:]
                elif first > pos + (0 if pos == 0 else tol):  # starts after the first frame, or a gap: silence
                    gap = first - pos if total is None else min(first - pos, total - pos)
                    emit(np.zeros((arr.shape[0], gap * step), arr.dtype))
                if total is not None:
                    arr = arr[:, : max(total - pos, 0) * step]
                emit(arr)
                if total is not None and pos >= total:
                    break
            if total is not None and pos >= total:
                break
        out.mux(ostream.encode(None))
        if pos == 0:
            raise ValueError(f"{audio.path!r} has no sound in {audio.start_s:.2f}-"
                             f"{audio.start_s + (audio.duration_s or 0):.2f} s")
        return (f"{AUDIO_KEPT} the source's {stream.codec_context.name} as {codec} {rate} Hz {layout}, "
                f"{pos / rate:.2f} s from {audio.start_s:.2f} s")
    finally:
        src.close()


class VideoWriter:
    """Streaming, atomic video writer: ``with VideoWriter(path, fps) as out: out.write(chunk)`` ... .

    Frames go to a hidden temporary name next to `path` as they arrive (H.264 / VP9 frames are encoded at once;
    GIF frames are kept palettised, 1 byte per pixel, until the end; PNG frames are written one by one); the
    finished file (or folder of frames) replaces `path` only when the block ends without an error, so a failed
    or cancelled run leaves no half-written video. Format, quality (`crf`) and odd-size handling (`even`) as in
    `write_video`. `expected_frames` and `size` (height, width) let the constructor check the free space.
    `audio`: the source's sound to keep (`AudioSource`; re-encoded as AAC, Opus in WebM); where it cannot be kept
    (GIF / PNG output, a decoding error) the video is written silent and `info.audio` says why in one line.
    `info` (a `WriteInfo`) describes what was written once closed.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float | Fraction, crf: int | None = None,
                 even: str = "pad", expected_frames: int | None = None, size: tuple[int, int] | None = None,
                 audio: AudioSource | None = None):
        if even not in ("pad", "crop"):
            raise ValueError(f"even must be 'pad' or 'crop', got {even!r}")
        self.rate = fps_fraction(fps)
        self.kind = check_output_path(path, expected_frames, size)
        self.path = os.fspath(path).rstrip("/" + os.sep) if self.kind == "png" else os.fspath(path)
        self.crf = crf if crf is not None else (24 if self.kind == "libvpx-vp9" else 18)
        self.even = even
        parent, name = os.path.split(os.path.abspath(self.path))
        stem, ext = os.path.splitext(name)
        self.tmp = os.path.join(parent, f".{stem}.partial-{os.getpid()}-{id(self):x}{ext}")
        if self.kind == "png":
            os.makedirs(self.tmp)
        else:
            open(self.tmp, "wb").close()  # claims the name and proves the folder is writable, before any compute
        self.num_frames = 0
        self.size: tuple[int, int] | None = None  # (height, width) of the frames given
        self.note = ""
        self.audio, self.audio_note = audio, ""
        if audio is not None and self.kind not in AUDIO_CODECS:
            found = _source_audio_stream(audio.path)
            if found is not None:
                found[0].close()
                self.audio_note = (f"{AUDIO_NOT_KEPT} {self.kind.upper()} output carries no sound (write .mp4, .mov, "
                                   ".mkv or .webm to keep the source's)")
        self.info: WriteInfo | None = None
        self._container = self._stream = None
        self._gif: list = []
        self._closed = False

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frames: np.ndarray | Sequence[np.ndarray]) -> None:
        """Append frames: (N,H,W,3) / (N,H,W) arrays or one (H,W,3) frame; uint8, or float in [0, 1]."""
        if self._closed:
            raise RuntimeError(f"the writer for {self.path!r} is already closed")
        arr = np.asarray(frames)
        if arr.ndim == 3 and arr.shape[-1] in (3, 4) and (self.size is None or arr.shape[:2] == self.size):
            arr = arr[None]  # one colour frame
        if arr.ndim in (3, 4) and arr.shape[0] == 0:
            return
        arr = _as_uint8_frames(arr)
        if self.size is None:
            self.size = arr.shape[1:3]
            self._open(*self.size)
        elif arr.shape[1:3] != self.size:
            raise ValueError(f"frames of {arr.shape[2]}x{arr.shape[1]} after frames of {self.size[1]}x{self.size[0]} "
                             f"(WxH): every frame of {self.path!r} must have the same size")
        if self.kind in ("libx264", "libvpx-vp9"):
            arr, _ = _make_even(arr, self.even)
            self._encode(arr)
        elif self.kind == "gif":
            from PIL import Image

            self._gif += [Image.fromarray(f).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
                          for f in arr]
        else:
            for i, f in enumerate(arr):
                target = os.path.join(self.tmp, f"frame_{self.num_frames + i:05d}.png")
                if not cv2.imwrite(target, cv2.cvtColor(f, cv2.COLOR_RGB2BGR)):
                    raise OSError(f"could not write {target}")
        self.num_frames += len(arr)

    def _open(self, h: int, w: int) -> None:
        if self.kind not in ("libx264", "libvpx-vp9"):
            return
        import av

        self.note = _make_even(np.zeros((1, h, w, 1), np.uint8), self.even)[1]
        eh, ew = (h + h % 2, w + w % 2) if self.even == "pad" else (h - h % 2, w - w % 2)
        if min(eh, ew) < 2:
            raise ValueError(f"frames of {w}x{h} are too small to crop to an even size")
        options = {"crf": str(self.crf)}
        if self.kind == "libvpx-vp9":
            options.update({"b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"})
        else:
            options.update({"preset": "medium"})
        fmt = {".webm": "webm", ".mkv": "matroska", ".mov": "mov"}.get(os.path.splitext(self.path)[1].lower(), "mp4")
        for with_audio in ((True, False) if self.audio is not None else (False,)):
            self._container = av.open(self.tmp, mode="w", format=fmt)
            self._stream = self._container.add_stream(self.kind, rate=self.rate, options=options)
            self._stream.width, self._stream.height, self._stream.pix_fmt = ew, eh, "yuv420p"
            self._time_base = Fraction(self.rate.denominator, self.rate.numerator)
            self._stream.time_base = self._time_base
            self._stream.codec_context.time_base = self._time_base
            if not with_audio:
                break
            try:  # all of the sound first: a failure here costs nothing, the file is started again without it
                self.audio_note = _write_audio(self._container, self.audio, AUDIO_CODECS[self.kind])
                break
            except Exception as exc:  # noqa: BLE001 - any decoder/encoder error: the video is still wanted
                self._container.close()
                self.audio_note = f"{AUDIO_NOT_KEPT} {_first_line(exc)}; the video is silent"

    def _encode(self, frames: np.ndarray) -> None:
        import av

        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts, vf.time_base = self.num_frames + i, self._time_base
            for packet in self._stream.encode(vf):
                self._container.mux(packet)

    def close(self) -> WriteInfo:
        """Finish the file and move it into place; returns what was written."""
        if self._closed:
            if self.info is None:
                raise RuntimeError(f"the writer for {self.path!r} was aborted")
            return self.info
        if self.num_frames == 0:
            self.abort()
            raise ValueError(f"no frames to write to {self.path!r}")
        try:
            h, w = self.size
            if self._container is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
                self._container.close()
                self._container = None
                h, w = self._stream.height, self._stream.width
                codec = self.kind
            elif self.kind == "gif":
                self.note = _save_gif(self.tmp, self._gif, self.rate)
                self._gif = []
                codec = "gif"
            else:
                self.note = "PNG folders do not store fps; pass fps= when reading back"
                codec = "png"
            self._finish()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self.info = WriteInfo(self.path, codec, self.num_frames, self.rate, h, w, self.note, self.audio_note)
        return self.info

    def _finish(self) -> None:
        if self.kind != "png":
            os.replace(self.tmp, self.path)
            return
        os.makedirs(self.path, exist_ok=True)
        for name in sorted(os.listdir(self.tmp)):
            os.replace(os.path.join(self.tmp, name), os.path.join(self.path, name))
        os.rmdir(self.tmp)

    def abort(self) -> None:
        """Drop everything written so far (the target path is left as it was)."""
        self._closed = True
        if self._container is not None:
            with contextlib.suppress(Exception):  # the file is being thrown away
                self._container.close()
            self._container = None
        self._gif = []
        if os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _save_gif(path: str, images: list, rate: Fraction) -> str:
    # GIF delays are whole 1/100 s: spread rounding so the total length stays n / fps.
    ends = [round(Fraction(100 * (i + 1)) / rate) for i in range(len(images))]
    delays_cs = [e - s for s, e in zip([0] + ends[:-1], ends)]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=[10 * d for d in delays_cs], loop=0, disposal=1)
    exact = all(d == delays_cs[0] for d in delays_cs)
    return "" if exact else f"GIF delays are 1/100 s: used {sorted(set(delays_cs))} cs to average {float(rate):g} fps"


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray | Sequence[np.ndarray],
    fps: float | Fraction,
    crf: int | None = None,
    even: str = "pad",
    audio: AudioSource | None = None,
) -> WriteInfo:
    """Write (N,H,W,3) RGB frames; the format comes from the extension, the frame rate is kept exactly.

    ``.mp4/.mov/.mkv``: H.264 yuv420p (odd sizes: ``even="pad"`` repeats the last row/column, ``"crop"`` drops
    it; reported in ``WriteInfo.note``);
    ``.webm``: VP9 yuv420p; ``.gif``: 256-colour adaptive palette; no extension or an existing folder: PNG
    frames ``frame_00000.png ...``. `crf` is the H.264 (0-51, default 18) or VP9 (0-63, default 24) quality,
    lower = better. `audio`: the source's sound to keep (`AudioSource`, see `VideoWriter`). Written through
    `VideoWriter`: a failure leaves no partial file. For video produced in pieces use `VideoWriter` directly.
    """
    arr = _as_uint8_frames(frames)
    with VideoWriter(path, fps, crf=crf, even=even, audio=audio) as out:
        out.write(arr)
    return out.info


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
