"""`m2h batch` (a whole catalogue) and the new `m2h generate` options, end to end on files.

The model files are tiny ones in the real formats (as tests/test_generate.py); the face detector's score here
depends on the image's brightness, so a black photo has no face while the synthetic photos do. Checked: a job
list mixing good jobs, a corrupt video, a face-less photo and a bad row runs every good job and lists the bad
ones in failed.csv; re-running skips finished jobs; a run killed mid-way and restarted loses no job and redoes
none that had finished; two processes (torchrun, the launcher accelerate's PartialState reads) share the list
without doing any job twice."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from m2h_core.checkpoint import save_checkpoint
from m2h_core.cli import main
from m2h_core.config import tiny
from m2h_core.demo.synthetic import generate_clip
from m2h_core.inference import batch, inputs
from m2h_core.inference.encoders import FrozenEncoders
from m2h_core.models.m2h import M2HModel
from m2h_core.video_io import read_video, write_video

from .test_preprocess_builders import build_dwpose_pair, build_face_pack, build_segformer

ROOT = Path(__file__).resolve().parents[1]
GOOD = ("a", "b", "c", "d")


def brightness_face_detector(path: Path, gain: float = 10.0, bias: float = -2.0) -> None:
    """The tiny SCRFD with a score of sigmoid(gain * mean normalised pixel of the anchor's cell + bias): bright
    photos have faces, a black one has none."""
    m = onnx.load(str(path))
    for init in m.graph.initializer:
        if init.name.startswith("w_score"):
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.full_like(w, gain / w[0].size), init.name))
        elif init.name.startswith("b_score"):
            b = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.full_like(b, bias), init.name))
    onnx.save(m, str(path))


def model_dir(d: Path, constant_label: int | None = None) -> Path:
    build_dwpose_pair(d / "dwpose")
    pack = build_face_pack(d / "insightface" / "models" / "antelopev2")
    brightness_face_detector(pack / "scrfd_10g_bnkps.onnx")
    build_segformer(d / "human_parsing" / "segformer_b2_clothes", constant_label=constant_label)
    return d


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    cfg = tiny()
    torch.manual_seed(0)
    save_checkpoint(M2HModel(cfg), d / "m2h_tiny.safetensors", encoders=FrozenEncoders.random(cfg))
    for i, name in enumerate(GOOD):
        clip = generate_clip(10 + i, n_frames=4, height=128, width=64, motion="sway")
        write_video(d / f"{name}.mp4", clip.mannequin, fps=8)
        np.save(d / f"{name}_masks.npy", clip.clothing_mask)
        Image.fromarray(generate_clip(20 + i, n_frames=1, height=256, width=192).identity_image).save(
            d / f"{name}.png")
    (d / "broken.mp4").write_text("not a video at all")
    Image.fromarray(np.zeros((200, 160, 3), np.uint8)).save(d / "black.png")
    model_dir(d / "models")
    model_dir(d / "models_upper", constant_label=4)  # parses everything as upper clothes: no body parts
    return d


def write_jobs(d: Path, out: str, rows: list[tuple[str, str, str]], extra: str = "") -> Path:
    (d / out).mkdir(exist_ok=True)
    path = d / out / "jobs.csv"
    lines = ["video,identity,output,masks,steps" + (",garment_lock" if extra else "")]
    for video, ident, output in rows:
        masks = video.replace(".mp4", "_masks.npy") if "broken" not in video else ""
        lines.append(f"{video},{ident},{output},{masks},1" + (f",{extra}" if extra else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


def jobs_mixed(d: Path, out: str) -> Path:
    rows = [("../a.mp4", "../a.png", "a.mp4"), ("../broken.mp4", "../b.png", "broken.mp4"),
            ("../b.mp4", "../b.png;../c.png", "b.mp4"), ("../c.mp4", "../black.png", "noface.mp4"),
            ("../c.mp4", "../c.png", "c.mp4"), ("../d.mp4", "../d.png", "d.mp4")]
    path = write_jobs(d, out, rows)
    with open(path, "a") as f:
        f.write(",../a.png,out/nothing.mp4,,1\n")  # a row without a video
    return path


def batch_args(files: Path, jobs: Path, models: str = "models") -> list[str]:
    return ["batch", "--jobs", str(jobs), "--checkpoint", str(files / "m2h_tiny.safetensors"), "--models-dir",
            str(files / models), "--device", "cpu", "--precision", "fp32", "--frames", "3"][:-2]


def failed_rows(jobs: Path) -> dict[int, str]:
    return {int(r["row"]): r["error"] for r in batch.read_failed(jobs.parent / "failed.csv")}


def check_failures(jobs: Path) -> None:
    failed = failed_rows(jobs)
    assert sorted(failed) == [3, 5, 8], failed
    assert "broken.mp4: cannot read it as the mannequin video" in failed[3]
    assert "black.png: no face found" in failed[5]
    assert "row 8: video, identity and output must all be given" in failed[8]


def test_batch_runs_the_good_jobs_lists_the_bad_and_skips_finished_ones(files, capsys):
    jobs = jobs_mixed(files, "run1")
    assert main(batch_args(files, jobs)) == 1  # some jobs failed
    out = capsys.readouterr().out
    for name in GOOD:
        v = read_video(jobs.parent / f"{name}.mp4")
        assert v.num_frames == 4 and (v.height, v.width) == (64, 32)
    assert not (jobs.parent / "broken.mp4").exists() and not (jobs.parent / "noface.mp4").exists()
    check_failures(jobs)
    assert "4 done, 0 already done, 3 failed" in out
    stamps = {n: os.stat(jobs.parent / f"{n}.mp4").st_mtime_ns for n in GOOD}
    assert main(batch_args(files, jobs)) == 1
    out = capsys.readouterr().out
    assert "0 done, 4 already done, 3 failed" in out
    assert stamps == {n: os.stat(jobs.parent / f"{n}.mp4").st_mtime_ns for n in GOOD}  # not redone
    check_failures(jobs)  # the latest run's failures, each once


def test_job_list_errors(files, tmp_path):
    (tmp_path / "j.csv").write_text("video,photo,output\nx.mp4,y.png,z.mp4\n")
    with pytest.raises(inputs.InputError, match=r"missing column\(s\) identity.*header must name video"):
        batch.read_jobs(tmp_path / "j.csv")
    with pytest.raises(inputs.InputError, match="job list not found"):
        batch.read_jobs(tmp_path / "none.csv")
    (tmp_path / "k.csv").write_text("video,identity,output,steps,garment_lock\nx.mp4,y.png;z.png,z.mp4,2,yes\n"
                                    "x.mp4,y.png,z.mp4,2,\nx.mp4,y.png,w.mp4,many,\nx.mp4,y.png,v.mp4,,maybe\n")
    jobs = batch.read_jobs(tmp_path / "k.csv")
    assert jobs[0].error is None and jobs[0].options == {"steps": 2, "garment_lock": True}
    assert jobs[0].identity == [str(tmp_path / "y.png"), str(tmp_path / "z.png")]
    assert "row 3: same output as row 2" in jobs[1].error
    assert "row 4: invalid literal" in jobs[2].error and "expected true/false" in jobs[3].error
    assert [len(batch.shard(list(range(7)), r, 3)) for r in range(3)] == [3, 2, 2]
    assert sorted(j for r in range(3) for j in batch.shard(list(range(7)), r, 3)) == list(range(7))


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def test_a_killed_batch_restarts_without_losing_or_repeating_a_job(files, capsys):
    jobs = jobs_mixed(files, "killed")
    proc = subprocess.Popen([sys.executable, "-m", "m2h_core.cli"] + batch_args(files, jobs), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (jobs.parent / "a.mp4").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    first = proc.communicate()[0]
    finished = {n for n in GOOD if (jobs.parent / f"{n}.mp4").exists()}
    assert "a" in finished and len(finished) < len(GOOD), first  # killed mid-run
    stamps = {n: os.stat(jobs.parent / f"{n}.mp4").st_mtime_ns for n in finished}
    stale = jobs.parent / ".d.partial-999999-abc.mp4"  # what a process killed while writing d.mp4 leaves
    stale.write_bytes(b"half a video")
    assert main(batch_args(files, jobs)) == 1
    second = capsys.readouterr().out
    for n in GOOD:
        assert read_video(jobs.parent / f"{n}.mp4").num_frames == 4  # no job lost
        row = {"a": 2, "b": 4, "c": 6, "d": 7}[n]
        if n in finished:  # none done twice
            assert f"skip (done): row {row}" in second and f"done: row {row} " not in second
        else:
            assert f"done: row {row} -> " in second
    assert stamps == {n: os.stat(jobs.parent / f"{n}.mp4").st_mtime_ns for n in finished}
    assert not stale.exists()
    check_failures(jobs)


def test_two_processes_share_the_job_list(files):
    jobs = jobs_mixed(files, "two")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "m2h_core.cli"] + batch_args(files, jobs)
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    out = res.stdout
    starts = {r: [int(line.split("row ")[1].split(" ")[0]) for line in out.splitlines()
                  if line.startswith(f"[{r}/2] start: ")] for r in (0, 1)}
    assert starts[0] and starts[1], out + res.stderr
    assert not set(starts[0]) & set(starts[1])  # disjoint shards
    assert sorted(starts[0] + starts[1]) == [2, 3, 4, 5, 6, 7]  # every runnable row once (row 8 is malformed)
    for n in GOOD:
        assert read_video(jobs.parent / f"{n}.mp4").num_frames == 4
    check_failures(jobs)  # both processes appended to one failed.csv


# ------------------------------------------------------------------------------------------ m2h generate


def test_generate_with_a_folder_of_photos_garment_lock_and_keep_background(files, capsys):
    me = files / "me"
    me.mkdir(exist_ok=True)
    for i in (1, 2):
        Image.fromarray(generate_clip(20 + i, n_frames=1, height=256, width=192).identity_image).save(me / f"{i}.png")
    common = ["generate", "--video", str(files / "a.mp4"), "--identity", str(me), "--masks", str(files /
              "a_masks.npy"), "--checkpoint", str(files / "m2h_tiny.safetensors"), "--steps", "1", "--models-dir",
              str(files / "models_upper"), "--device", "cpu", "--precision", "fp32"]
    assert main(common + ["--out", str(files / "plain_frames")]) == 0
    assert main(common + ["--out", str(files / "locked_frames"), "--garment-lock", "--keep-background"]) == 0
    err = capsys.readouterr().err
    assert "identity from 2 of 2 photos" in err and "x_id and p_id from" in err
    assert "garment lock + keep background: erode 1, feather 2, poisson seam over 4 px" in err
    plain, locked = read_video(files / "plain_frames", fps=8).frames, read_video(files / "locked_frames", fps=8).frames
    source, _ = inputs.fit_frames(read_video(files / "a.mp4").frames, 64, 32)
    mask, _ = inputs.fit_masks(np.load(files / "a_masks.npy"), 64, 32)
    from m2h_core.preprocess.masks import grow_mask

    region = grow_mask(mask > 0.5, -1)  # this parser finds no body parts, so the whole eroded mask is locked
    assert region.sum() > 100
    src_u8 = inputs.to_uint8(source)
    np.testing.assert_array_equal(locked[region], src_u8[region])
    assert (plain[region] != src_u8[region]).any(-1).mean() > 0.9  # without the lock these are generated


def test_garment_lock_without_a_parsing_model_stops_before_sampling(files, tmp_path, monkeypatch):
    models = tmp_path / "models"
    build_dwpose_pair(models / "dwpose")
    build_face_pack(models / "insightface" / "models" / "antelopev2")
    import m2h_core.inference.generate as gen

    def no_sampling(*a, **k):
        raise AssertionError("sampled without the parsing model the lock needs")

    monkeypatch.setattr(gen, "sample_video", no_sampling)
    a = ["generate", "--video", str(files / "a.mp4"), "--identity", str(files / "a.png"), "--masks",
         str(files / "a_masks.npy"), "--out", str(tmp_path / "o.mp4"), "--checkpoint",
         str(files / "m2h_tiny.safetensors"), "--steps", "1", "--models-dir", str(models), "--device", "cpu",
         "--precision", "fp32"]
    with pytest.raises(FileNotFoundError, match="No human-parsing model found"):
        main(a + ["--garment-lock"])
