"""PEFT LoRA adapters as models: a source of factor pairs and dense deltas, not of dense tensors.

A PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``) holds, for each module it
adapts, two thin factors ``lora_A`` (r × in) and ``lora_B`` (out × r) whose scaled product is the
module's delta; and, for ``modules_to_save`` (and the ``base_layer`` copies PEFT saves beside an
adapted embedding), whole tensors that *replace* the base's. Kinship reads both exactly
(``kinmerge.scan.adapters``): factors through the low-rank identities of ``kinmerge.lowrank``, whole
tensors as deltas against the base. A module the adapter does not touch has a zero delta.

Only what is a pure ``W + s·B·A`` (plus replaced tensors) is read. DoRA's magnitude vectors,
LoRA biases, IA³, prompt tuning and the other PEFT kinds change the model in other ways; they
are refused by name, never approximated.

This module only reads files and checks them: it knows the layout and the scaling rules
(``lora_alpha / r``, ``/ √r`` with ``use_rslora``, per-module ``rank_pattern`` and
``alpha_pattern``, ``fan_in_fan_out``), not the math.

Example:
    >>> with open_adapter("adapters/math") as ad:                 # doctest: +SKIP
    ...     m = ad.modules["model.layers.0.self_attn.q_proj.weight"]
    ...     print(m.rank, m.scale, ad.base_ref)
    16 2.0 meta-llama/Llama-2-7b-hf
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kinmerge.errors import CorruptFileError, MissingTensorError, ShapeMismatchError, SourceError
from kinmerge.sources.base import ModelSource, ReadBuffer
from kinmerge.sources.config import read_json_object
from kinmerge.sources.safetensors import SafetensorsSource

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "AdapterModule", "LoraSource", "is_adapter_folder", "open_adapter"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."  # PEFT's wrapper prefix on every saved key
# Config fields that make an adapter something other than W + s·B·A, refused by name when set.
_UNSUPPORTED_FIELDS = {
    "use_dora": "DoRA (use_dora: magnitude vectors rescale W + s·B·A column by column)",
    "lora_bias": "LoRA biases (lora_bias)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "target_parameters": "LoRA on bare parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "layer_replication": "layer replication (layer_replication)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens: the delta applies only after them)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
}
_FACTOR = re.compile(r"^(?P<mod>.+)\.(?:lora_(?P<ab>[AB])\.weight|lora_embedding_(?P<eab>[AB]))$")
_LORA_OTHER = re.compile(r"\.lora_[A-Za-z_]+(\.|$)")


@dataclass(frozen=True)
class AdapterModule:
    """What an adapter holds for one base tensor.

    Attributes:
        tensor: the base tensor's name (``model.layers.0.self_attn.q_proj.weight``).
        a_key, b_key: the factors' names in the adapter file (None when only ``dense_key``).
        transposed: the base stores the transpose of ``B·A`` (embeddings, ``fan_in_fan_out``).
        rank: the factors' rank; scale: ``s`` of ``ΔW = s·B·A``.
        dense_key: a whole tensor replacing the base's (``modules_to_save``, ``base_layer``).
    """

    tensor: str
    a_key: str | None = None
    b_key: str | None = None
    transposed: bool = False
    rank: int = 0
    scale: float = 0.0
    dense_key: str | None = None


def is_adapter_folder(path: Path) -> bool:
    """A folder holding ``adapter_config.json`` and no full model weights of its own."""
    if not path.is_dir() or not (path / ADAPTER_CONFIG).is_file():
        return False
    return not ((path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists())


class LoraSource(ModelSource):
    """A PEFT LoRA adapter folder: its raw tensors (``tensors``, ``read_range``) and what they mean
    for the base (``modules``: base tensor name -> :class:`AdapterModule`).

    Raises (on opening):
        SourceError: not a LoRA adapter kinmerge reads exactly (names the kind), or no
            ``adapter_model.safetensors``.
        CorruptFileError: a bad config field, a truncated weights file, factors whose ranks
            disagree (A with B, or with the config), or an unknown LoRA tensor.
    """

    concurrent_reads = True

    def __init__(self, ref: str, path: Path):
        weights = path / ADAPTER_WEIGHTS
        super().__init__(ref, path, [weights])
        self.adapter_config = _read_adapter_config(path / ADAPTER_CONFIG)
        if not weights.exists():
            bins = sorted(p.name for p in path.glob("adapter_model*.bin"))
            extra = f" (found {bins[0]}: re-save it with save_pretrained(safe_serialization=True))" if bins else ""
            raise SourceError(f"{path}: a PEFT adapter folder without {ADAPTER_WEIGHTS}{extra}")
        self._file = SafetensorsSource(ref, path, [weights])
        self.tensors = self._file.tensors
        self.modules = _modules(weights, self.adapter_config, self._file)

    @property
    def base_ref(self) -> str | None:
        """``base_model_name_or_path`` from the config: the base the adapter was trained on."""
        v = self.adapter_config.get("base_model_name_or_path")
        return v if isinstance(v, str) and v.strip() else None

    def content_id(self) -> str:
        """The adapter's content id: its weights and ``adapter_config.json`` (the scaling, the
        targets and the base it names change what it does), plus any tokenizer beside them."""
        from kinmerge.sources.content_ids import content_id_of_files, identity_files

        return content_id_of_files([*identity_files(self.path, self.files), self.path / ADAPTER_CONFIG])

    def read_range(self, name: str, start: int, stop: int, out: np.ndarray | ReadBuffer | None = None) -> np.ndarray:
        raw = self._file.read_range(name, start, stop, out)
        self._count(name, raw.nbytes, start)
        return raw

    def close(self) -> None:
        self._file.close()

    def check_base(self, base: ModelSource, label: str, base_label: str, *, allow_missing: bool = False) -> list[str]:
        """Refuse a base this adapter does not fit, in one line naming the tensor.

        Returns:
            The base tensors the adapter changes but the base lacks, skipped (``allow_missing``).

        Raises:
            MissingTensorError: the adapter targets a tensor the base lacks (another architecture)
                and ``allow_missing`` is False.
            ShapeMismatchError: a delta's shape differs from the base tensor's (another base size).
        """
        trained_on = f" (it was trained on {self.base_ref})" if self.base_ref else ""
        skipped: list[str] = []
        for name, mod in self.modules.items():
            info = base.tensors.get(name)
            if info is None:
                if allow_missing:
                    skipped.append(name)
                    continue
                raise MissingTensorError(
                    f"{label}: the adapter changes '{name}', which the base {base_label} does not have: it is an "
                    f"adapter for another architecture{trained_on} — pass its own base with --base"
                )
            for shape, what in ((self.factor_shape(mod), "B·A"), (self._dense_shape(mod), "its saved copy")):
                if shape is not None and tuple(shape) != tuple(info.shape):
                    raise ShapeMismatchError(
                        f"{label}: '{name}' is {list(shape)} in the adapter ({what}) but {list(info.shape)} in the "
                        f"base {base_label}: the adapter was made for another base{trained_on} — pass that base "
                        "with --base"
                    )
        return skipped

    def factor_shape(self, mod: AdapterModule) -> tuple[int, int] | None:
        """The shape of ``B·A`` in the base's layout (transposed where the base stores it so)."""
        if mod.a_key is None or mod.b_key is None:
            return None
        out, inn = self.tensors[mod.b_key].shape[0], self.tensors[mod.a_key].shape[1]
        return (inn, out) if mod.transposed else (out, inn)

    def _dense_shape(self, mod: AdapterModule) -> tuple[int, ...] | None:
        return None if mod.dense_key is None else self.tensors[mod.dense_key].shape


