"""The source's sound kept in the output (issue 32): `video_io.AudioSource` through `VideoWriter`, trimmed to the
frames written, re-encoded for the container; GIF / PNG output or a failure: a silent video and one line saying why.

Sources are tiny videos with a tone made here with PyAV: silent until `ONSET` s, then a 440 Hz sine, so where the
tone starts in the output shows where the kept span began.
"""

from fractions import Fraction

import av
import numpy as np
import pytest

from m2h_core.video_io import AUDIO_KEPT, AUDIO_NOT_KEPT, AudioSource, VideoWriter, read_video, write_video

from .test_generate import args, files  # noqa: F401 - the tiny model files of the end-to-end tests

FPS, N, SR, ONSET = 12, 24, 16000, 0.5


def write_with_tone(path, frames: np.ndarray, fps: float = FPS, sr: int = SR, onset: float = ONSET,
                    seconds: float | None = None, layout: str = "stereo", start: float = 0.0) -> None:
    """H.264 frames plus an AAC track from `start` s: silence until `onset`, then a 440 Hz tone, to `seconds`."""
    c = av.open(str(path), "w")
    v = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    a = c.add_stream("aac", rate=sr, layout=layout)
    t = start + np.arange(int(sr * ((seconds or len(frames) / fps) - start))) / sr
    wave = np.where(t >= onset, 0.5 * np.sin(2 * np.pi * 440 * t), 0).astype(np.float32)
    chunk = av.AudioFrame.from_ndarray(np.repeat(wave[None], 1 if layout == "mono" else 2, 0), format="fltp",
                                       layout=layout)
    chunk.sample_rate, chunk.pts, chunk.time_base = sr, round(start * sr), Fraction(1, sr)
    c.mux(a.encode(chunk))
    c.mux(a.encode(None))
    for i, f in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        vf.pts, vf.time_base = i, Fraction(1, fps)
        c.mux(v.encode(vf))
    c.mux(v.encode(None))
    c.close()


def frames_of(n: int = N, h: int = 32, w: int = 16) -> np.ndarray:
    return np.stack([np.full((h, w, 3), (10 * i) % 250, np.uint8) for i in range(n)])


def sound(path) -> tuple[np.ndarray, int] | None:
    """The first audio stream of `path` decoded to mono float samples, and its rate; None without one."""
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        a = c.streams.audio[0]
        pieces = [f.to_ndarray().reshape(len(f.layout.channels), -1, order="F" if not f.format.is_planar else "C")[0]
                  for f in c.decode(a)]
        return np.concatenate(pieces).astype(np.float32), a.codec_context.sample_rate


def onset_of(samples: np.ndarray, sr: int) -> float:
    """Time (s) of the first 5 ms window whose RMS is above a tenth of the tone's."""
    win = sr // 200
    rms = np.sqrt(np.convolve(samples ** 2, np.ones(win) / win, mode="valid"))
    return float(np.argmax(rms > 0.035)) / sr


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    write_with_tone(d / "src.mp4", frames_of())
    return d / "src.mp4"


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_the_span_of_the_frames_written_is_kept(source, tmp_path, ext):
    """Frames 3..14 of a 12 fps video: 1 s of sound from 0.25 s, so the tone (from 0.5 s in the source) starts at
    0.25 s in the output; WebM gets Opus at 48 kHz, the others AAC at the source's rate."""
    clip = read_video(source)
    out = tmp_path / f"o{ext}"
    info = write_video(out, clip.frames[3:15], FPS, audio=AudioSource.for_frames(source, 12, FPS, start_frame=3))
    assert info.audio.startswith(AUDIO_KEPT), info.audio
    samples, sr = sound(out)
    assert sr == (48000 if ext == ".webm" else SR)
    assert len(samples) / sr == pytest.approx(1.0, abs=0.07)  # AAC pads to whole 1024-sample frames
    assert onset_of(samples, sr) == pytest.approx(ONSET - 3 / FPS, abs=0.03)
    assert read_video(out).num_frames == 12


