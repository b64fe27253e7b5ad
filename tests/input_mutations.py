"""Generated damage to model files: safetensors headers, index files and configs (hypothesis).

A mutation is plain data (a tuple naming the operation and its arguments), drawn by a strategy
and applied to the bytes of a real file by ``apply_*``, so a failing case shrinks to a short,
readable tuple and the issue's named cases can be written as ``@example``s.

Which mutated headers are valid is not decided here: the reference reader (the ``safetensors``
package's ``safe_open``) is the oracle. For index files and configs, where no reference reader
exists, each operation says whether it leaves the file valid.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

# Every dtype name the reference reader knows, plus near misses.
KNOWN_DTYPES = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
                "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"]
NEAR_DTYPES = ["f32", "F33", "", "float32", "bf16", "BF16 ", "F8"]
N_TENSORS = 9  # st_family.LLAMA_SHAPES
DELETE = "<delete>"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)


# --------------------------------------------------------------------------- safetensors headers


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, data bytes) of a safetensors file."""
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join(header_text: bytes, data: bytes, pad: bool = True) -> bytes:
    if pad:
        header_text += b" " * (-len(header_text) % 8)
    return struct.pack("<Q", len(header_text)) + header_text + data


def _by_offset(header: dict[str, Any]) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


field_values = {
    "dtype": st.sampled_from(KNOWN_DTYPES + NEAR_DTYPES) | json_values,
    "shape": st.lists(st.integers(-2, 60), max_size=3) | json_values,
    "data_offsets": st.lists(st.integers(-16, 7000), max_size=3) | json_values,
}
tensor = st.integers(0, N_TENSORS - 1)

broken_header_ops = st.one_of(
    st.sampled_from(list(field_values)).flatmap(
        lambda f: st.tuples(st.just("field"), tensor, st.just(f), field_values[f] | st.just(DELETE))),
    st.tuples(st.just("shift"), tensor, st.integers(-16, 16), st.integers(-16, 16)),
    st.tuples(st.just("alias"), tensor, tensor),
    st.tuples(st.just("dtype_swap"), tensor, st.sampled_from(KNOWN_DTYPES)),
    st.tuples(st.just("entry"), tensor, json_values | st.just(DELETE)),
    st.tuples(st.just("add"), st.text(max_size=8), json_values),
    st.tuples(st.just("metadata"), json_values | st.just(DELETE)),
    st.tuples(st.just("toplevel"), json_values.filter(lambda v: not isinstance(v, dict))),
    st.tuples(st.just("dupkey"), tensor),
    st.tuples(st.just("nest"), tensor, st.integers(120, 135)),
    st.tuples(st.just("truncate"), st.floats(0, 0.9999)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("length"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("pad"), st.sampled_from([b"\x00", b"\x00" * 7, b"x", b"\xff\xfe", b"}"])),
)

valid_header_ops = st.one_of(
    st.tuples(st.just("shuffle"), st.integers(0, 2**32)),
    st.tuples(st.just("indent"), st.integers(0, 4)),
    st.tuples(st.just("extra_field"), tensor, st.text(min_size=1, max_size=6).filter(
        lambda k: k not in ("dtype", "shape", "data_offsets")), json_values),
    st.tuples(st.just("metadata"), st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)
              | st.none() | st.just(DELETE)),
    st.tuples(st.just("relayout"), st.integers(0, 2**32)),
    st.tuples(st.just("spaces"), st.integers(1, 40)),
)


