"""The tiny model zoo: a Llama-architecture family trained from scratch on CPU.

A zoo is one **base** model pre-trained on a mixture of small synthetic character tasks, and one
**specialist** per task fine-tuned from that base on its task alone, plus the held-out task
data in the builtin evaluator's format. It is a real Hugging Face family (``LlamaForCausalLM``,
a character-level ``PreTrainedTokenizerFast``, fp16 safetensors), so kinship, mergekit merges
and evaluation run on it exactly as on a hub model, in seconds.

Layout of a zoo folder::

    DIR/base/                 config.json, model.safetensors, tokenizer files
    DIR/specialists/<task>/   same, fine-tuned from base on <task>
    DIR/tasks/<task>.jsonl    held-out evaluation split (docs/tasks.md)
    DIR/zoo.json              manifest: models, tasks, build settings, scores, build time

Presets: ``"tiny"`` (hidden 128, 4 layers, ~1M parameters, six tasks; the base trains until
its held-out average exact match reaches ``base_target``) is the shipped demo zoo;
``"micro"`` (hidden 32, 2 layers, three tasks, fixed short schedule) builds in seconds for
tests. Both run the same code.

torch, transformers and tokenizers are imported inside the functions that need them.
"""

from __future__ import annotations

from kinmerge.zoo.handle import MANIFEST, SHIPPED, Zoo, built_zoo_dir, load_zoo, shipped_zoo
from kinmerge.zoo.presets import PRESETS, FineTune, ZooPreset
from kinmerge.zoo.tasks import CHAR_TASKS, CHARACTERS, SPECIAL_TOKENS, TASKS, build_tokenizer, make_examples
from kinmerge.zoo.train import _Sampler, build_zoo

__all__ = [
           "CHARACTERS",
           "CHAR_TASKS",
           "MANIFEST",
           "PRESETS",
           "SHIPPED",
           "SPECIAL_TOKENS",
           "TASKS",
           "FineTune",
           "Zoo",
           "ZooPreset",
           "_Sampler",
           "build_tokenizer",
           "build_zoo",
           "built_zoo_dir",
           "load_zoo",
           "make_examples",
           "shipped_zoo",
]
