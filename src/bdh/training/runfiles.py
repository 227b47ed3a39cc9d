"""The run's files besides checkpoints: metrics.jsonl and metrics.csv (`Metrics`, TensorBoard when it imports),
and the small formatting helpers of its lines."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from pathlib import Path

from ..io import atomic_path, atomic_write_text


CSV_FIELDS = ("step", "split", "loss", "bpb", "lr", "grad_norm", "tokens", "tok_per_s", "elapsed_s")


class Metrics:
    """metrics.jsonl (every record) and metrics.csv (losses), plus TensorBoard when it imports."""

    def __init__(self, out: Path, resume_step: int | None, finish_step: int | None = None):
        """`resume_step`: keep the records up to that step (None: a new run, no records); `finish_step`: also drop
        the records `Trainer.finish` wrote at `resume_step` (its "final" and its sample at the run's last step),
        because the resumed run finishes again."""
        self.jsonl, self.csv = out / "metrics.jsonl", out / "metrics.csv"
        self.failed = False
        kept = []
        if resume_step is not None and self.jsonl.is_file():  # drop what a killed run logged after its checkpoint
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    r = json.loads(line)
                    step = r.get("step", 0)
                    by_finish = finish_step is not None and step == resume_step and (
                        r.get("split") == "final" or ("sample" in r and step == finish_step))
                    if step <= resume_step and not by_finish:
                        kept.append(r)
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in kept))
        with atomic_path(self.csv) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(r for r in kept if "loss" in r)
        self._j = open(self.jsonl, "a", encoding="utf-8")
        self._c = open(self.csv, "a", encoding="utf-8", newline="")
        self._cw = csv.DictWriter(self._c, CSV_FIELDS, extrasaction="ignore")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=None if resume_step is None else resume_step + 1)
        except Exception:  # TensorBoard is optional
            self.tb = None

    def write(self, record: dict) -> None:
        path = self.jsonl
        try:
            self._j.write(json.dumps(record) + "\n")
            self._j.flush()
            if "loss" in record:
                path = self.csv
                self._cw.writerow(record)
                self._c.flush()
        except OSError as e:  # a full disk: one line naming the file and the errno
            self.failed = True
            raise OSError(e.errno, f"could not write {path} ({e.strerror or e})") from e
        if "loss" in record and self.tb is not None:
            for k in ("loss", "bpb", "lr", "grad_norm", "tok_per_s"):
                if record.get(k) is not None:
                    self.tb.add_scalar(f"{record['split']}/{k}", record[k], record["step"])

    def close(self) -> None:
        for f in (self._j, self._c):
            try:
                f.close()
            except OSError:
                if not self.failed:  # after a failed write the error is already on its way
                    raise
        if self.tb is not None:
            self.tb.close()


def peak_rss_mib() -> float | None:
    """Peak resident memory of this process so far (MiB), None where `resource` is unavailable."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20  # Linux: KiB, macOS: bytes


def fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
