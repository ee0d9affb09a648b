"""After sampling (beyond the paper): garment lock and keep-the-shop's-background compositing.

The paper regenerates every pixel of the frame (Fig. 2b). Two optional post-steps put the source video's own
pixels back where they are the truth:

- **garment lock**: inside the clothing mask M_c eroded by a few pixels, the final frame takes the mannequin
  video's pixels (the real product: print, colour, logo), the generated pixels elsewhere; never over the generated
  person's body parts (arms in front of the garment, hair over the shoulders), which the caller gives as a mask
  (the parser on the generated frames, or exact masks on synthetic clips).
- **keep background**: outside the generated person's mask (grown a little) and outside the mannequin's own
  silhouette (a mannequin arm or stand the new person does not cover stays generated), the source's pixels.

The seam: the taken region keeps the source pixels exactly; outside it the alpha ramps linearly to 0 over
`feather_px` (never onto protected pixels), and the generated side near the seam is harmonised: `seam="harmonise"`
adds the local source-minus-generated colour offset (a normalised Gaussian average over the taken region's rim)
fading to 0 over `harmonise_px`; `seam="poisson"` instead solves Laplace's equation for that offset over the same
band (Pérez et al. 2003's guided interpolation with the generated frame as guide: the membrane form); `"feather"`
only ramps the alpha. `benchmarks/bench_compositing.py` measured all three; the default is the one it chose.

All functions take float32 (N, H, W, 3) frames in [0, 1] and bool (N, H, W) masks at one size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from ..frames import to_uint8
from ..preprocess.masks import grow_mask

SEAMS = ("feather", "harmonise", "poisson")


@dataclass(frozen=True)
class CompositeSettings:
    """Which post-steps run and their seam sizes in pixels at the frames' size (`for_height` scales them)."""

    garment_lock: bool = False
    keep_background: bool = False
    erode_px: int = 3  # the garment region taken from the source: M_c eroded by this
    feather_px: int = 6  # linear alpha ramp outside the taken region
    harmonise_px: int = 12  # width of the colour-harmonised band of the generated side
    grow_px: int = 4  # keep_background: the generated person (and the mannequin) grown by this
    seam: str = "poisson"

    def __post_init__(self) -> None:
        if self.seam not in SEAMS:
            raise ValueError(f"seam must be one of {', '.join(SEAMS)}, got {self.seam!r}")
        if min(self.erode_px, self.feather_px, self.harmonise_px, self.grow_px) < 0:
            raise ValueError("erode/feather/harmonise/grow pixels must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.garment_lock or self.keep_background

    @classmethod
    def for_height(cls, height: int, garment_lock: bool = False, keep_background: bool = False,
                   seam: str = "poisson") -> CompositeSettings:
        """The defaults are for 512 px high frames (the paper's size); scaled to `height`, with floors measured at
        64 px (bench_compositing: erode 1, feather 2, harmonise 4 gave the best clothing PSNR and seam score)."""
        def s(px: int, lo: int) -> int:
            return max(lo, round(px * height / 512))

        return cls(garment_lock, keep_background, s(3, 1), s(6, 2), s(12, 4), s(4, 1), seam)


# ------------------------------------------------------------------------------------------ mask helpers


def distance_outside(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest `mask` pixel (0 on it); inf when the mask is empty."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)


# ------------------------------------------------------------------------------------------ the seam


def _harmonise_offset(gen: np.ndarray, src: np.ndarray, take: np.ndarray, px: int) -> np.ndarray:
    """Local (source - generated) colour offset from the rim of `take`, spread by a normalised Gaussian."""
    rim = take & ~grow_mask(take, -max(1, px // 2))
    w = rim.astype(np.float32)
    k = 2 * (2 * px) + 1
    num = cv2.GaussianBlur((src - gen) * w[..., None], (k, k), px)
    den = cv2.GaussianBlur(w, (k, k), px)
    return np.where(den[..., None] > 1e-4, num / np.maximum(den, 1e-4)[..., None], 0.0).astype(np.float32)


def _poisson_offset(gen: np.ndarray, src: np.ndarray, take: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Harmonic offset over `band`: (source - generated) on `take`, 0 outside take and band (membrane)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import splu

    h, w = take.shape
    out = np.zeros(gen.shape, np.float32)
    ys, xs = np.nonzero(band)
    if len(ys) == 0:
        return out
    idx = -np.ones((h, w), np.int64)
    idx[ys, xs] = np.arange(len(ys))
    fixed = np.where(take[..., None], src - gen, 0.0)
    rows, cols, vals = [np.arange(len(ys))], [np.arange(len(ys))], [np.full(len(ys), 4.0)]
    rhs = np.zeros((len(ys), gen.shape[-1]), np.float64)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        ny, nx = np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)
        inside = idx[ny, nx] >= 0
        rows.append(np.nonzero(inside)[0])
        cols.append(idx[ny, nx][inside])
        vals.append(np.full(int(inside.sum()), -1.0))
        rhs[~inside] += fixed[ny[~inside], nx[~inside]]
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(len(ys), len(ys))).tocsc()
    out[ys, xs] = splu(a).solve(rhs).astype(np.float32)
    return out


def blend_frame(gen: np.ndarray, src: np.ndarray, take: np.ndarray, protect: np.ndarray, s: CompositeSettings
                ) -> np.ndarray:
    """One frame: `src` exactly on `take`, `gen` exactly on `protect`, a seam between (see module docstring)."""
    take = take & ~protect
    if not take.any():
        return gen.copy()
    dist = distance_outside(take)
    free = ~take & ~protect
    alpha = np.zeros(take.shape, np.float32)
    if s.feather_px > 0:
        alpha = np.where(free, np.clip(1.0 - dist / (s.feather_px + 1), 0.0, 1.0), 0.0).astype(np.float32)
    side = gen
    if s.seam != "feather" and s.harmonise_px > 0:
        band = free & (dist <= s.harmonise_px)
        if s.seam == "harmonise":
            fade = np.clip(1.0 - dist / (s.harmonise_px + 1), 0.0, 1.0) * band
            side = gen + _harmonise_offset(gen, src, take, s.harmonise_px) * fade[..., None]
        else:
            side = gen + _poisson_offset(gen, src, take, band)
    out = alpha[..., None] * src + (1.0 - alpha[..., None]) * side
    out = np.where(take[..., None], src, out)
    out = np.where(protect[..., None], gen, out)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------ the two steps


def _check(gen: np.ndarray, src: np.ndarray, **masks: np.ndarray | None) -> None:
    if gen.shape != src.shape or gen.ndim != 4 or gen.shape[-1] != 3:
        raise ValueError(f"generated frames {gen.shape} and source frames {src.shape} must both be (N, H, W, 3)")
    for name, m in masks.items():
        if m is not None and tuple(m.shape) != tuple(gen.shape[:3]):
            raise ValueError(f"the {name} mask is {tuple(m.shape)}; it must be (N, H, W) = {tuple(gen.shape[:3])}")


def lock_region(clothing: np.ndarray, body: np.ndarray | None, erode_px: int) -> np.ndarray:
    """Where the garment lock takes the source: M_c eroded by `erode_px`, minus the generated body parts
    ((H, W) or (N, H, W))."""
    m = grow_mask(clothing.astype(bool), -erode_px)
    return m & ~body.astype(bool) if body is not None else m


def garment_lock(generated: np.ndarray, source: np.ndarray, clothing: np.ndarray, body: np.ndarray | None,
                 settings: CompositeSettings) -> np.ndarray:
    """Source pixels inside the eroded clothing mask (never over `body`, the generated body parts)."""
    _check(generated, source, clothing=clothing, body=body)
    out = np.empty_like(generated, dtype=np.float32)
    for i in range(len(generated)):
        b = body[i].astype(bool) if body is not None else np.zeros(clothing.shape[1:], bool)
        out[i] = blend_frame(generated[i], source[i], lock_region(clothing[i], b, settings.erode_px), b, settings)
    return out


def background_region(person: np.ndarray, mannequin: np.ndarray | None, grow_px: int) -> np.ndarray:
    """Where keep_background takes the source: outside the generated person and the mannequin, both grown
    ((H, W) or (N, H, W))."""
    keep = ~grow_mask(person.astype(bool), grow_px)
    return keep & ~grow_mask(mannequin.astype(bool), grow_px) if mannequin is not None else keep


def keep_background(generated: np.ndarray, source: np.ndarray, person: np.ndarray, mannequin: np.ndarray | None,
                    settings: CompositeSettings) -> np.ndarray:
    """Source pixels outside the generated person (grown); the mannequin's own pixels stay generated."""
    _check(generated, source, person=person, mannequin=mannequin)
    out = np.empty_like(generated, dtype=np.float32)
    for i in range(len(generated)):
        p = person[i].astype(bool)
        take = background_region(p, None if mannequin is None else mannequin[i], settings.grow_px)
        out[i] = blend_frame(generated[i], source[i], take, p, settings)
    return out


def composite(generated: np.ndarray, source: np.ndarray, settings: CompositeSettings, *,
              clothing: np.ndarray | None = None, body: np.ndarray | None = None, person: np.ndarray | None = None,
              mannequin: np.ndarray | None = None) -> np.ndarray:
    """Background first (it never touches the person), then the garment lock (inside the person)."""
    out = generated.astype(np.float32)
    src = source.astype(np.float32)
    if settings.keep_background:
        if person is None:
            raise ValueError("keep_background needs the generated person's mask")
        out = keep_background(out, src, person, mannequin, settings)
    if settings.garment_lock:
        if clothing is None:
            raise ValueError("garment_lock needs the clothing mask")
        out = garment_lock(out, src, clothing, body, settings)
    return out


# ------------------------------------------------------------------------------------------ measures


def edge_band(mask: np.ndarray, px: int) -> np.ndarray:
    """(N, H, W) bool: pixels within `px` of the mask's edge (either side)."""
    return np.stack([grow_mask(m, px) & ~grow_mask(m, -px) for m in mask.astype(bool)])


def seam_energy(frames: np.ndarray, band: np.ndarray) -> float:
    """Mean squared image gradient (Sobel on luma) over `band`: what a visible seam adds to."""
    tot, n = 0.0, 0
    for f, b in zip(frames, band):
        y = (f.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3) / 8
        gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3) / 8
        tot += float((gx ** 2 + gy ** 2)[b].sum())
        n += int(b.sum())
    return tot / max(n, 1)


def composite_with_parser(generated: np.ndarray, source: np.ndarray, clothing: np.ndarray | None, parser,
                          settings: CompositeSettings, *, mannequin: np.ndarray | None = None
                          ) -> tuple[np.ndarray, str]:
    """What `m2h generate`, the sampler node and M2H Composite run: a human parser (`preprocess.parsing.HumanParser`)
    on the generated frames gives the body parts to protect and the new person; on the source, the mannequin's
    silhouette (keep_background, unless `mannequin` is given) and the garment (when `clothing` is None). Frames
    float (N, H, W, 3) in [0, 1]; returns the frames and a note for the log."""
    from ..preprocess.parsing import BODY_GROUPS

    gen = parser.parse(to_uint8(generated), fill_holes=False)
    body = np.isin(gen.labels, gen.label_set.ids([g for g in BODY_GROUPS if g != "background"]))
    need_src = (settings.keep_background and mannequin is None) or (settings.garment_lock and clothing is None)
    src = parser.parse(to_uint8(source), fill_holes=clothing is None) if need_src else None  # holes: clothing only
    if mannequin is None and settings.keep_background:
        mannequin = src.person_mask
    if clothing is None and settings.garment_lock:
        clothing = src.clothing_mask
    out = composite(generated, source, settings, clothing=clothing, body=body, person=gen.person_mask,
                    mannequin=mannequin)
    done = [n for n, on in (("garment lock", settings.garment_lock), ("keep background", settings.keep_background))
            if on]
    return out, (f"{' + '.join(done)}: erode {settings.erode_px}, feather {settings.feather_px}, {settings.seam} "
                 f"seam over {settings.harmonise_px} px")


# ------------------------------------------------------------------------------------------ any generator


def match_source(generated: np.ndarray, source: np.ndarray, *masks: np.ndarray | None
                 ) -> tuple[np.ndarray, list[np.ndarray | None], list[str]]:
    """The rule for another generator's frames (M2H Composite, `m2h composite`): the result has the generated
    frames' size and count. Frame i is paired with source frame i; with different counts the first min(N, M) of
    each are used (noted). A source of another size is fitted to the generated size as the pack fits every input
    (`video_io.center_crop_resize`: centre crop to the generated aspect ratio, then resize), which is what a
    generator fed a centre-cropped, resized copy of the source saw; masks (one per frame, or one for all) of the
    source's size follow it, masks already at the generated size are used as they are.
    Returns (source, masks, notes); the generated frames are cut to the count by the caller."""
    from ..video_io import center_crop_resize, compute_center_crop, crop_resize_masks

    n, h, w = generated.shape[:3]
    m, sh, sw = source.shape[:3]
    notes = []
    count = min(n, m)
    if n != m:
        notes.append(f"the generated video has {n} frames and the source {m}: the first {count} of each are "
                     f"composited (frame i with frame i)")
    src = source[:count]
    if (sh, sw) != (h, w):
        src, info = center_crop_resize(src, h, w)
        cut = (info.crop_width, info.crop_height) != (sw, sh)
        crop = f"centre-cropped to {info.crop_width}x{info.crop_height} and " if cut else ""
        notes.append(f"the source ({sw}x{sh}, WxH) was {crop}resized to the generated frames' {w}x{h}")
    out = []
    for k in masks:
        if k is None:
            out.append(None)
            continue
        k = np.asarray(k, np.float32)
        k = k[None] if k.ndim == 2 else k
        if len(k) == 1:
            k = np.repeat(k, count, 0)
        elif len(k) < count:
            raise ValueError(f"a mask sequence has {len(k)} frames for {count} frames: give one per frame or one "
                             "for all")
        k = k[:count]
        if k.shape[1:] != (h, w):
            k = crop_resize_masks(k, compute_center_crop(k.shape[1], k.shape[2], h, w))
        out.append(k > 0.5)
    return src.astype(np.float32), out, notes


def composite_generated(generated: np.ndarray, source: np.ndarray, parser, settings: CompositeSettings, *,
                        lock: np.ndarray | None = None, mannequin: np.ndarray | None = None
                        ) -> tuple[np.ndarray, list[str]]:
    """Garment lock / keep background for frames from any generator (M2H Composite and `m2h composite`): frames
    float (N, H, W, 3) / (M, Hs, Ws, 3) in [0, 1], fitted by `match_source`. `lock`: the lock mask of M2H
    Regenerate Mask (taken as it is, not eroded again); without it the parser finds the garment on the source.
    The parser always runs on the generated frames, so the new person's arms and hair are never pasted over."""
    if not settings.enabled:
        return generated, ["garment_lock and keep_background are both off: the generated frames are returned"]
    if parser is None:
        raise ValueError("garment_lock / keep_background need a human-parsing model (models/human_parsing/) to "
                         "find the generated person's arms and hair")
    src, (lock_m, mann), notes = match_source(generated, source, lock, mannequin)
    gen = np.asarray(generated[:len(src)], np.float32)
    if lock_m is not None:
        settings = replace(settings, erode_px=0)
    out, note = composite_with_parser(gen, src, lock_m, parser, settings, mannequin=mann)
    return out, notes + [note]
