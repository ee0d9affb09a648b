"""`m2h batch --jobs jobs.csv`: a whole catalogue with one set of loaded models (beyond the paper, issue 16).

jobs.csv columns: `video`, `identity` (one photo, several separated by `;`, or a folder), `output`; optional
`masks`, `poses` and per-job settings `frames`, `steps`, `cfg`, `seed`, `scheduler`, `context`, `overlap`,
`garment_lock`, `keep_background` (empty = the command's value). Relative paths are relative to the CSV's folder.

- The M2H pipeline and every preprocessing model are loaded once (on the first job that needs them).
- Each output is written atomically (`video_io.VideoWriter`: a temporary name, renamed when complete), so an
  existing output means a finished job: re-running skips it, and a job killed mid-write is simply redone.
- A job that fails (unreadable video, no face, ...) is recorded in `failed.csv` (row, video, identity, output,
  error: the one-line message) and the rest continue. failed.csv holds the latest run's failures.
- Several processes (`accelerate launch --multi_gpu --num_processes N -m m2h_core.cli batch ...`, or torchrun;
  one per device) share the list through accelerate's `PartialState`: process r of N takes rows r, r+N, ...,
  disjoint by construction, so no job is done twice and there is no scheduler to keep alive.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..video_io import AUDIO_NOT_KEPT
from .inputs import InputError

log = logging.getLogger("m2h")

REQUIRED = ("video", "identity", "output")
OPTIONAL = ("masks", "poses", "frames", "steps", "cfg", "seed", "scheduler", "context", "overlap", "garment_lock",
            "keep_background")
_INT = {"frames": "max_frames", "steps": "steps", "seed": "seed", "context": "context_frames",
        "overlap": "context_overlap"}
FAILED_COLUMNS = ("row", "video", "identity", "output", "error")


@dataclass
class Job:
    """One row of jobs.csv, paths resolved; `error` set when the row itself is unusable."""

    row: int  # line number in the CSV (the header is line 1)
    video: str
    identity: list[str]
    output: str
    masks: str | None = None
    poses: str | None = None
    options: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    rank: int = 0
    world: int = 1


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on", "y"):
        return True
    if t in ("0", "false", "no", "off", "n"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def read_jobs(path: str | os.PathLike) -> list[Job]:
    """Parse jobs.csv. A missing file or missing columns raise InputError; a bad row becomes a Job with `error`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"job list not found: {path}")
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: not a readable CSV file ({e}); save it as UTF-8 CSV") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; the header must name video, identity, "
                         f"output (optional: {', '.join(OPTIONAL)})")
    unknown = [c for c in header if c and c not in REQUIRED + OPTIONAL]
    if unknown:
        raise InputError(f"{path}: unknown column(s) {', '.join(unknown)}; known: {', '.join(REQUIRED + OPTIONAL)}")

    def where(p: str) -> str:
        p = p.strip()
        return p if not p or os.path.isabs(p) else os.path.normpath(base / p)

    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(rows):
        r = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        job = Job(i + 2, where(r.get("video", "")), [where(x) for x in r.get("identity", "").split(";") if x.strip()],
                  where(r.get("output", "")), where(r.get("masks", "")) or None, where(r.get("poses", "")) or None)
        try:
            if not job.video or not job.identity or not job.output:
                raise ValueError("video, identity and output must all be given")
            for k, field_name in _INT.items():
                if r.get(k):
                    job.options[field_name] = int(r[k])
            if r.get("cfg"):
                job.options["guidance_scale"] = float(r["cfg"])
            if r.get("scheduler"):
                job.options["scheduler"] = r["scheduler"]
            for k in ("garment_lock", "keep_background"):
                if r.get(k):
                    job.options[k] = _bool(r[k])
            key = os.path.abspath(job.output)
            if key in seen:
                raise ValueError(f"same output as row {seen[key]}; give every job its own output")
            seen[key] = job.row
        except ValueError as e:
            job.error = f"row {job.row}: {e}"
        jobs.append(job)
    return jobs


def shard(jobs: list[Job], rank: int, world: int) -> list[Job]:
    """Process `rank` of `world` takes rows rank, rank + world, ...: disjoint and together complete."""
    return jobs[rank::world]


