"""Make examples/adapters/{add,sort}: LoRA adapters of zoo:base trained with peft (a minute on a CPU).

Run from the repository root: ``.venv/bin/python scripts/make_example_adapters.py``.
"""

from pathlib import Path

from kinmerge.zoo.adapters import train_adapter

if __name__ == "__main__":
    for task in ("add", "sort"):
        print(train_adapter(Path("examples/adapters") / task, task))
