"""Metrics to CSV and TensorBoard always, Weights & Biases when asked.

Keys are ``train/...``, ``eval/...``, ``time/...``; each prefix gets its own CSV file
(``train.csv``, ``eval.csv``, ...) with a ``step`` column. A key first logged later than
the others (a loss that exists only once updates start) adds a column, and earlier rows
get an empty cell there. On resume, rows after the checkpoint's step are dropped so a
resumed run's logs read as if never interrupted.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping


class Logger:
    def __init__(self, run_dir: Path, resume_step: int | None = None, wandb_config: dict | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)
        self._columns: dict[str, list[str]] = {}
        if resume_step is not None:
            for path in self.run_dir.glob("*.csv"):
                self._truncate(path, resume_step)
        self.wandb = None
        if wandb_config is not None:
            import wandb

            self.wandb = wandb.init(dir=str(self.run_dir), config=wandb_config, resume="allow")

    @staticmethod
    def _truncate(path: Path, step: int) -> None:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            return
        keep = [row for row in rows if int(float(row["step"])) <= step]
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            writer.writerows(keep)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        by_prefix: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            prefix = key.split("/", 1)[0]
            by_prefix.setdefault(prefix, {})[key] = float(value)
            self.tensorboard.add_scalar(key, float(value), step)
        for prefix, values in by_prefix.items():
            self._write_csv(prefix, values, step)
        if self.wandb is not None:
            self.wandb.log(dict(metrics), step=step)

    def _write_csv(self, prefix: str, values: dict[str, float], step: int) -> None:
        path = self.run_dir / f"{prefix}.csv"
        if prefix not in self._columns:
            if path.exists() and path.stat().st_size > 0:
                with open(path, newline="") as handle:
                    self._columns[prefix] = next(csv.reader(handle))
            else:
                self._columns[prefix] = ["step", *sorted(values)]
                with open(path, "w", newline="") as handle:
                    csv.writer(handle).writerow(self._columns[prefix])
        columns = self._columns[prefix]
        new = sorted(set(values) - set(columns))
        if new:
            columns = self._columns[prefix] = [*columns, *new]
            self._rewrite(path, columns)
        with open(path, "a", newline="") as handle:
            csv.writer(handle).writerow([step, *[values.get(c, "") for c in columns[1:]]])

    @staticmethod
    def _rewrite(path: Path, columns: list[str]) -> None:
        """Rewrite a CSV file under a wider header (rare: only when a new key appears)."""
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)

    def close(self) -> None:
        self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