def open_adapter(ref: str, path: Path) -> LoraSource:
    """Open the PEFT LoRA adapter folder ``path`` (given as ``ref``); see :class:`LoraSource`."""
    return LoraSource(ref, path)


def _read_adapter_config(cfg: Path) -> dict[str, Any]:
    data = read_json_object(cfg, "an adapter config")
    kind = data.get("peft_type")
    if kind != "LORA":
        raise SourceError(
            f"{cfg.parent}: a PEFT {kind or 'adapter of unknown type'} adapter (peft_type {kind!r}); kinmerge reads "
            "LoRA adapters only — merge it into its base (peft's merge_and_unload) and pass the merged folder"
        )
    for key, what in _UNSUPPORTED_FIELDS.items():
        if data.get(key):
            raise SourceError(
                f"{cfg.parent}: {what} is not a plain W + s·B·A delta, so its kinship is not read from the "
                "factors — merge it into its base (peft's merge_and_unload) and pass the merged folder"
            )
    for key, default in (("r", 8), ("lora_alpha", 8)):
        v = data.setdefault(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise CorruptFileError(f"{cfg}: '{key}' is {v!r}; it must be a positive number")
    for key in ("rank_pattern", "alpha_pattern"):
        v = data.get(key) or {}
        if not isinstance(v, dict) or any(isinstance(x, bool) or not isinstance(x, int | float) or x <= 0
                                          for x in v.values()):
            raise CorruptFileError(f"{cfg}: '{key}' must map module patterns to positive numbers")
        data[key] = v
    for key in ("use_rslora", "fan_in_fan_out"):
        if not isinstance(data.get(key, False), bool):
            raise CorruptFileError(f"{cfg}: '{key}' is {data[key]!r}; it must be true or false")
    return data


def _pattern_value(patterns: Mapping[str, Any], module: str, default: float) -> float:
    """PEFT's rule (``peft.utils.other.get_pattern_key``): the first pattern matching the module
    name's tail (``(.*\\.)?(pattern)$``) wins."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(value)
    return float(default)


def _modules(weights: Path, cfg: Mapping[str, Any], file: SafetensorsSource) -> dict[str, AdapterModule]:
    factors: dict[str, dict[str, str]] = {}
    embedding: set[str] = set()
    dense: dict[str, str] = {}
    for key in file.tensors:
        name = key.removeprefix(_PREFIX)
        m = _FACTOR.match(name)
        if m:
            factors.setdefault(m["mod"], {})[m["ab"] or m["eab"]] = key
            if m["eab"]:
                embedding.add(m["mod"])
            continue
        if name.endswith(".lora_magnitude_vector") or ".lora_magnitude_vector." in name:
            raise SourceError(f"{weights}: '{key}' is a DoRA magnitude vector; DoRA is not a plain W + s·B·A delta — "
                              "merge it into its base (peft's merge_and_unload) and pass the merged folder")
        if _LORA_OTHER.search(name):
            raise CorruptFileError(f"{weights}: unknown LoRA tensor '{key}' (expected lora_A/lora_B.weight or "
                                   "lora_embedding_A/B); kinmerge will not guess what it means")
        dense[name.replace(".base_layer.", ".")] = key  # modules_to_save, or an embedding's saved base copy
    out: dict[str, AdapterModule] = {}
    for mod, pair in sorted(factors.items()):
        tensor = f"{mod}.weight"
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "B" not in pair else "lora_A"
            raise CorruptFileError(f"{weights}: module '{mod}' has no {missing}; the adapter file is incomplete — "
                                   "re-save or re-download it")
        a, b = file.tensors[pair["A"]], file.tensors[pair["B"]]
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise SourceError(f"{weights}: module '{mod}' has {len(a.shape)}-d factors (a convolution LoRA); kinmerge "
                              "reads LoRA on linear and embedding layers only — merge it into its base first")
        ra, rb = a.shape[0], b.shape[1]  # lora_A: r x in, lora_B: out x r (embeddings too)
        if ra != rb:
            raise CorruptFileError(f"{weights}: module '{mod}': lora_A has rank {ra} ({list(a.shape)}) but lora_B has "
                                   f"rank {rb} ({list(b.shape)}); the factors do not multiply — the file is damaged")
        r = _pattern_value(cfg["rank_pattern"], mod, cfg["r"])
        if r != ra:
            raise CorruptFileError(f"{weights}: module '{mod}' has rank {ra} but adapter_config.json says r = {r:g}; "
                                   "the scaling alpha/r would be wrong — fix r or rank_pattern")
        alpha = _pattern_value(cfg["alpha_pattern"], mod, cfg["lora_alpha"])
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[tensor] = AdapterModule(tensor, pair["A"], pair["B"], mod in embedding or bool(cfg.get("fan_in_fan_out")),
                                    int(ra), scale, dense.pop(tensor, None))
    for tensor, key in sorted(dense.items()):
        out[tensor] = AdapterModule(tensor, dense_key=key)
    return out