def test_a_silent_source_gives_no_audio_stream_and_no_note(tmp_path):
    write_video(tmp_path / "silent.mp4", frames_of(6), FPS)
    info = write_video(tmp_path / "o.mp4", frames_of(6), FPS, audio=AudioSource.for_frames(tmp_path / "silent.mp4",
                                                                                             6, FPS))
    assert info.audio == "" and sound(tmp_path / "o.mp4") is None
    info = write_video(tmp_path / "o.gif", frames_of(6), FPS, audio=AudioSource(str(tmp_path / "silent.mp4")))
    assert info.audio == ""


@pytest.mark.parametrize("out", ["o.gif", "frames"])
def test_formats_without_sound_say_so(source, tmp_path, out):
    info = write_video(tmp_path / out, frames_of(6), FPS, audio=AudioSource.for_frames(source, 6, FPS))
    assert info.audio.startswith(AUDIO_NOT_KEPT) and ".mp4" in info.audio
    assert read_video(tmp_path / out, fps=FPS).num_frames == 6


def test_a_failure_writes_the_video_silent_with_the_reason(source, tmp_path):
    """The span lies after the source's sound ends: the video is still written whole, without an audio stream."""
    with VideoWriter(tmp_path / "o.mp4", FPS, audio=AudioSource(str(source), 50.0, 1.0)) as out:
        out.write(frames_of(6))
    assert out.info.audio.startswith(AUDIO_NOT_KEPT) and "no sound in 50.00-51.00 s" in out.info.audio
    assert sound(tmp_path / "o.mp4") is None
    assert read_video(tmp_path / "o.mp4").num_frames == 6


def test_a_source_whose_sound_starts_late_stays_in_sync(tmp_path):
    """Audio that begins 0.2 s after the first frame: silence is put before it, so the tone stays where it was."""
    src = tmp_path / "late.mp4"
    write_with_tone(src, frames_of(), onset=0.6, layout="mono", start=0.2)
    info = write_video(tmp_path / "o.mp4", frames_of(12), FPS, audio=AudioSource.for_frames(src, 12, FPS))
    samples, sr = sound(tmp_path / "o.mp4")
    assert info.audio.startswith(AUDIO_KEPT)
    assert onset_of(samples, sr) == pytest.approx(0.6, abs=0.03)


def test_m2h_generate_keeps_the_sound_of_the_frames_it_generates(files, tmp_path, capsys):  # noqa: F811
    """`m2h generate --frames 6` on a 12 fps mannequin video with a tone: the output carries 0.5 s of it (and a
    GIF output says in one line that it could not); the same `write_output` serves `m2h batch`'s jobs."""
    from m2h_core.cli import main
    from m2h_core.demo.synthetic import generate_clip

    video = tmp_path / "sound.mp4"
    write_with_tone(video, generate_clip(3, n_frames=10, height=128, width=96, motion="sway").mannequin, onset=0.25)
    for out in ("o.mp4", "o.gif"):
        a = args(files, "--frames", "6", out=tmp_path / out)
        a[a.index("--video") + 1] = str(video)
        assert main(a) == 0
    err = capsys.readouterr().err
    samples, sr = sound(tmp_path / "o.mp4")
    assert len(samples) / sr == pytest.approx(0.5, abs=0.07)
    assert onset_of(samples, sr) == pytest.approx(0.25, abs=0.03)
    assert f"note: {AUDIO_KEPT}" in err and f"note: {AUDIO_NOT_KEPT} GIF output" in err


@pytest.mark.parametrize("make", ["mannequin_to_human", "user_masks"])
def test_the_templates_give_create_video_the_sources_audio(make):
    """In ComfyUI the sound goes Get Video Components -> audio -> Create Video, which trims it to the frames."""
    from workflows import build_workflows as bw

    api = getattr(bw, make)().api()
    comps = next(k for k, n in api.items() if n["class_type"] == "GetVideoComponents"
                 and api[n["inputs"]["video"][0]]["_meta"]["title"] == "Mannequin video")
    create = [n for n in api.values() if n["class_type"] == "CreateVideo"]
    assert len(create) == 1 and create[0]["inputs"]["audio"] == [comps, 1]