def is_finished(job: Job) -> bool:
    """Outputs are written atomically, so an existing output (a non-empty folder for PNG frames) is a finished job."""
    p = job.output.rstrip("/" + os.sep)
    return os.path.isfile(p) or (os.path.isdir(p) and any(os.scandir(p)))


def _clean_partials(job: Job) -> None:
    """Remove temporary files a killed run left for this output (only this process owns this job)."""
    parent, name = os.path.split(os.path.abspath(job.output.rstrip("/" + os.sep)))
    stem, ext = os.path.splitext(name)
    for p in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(stem)}.partial-*{glob.escape(ext)}")):
        if os.path.isdir(p):
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        else:
            os.remove(p)


class FailedLog:
    """failed.csv: one row per failed job, appended (one write per row) so processes can share it."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    def reset(self) -> None:
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(FAILED_COLUMNS)

    def add(self, job: Job, message: str) -> None:
        import io

        buf = io.StringIO()
        csv.writer(buf).writerow([job.row, job.video, ";".join(job.identity), job.output, message])
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            f.write(buf.getvalue())
            f.flush()


def read_failed(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def distributed(cpu: bool):
    """accelerate's PartialState (rank / world size from `accelerate launch` or torchrun; 1 process otherwise)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu)


def _message(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def run_batch(jobs_csv: str | os.PathLike, files, req_defaults: dict, settings, *, failed_csv: str | None = None,
              state=None, on_job: Callable[[str, Job], None] | None = None) -> BatchReport:
    """Run this process's shard of jobs.csv. `files`: generate.ModelFiles; `req_defaults`: GenerateRequest fields
    shared by every job (parser, face_pack, search_dirs, garment_lock, keep_background); `settings`:
    SamplerSettings (per-job columns override them); `state`: a PartialState (None = one process)."""
    from ..checkpoint import CheckpointError
    from .generate import GenerateRequest, Preprocessors, generate
    from .sampler import SamplingError

    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    jobs = read_jobs(jobs_csv)
    failed = FailedLog(failed_csv or Path(jobs_csv).with_name("failed.csv"))
    if rank == 0:
        failed.reset()
    if state is not None and world > 1:
        state.wait_for_everyone()  # failed.csv is reset before anyone appends
    report = BatchReport(rank=rank, world=world)
    models = Preprocessors(list(req_defaults.get("search_dirs", [])))
    pipeline = None
    note = on_job or (lambda what, j: log.info("%s row %d: %s", what, j.row, j.output))
    for job in shard(jobs, rank, world):
        if job.error is None and is_finished(job):
            report.skipped.append(job.output)
            note("skip (done)", job)
            continue
        if job.error is None:
            _clean_partials(job)
            if pipeline is None:  # once, and a model that does not load stops the batch (not a job's fault)
                files.check()
                pipeline = files.load()
        try:
            if job.error:
                raise InputError(job.error)
            opts = dict(job.options)
            req = GenerateRequest(job.video, job.identity if len(job.identity) > 1 else job.identity[0], job.output,
                                  job.masks, job.poses, opts.pop("max_frames", None),
                                  **{k: v for k, v in req_defaults.items()
                                     if k not in ("garment_lock", "keep_background")},
                                  garment_lock=opts.pop("garment_lock", req_defaults.get("garment_lock", False)),
                                  keep_background=opts.pop("keep_background", req_defaults.get("keep_background",
                                                                                               False)))
            note("start", job)
            result = generate(files, req, replace(settings, **opts), models=models, pipeline=pipeline)
            report.done.append(job.output)
            note("done", job)
            for lost in [n for n in result.notes if n.startswith(AUDIO_NOT_KEPT)]:
                note(lost, job)
        except (ValueError, OSError, RuntimeError, CheckpointError, SamplingError, ImportError) as e:
            msg = _message(e)
            failed.add(job, msg)
            report.failed.append((job.row, msg))
            note(f"FAILED ({msg})", job)
    if state is not None and world > 1:
        state.wait_for_everyone()
    return report
