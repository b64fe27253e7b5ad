"""Tiny random Llama models for merge and evaluation tests (no hub, a few KB each).

``make_family(root)`` writes a base and children that are base + small random deltas, each a
complete Hugging Face folder (config, safetensors, WordLevel tokenizer) that loads with
``AutoModelForCausalLM`` and ``AutoTokenizer``.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(60)]
VOCAB = len(WORDS)  # 64


def tiny_config(hidden: int = 32, layers: int = 2, vocab: int = VOCAB):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )


def tiny_tokenizer():
    """A whitespace WordLevel tokenizer over ``WORDS``, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def save_model(folder: Path, state: dict, config=None) -> Path:
    """Write ``state`` (name -> tensor) as a HF Llama folder with config and tokenizer."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = config or tiny_config()
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    tiny_tokenizer().save_pretrained(folder)
    return folder


def random_state(seed: int = 0, config=None) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config or tiny_config())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_family(root: Path, children: int = 3, scale: float = 0.02, seed: int = 0) -> dict[str, Path]:
    """Write ``base`` and ``child0..`` (base + ``scale`` × N(0,1) deltas) under ``root``."""
    import torch

    base = random_state(seed)
    out = {"base": save_model(Path(root) / "base", base)}
    for i in range(children):
        g = torch.Generator().manual_seed(seed * 1000 + i + 1)
        state = {k: v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in base.items()}
        out[f"child{i}"] = save_model(Path(root) / f"child{i}", state)
    return out


def load_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    state: dict = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state
