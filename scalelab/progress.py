"""A progress bar over the grid's epochs (tqdm), with the latest test accuracy per input."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class EpochProgress:
    def __init__(self, config, enabled: bool = True):
        self.config = config
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        if self.enabled:
            self.bar = tqdm(desc="training", unit="epoch", file=sys.stderr, dynamic_ncols=True)
        return self

    def update(self, chunk: int, epoch: int, rows: list[dict]) -> None:
        if self.bar is None:
            return
        latest = [r for r in rows if r["epoch"] == epoch + 1]
        by_inputs: dict[str, list[float]] = {}
        for r in latest:
            by_inputs.setdefault(r["inputs"], []).append(r["test_acc"])
        self.bar.set_postfix_str(" ".join(f"{k}:{sum(v) / len(v):.3f}" for k, v in by_inputs.items()), refresh=False)
        self.bar.update(1)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
