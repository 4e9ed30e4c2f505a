"""A progress bar over a run's epochs (tqdm): done of total with an ETA, and the latest test
accuracy per input transform."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


class EpochProgress:
    """``on_epoch`` callback for ``runner.train_plan``: one tick per chunk-epoch."""

    def __init__(self, enabled: bool = True, desc: str = "training"):
        self.enabled, self.desc = enabled, desc
        self.bar: Any = None

    def __enter__(self):
        if self.enabled:
            self.bar = tqdm(desc=self.desc, unit="epoch", file=sys.stderr, dynamic_ncols=True)
        return self

    def __call__(self, done: int, total: int, rows: list[dict[str, Any]]) -> None:
        if self.bar is None:
            return
        if self.bar.total != total:  # known once the run is planned; a resumed run starts part-way
            self.bar.reset(total=total)
            self.bar.update(done - 1)
        epoch = max(r["epoch"] for r in rows)
        by_inputs: dict[str, list[float]] = {}
        for r in rows:
            if r["epoch"] == epoch and "inputs" in r:
                by_inputs.setdefault(r["inputs"], []).append(r["test_acc"])
        self.bar.set_postfix_str(" ".join(f"{k}:{sum(v) / len(v):.3f}" for k, v in by_inputs.items()), refresh=False)
        self.bar.update(1)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
