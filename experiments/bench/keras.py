"""The Keras reference: ``model.fit`` of one model of the benched shape on the same data, if keras is installed.

Keras runs on JAX (``KERAS_BACKEND=jax`` unless set otherwise): the same XLA as scalelab, and the
one backend this project installs.
"""

from __future__ import annotations

import os

import numpy as np

from experiments.bench.settings import BASE_LR
from experiments.bench.timing import best_time, say

NOT_REQUESTED = {"requested": False, "available": None, "samples_per_s": None}


def keras_bench(settings: dict, dataset) -> dict:
    """``model.fit`` samples/s of one 784-128-10 model per batch size; null if keras is missing."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        say("keras is not installed; its throughput is recorded as null")
        return {"requested": True, "available": False, "samples_per_s": None}

    n = min(settings["train_limit"], len(dataset.train_images))
    x = dataset.train_images[:n].reshape(n, -1).astype(np.float32) / 255
    y = dataset.train_labels[:n].astype(np.int32)
    rates = {}
    for batch_size in settings["batch_sizes"]:
        say(f"keras: batch {batch_size}")
        model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(128, activation="relu"),
                                  keras.layers.Dense(dataset.num_classes, activation="softmax")])  # fmt: skip
        model.compile(optimizer=keras.optimizers.Adam(BASE_LR), loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # compiles
        seconds = best_time(lambda m=model, b=batch_size: m.fit(x, y, batch_size=b, epochs=1, verbose=0),
                            settings["repeats"])  # fmt: skip
        rates[str(batch_size)] = n / seconds
    return {"requested": True, "available": True, "version": keras.__version__, "backend": keras.backend.backend(),
            "samples_per_s": rates, "note": "one model, model.fit of one epoch, no evaluation"}  # fmt: skip