def apply_header_op(op: tuple, blob: bytes) -> bytes:
    """The safetensors file ``blob`` with mutation ``op`` applied."""
    header, data = split(blob)
    names = _by_offset(header)
    kind, *args = op
    text: bytes | None = None
    if kind in ("field", "shift", "alias", "dtype_swap", "entry", "dupkey", "nest", "extra_field"):
        name = names[args[0] % len(names)]
        entry = header[name]
        if kind == "field":
            if args[2] == DELETE:
                entry.pop(args[1], None)
            else:
                entry[args[1]] = args[2]
        elif kind == "shift":
            b, e = entry["data_offsets"]
            entry["data_offsets"] = [b + args[1], e + args[2]]
        elif kind == "alias":
            entry["data_offsets"] = list(header[names[args[1] % len(names)]]["data_offsets"])
        elif kind == "dtype_swap":
            entry["dtype"] = args[1]
        elif kind == "entry":
            if args[1] == DELETE:
                del header[name]
            else:
                header[name] = args[1]
        elif kind == "dupkey":
            body = json.dumps(header, separators=(",", ":"))
            one = json.dumps({name: entry}, separators=(",", ":"))[1:-1]
            text = ("{" + one + "," + body[1:]).encode()
        elif kind == "nest":
            k = args[1]
            inner = json.dumps(entry, separators=(",", ":"))[:-1] + ',"x":' + "[" * k + "]" * k + "}"
            rest = {key: v for key, v in header.items() if key != name}
            text = ("{" + json.dumps(name) + ":" + inner + ("," + json.dumps(rest)[1:] if rest else "}")).encode()
        else:  # extra_field
            entry[args[1]] = args[2]
    elif kind == "add":
        header[args[0]] = args[1]
    elif kind == "metadata":
        if args[0] == DELETE:
            header.pop("__metadata__", None)
        else:
            header["__metadata__"] = args[0]
    elif kind == "toplevel":
        text = json.dumps(args[0]).encode()
    elif kind == "truncate":
        return blob[: int(args[0] * len(blob))]
    elif kind == "append":
        return blob + args[0]
    elif kind == "length":
        return struct.pack("<Q", args[0]) + blob[8:]
    elif kind == "flip":
        (n,) = struct.unpack("<Q", blob[:8])
        pos = 8 + args[0] % n
        return blob[:pos] + bytes([args[1]]) + blob[pos + 1 :]
    elif kind == "pad":
        return join(json.dumps(header).encode() + args[0], data, pad=False)
    elif kind == "shuffle":
        rng = random.Random(args[0])
        items = list(header.items())
        rng.shuffle(items)
        header = {k: (dict(rng.sample(list(v.items()), len(v))) if k != "__metadata__" else v) for k, v in items}
    elif kind == "indent":
        text = json.dumps(header, indent=args[0]).encode()
    elif kind == "relayout":  # move the tensors' bytes around, offsets following: the same tensors
        order = names[:]
        random.Random(args[0]).shuffle(order)
        chunks, pos = [], 0
        for name in order:
            b, e = header[name]["data_offsets"]
            chunks.append(data[b:e])
            header[name]["data_offsets"] = [pos, pos + e - b]
            pos += e - b
        data = b"".join(chunks)
    elif kind == "spaces":
        return join(json.dumps(header).encode() + b" " * args[0], data, pad=False)
    else:  # pragma: no cover
        raise ValueError(op)
    return join(text if text is not None else json.dumps(header).encode(), data)


def reference_accepts(path: Path) -> bool:
    """Whether the reference reader (safetensors' Rust core) opens ``path``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "numpy") as fh:
            list(fh.keys())
    except Exception:
        return False
    return True


def has_duplicate_keys(blob: bytes) -> bool:
    """Whether the header's JSON repeats a key in some object (which the reference reader allows)."""
    found = []

    def hook(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            found.append(True)
        return dict(pairs)

    try:
        (n,) = struct.unpack("<Q", blob[:8])
        json.loads(blob[8 : 8 + n].decode("utf-8"), object_pairs_hook=hook)
    except Exception:
        return False
    return bool(found)


# --------------------------------------------------------------------------- index files

_shard_names = ("absolute", "dotdot", "dot", "updown", "other_shard", "missing", "not_st", "backslash", "drive")
index_ops = st.one_of(
    st.tuples(st.just("shard"), tensor, st.sampled_from(_shard_names)),
    st.tuples(st.just("shard_value"), tensor, json_values.filter(lambda v: not isinstance(v, str))),
    st.tuples(st.just("unlist"), tensor),
    st.tuples(st.just("list_extra"), st.text(min_size=1, max_size=8)),
    st.tuples(st.just("weight_map"), json_values.filter(lambda v: not (isinstance(v, dict) and v)) | st.just(DELETE)),
    st.tuples(st.just("toplevel"), json_values.filter(lambda v: not isinstance(v, dict))),
    st.tuples(st.just("dupkey"), tensor),
    st.tuples(st.just("metadata"), json_values.filter(lambda v: not isinstance(v, dict | type(None)))),
    st.tuples(st.just("truncate"), st.floats(0, 0.9999)),
    st.tuples(st.just("nan"),),
)
valid_index_ops = st.one_of(
    st.tuples(st.just("shuffle"), st.integers(0, 2**32)),
    st.tuples(st.just("metadata"), st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
    st.tuples(st.just("extra_key"), st.text(min_size=1, max_size=6).filter(lambda k: k not in ("weight_map",
                                                                                                "metadata")),
              json_values),
    st.tuples(st.just("indent"), st.integers(0, 4)),
)


def apply_index_op(op: tuple, text: str, folder: Path) -> str:
    """The index JSON ``text`` (of the model in ``folder``) with mutation ``op`` applied."""
    data = json.loads(text)
    wm = data["weight_map"]
    names = sorted(wm)
    kind, *args = op
    if kind in ("shard", "shard_value", "unlist", "dupkey"):
        name = names[args[0] % len(names)]
        shard = wm[name]
        if kind == "shard":
            others = sorted(set(wm.values()) - {shard})
            wm[name] = {"absolute": str((folder / shard).resolve()), "dotdot": f"../{folder.name}/{shard}",
                        "dot": f"./{shard}", "updown": f"sub/../{shard}", "other_shard": others[0],
                        "missing": "model-00009-of-00009.safetensors", "not_st": "config.json",
                        "backslash": f"sub\\{shard}", "drive": f"C:{shard}"}[args[1]]
        elif kind == "shard_value":
            wm[name] = args[1]
        elif kind == "unlist":
            del wm[name]
        else:
            body = json.dumps(wm)
            return json.dumps({"metadata": data.get("metadata", {})})[:-1] + ', "weight_map": {' + \
                json.dumps(name) + ": " + json.dumps(shard) + ", " + body[1:] + "}"
    elif kind == "list_extra":
        wm[f"extra.{args[0]}"] = next(iter(wm.values()))
    elif kind == "weight_map":
        if args[0] == DELETE:
            del data["weight_map"]
        else:
            data["weight_map"] = args[0]
    elif kind == "toplevel":
        return json.dumps(args[0])
    elif kind == "metadata":
        data["metadata"] = args[0]
    elif kind == "truncate":
        full = json.dumps(data, separators=(",", ":"))
        return full[: int(args[0] * len(full))]
    elif kind == "nan":
        return json.dumps(data)[:-1] + ', "x": NaN}'
    elif kind == "shuffle":
        items = list(wm.items())
        random.Random(args[0]).shuffle(items)
        data["weight_map"] = dict(items)
    elif kind == "extra_key":
        data[args[0]] = args[1]
    elif kind == "indent":
        return json.dumps(data, indent=args[0])
    else:  # pragma: no cover
        raise ValueError(op)
    return json.dumps(data)


# --------------------------------------------------------------------------- config.json

SIZE_FIELDS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings"]
not_positive_int = json_values.filter(lambda v: v is not None and not (type(v) is int and v > 0))
config_ops = st.one_of(
    st.tuples(st.just("toplevel"), json_values.filter(lambda v: not isinstance(v, dict))),
    st.tuples(st.just("set"), st.sampled_from(SIZE_FIELDS), not_positive_int | st.integers(-5, 0)),
    st.tuples(st.just("set"), st.just("architectures"),
              json_values.filter(lambda v: v is not None and not (isinstance(v, list)
                                                                  and all(isinstance(a, str) for a in v)))),
    st.tuples(st.just("set"), st.just("model_type"), json_values.filter(lambda v: not isinstance(v, str | None))),
    st.tuples(st.just("set"), st.just("tie_word_embeddings"),
              json_values.filter(lambda v: not isinstance(v, bool | None))),
    st.tuples(st.just("set"), st.just("text_config"), json_values.filter(lambda v: not isinstance(v, dict | None))),
    st.tuples(st.just("text_config"), st.sampled_from(SIZE_FIELDS), not_positive_int),
    st.tuples(st.just("dupkey"), st.sampled_from(["vocab_size", "model_type"])),
    st.tuples(st.just("literal"), st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "[" * 130 + "]" * 130])),
    st.tuples(st.just("truncate"), st.floats(0, 0.9999)),
    st.tuples(st.just("bytes"), st.sampled_from([b"\xff\xfe{}", b"{\"a\": \"\\ud800\"}", b""])),
)
valid_config_ops = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(SIZE_FIELDS), st.integers(1, 10**6) | st.none()),
    st.tuples(st.just("set"), st.just("architectures"), st.lists(st.text(max_size=8), max_size=2) | st.none()),
    st.tuples(st.just("set"), st.just("tie_word_embeddings"), st.booleans()),
    st.tuples(st.just("set"), st.text(min_size=1, max_size=6).filter(
        lambda k: k not in [*SIZE_FIELDS, "architectures", "model_type", "tie_word_embeddings", "text_config"]),
        json_values),
    st.tuples(st.just("text_config"), st.sampled_from(SIZE_FIELDS), st.integers(1, 1000)),
    st.tuples(st.just("literal"), st.sampled_from(["[" * 100 + "]" * 100, "-0", "1e300"])),
)


def apply_config_op(op: tuple, text: str) -> bytes:
    """The config JSON ``text`` with mutation ``op`` applied (bytes: some mutations are not UTF-8)."""
    data = json.loads(text)
    kind, *args = op
    if kind == "toplevel":
        return json.dumps(args[0]).encode()
    if kind == "set":
        data[args[0]] = args[1]
    elif kind == "text_config":
        data["text_config"] = {args[0]: args[1]}
    elif kind == "dupkey":
        return (json.dumps(data)[:-1] + f', "{args[0]}": {json.dumps(data.get(args[0], 1))}}}').encode()
    elif kind == "literal":
        return (json.dumps(data)[:-1] + f', "x": {args[0]}}}').encode()
    elif kind == "truncate":
        full = json.dumps(data, separators=(",", ":"))
        return full[: int(args[0] * len(full))].encode()
    elif kind == "bytes":
        return args[0]
    else:  # pragma: no cover
        raise ValueError(op)
    return json.dumps(data).encode()
