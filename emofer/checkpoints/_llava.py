"""What the LLaVA formats share: config pieces, the prompt template, the projector and LLM rules."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from emofer.checkpoints.base import CheckpointError, Rule

log = logging.getLogger(__name__)

NOISE = {"transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path", "auto_map"}

# markers of a chat template (jinja) → the emofer prompt template that renders the same turns
_TEMPLATE_MARKERS = (
    ("<|start_header_id|>", "llama3"),
    ("<|im_start|>", "chatml"),
    ("ASSISTANT:", "vicuna_v1"),
)


def clean(config: dict[str, Any]) -> dict[str, Any]:
    """A transformers sub-config as a small dict that rebuilds it (bookkeeping fields dropped)."""
    return {k: v for k, v in config.items() if k not in NOISE}


def dtype_name(dtype: Any) -> str:
    """A config's dtype (``torch.float16``, ``"float16"`` or None) as the LLM head's ``dtype`` string."""
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return name if name in ("float32", "float16", "bfloat16") else "float32"


def chat_template_of(path: Path) -> str | None:
    """The folder's chat template (``chat_template.jinja``/``.json`` or the tokenizer config's), if any."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        file = path / name
        if file.is_file():
            template = json.loads(file.read_text()).get("chat_template")
            if isinstance(template, str):
                return template
    return None


def prompt_template(path: Path, default: str = "vicuna_v1") -> str:
    """The emofer prompt template matching the folder's chat template (``default`` when it has none)."""
    chat = chat_template_of(path)
    if chat is None:
        log.info("%s has no chat template; using %s (LLaVA-1.5's conversation)", path, default)
        return default
    for marker, name in _TEMPLATE_MARKERS:
        if marker in chat:
            log.info("%s: chat template with %r -> prompt template %s", path, marker, name)
            return name
    raise CheckpointError(
        f"{path}: its chat template matches no emofer prompt template (looked for "
        f"{[m for m, _ in _TEMPLATE_MARKERS]}); set model.prompt.template in a config passed as cfg="
    )


def assemble(
    encoder: dict[str, Any],
    projector: str,
    llm: dict[str, Any],
    template: str,
    base: DictConfig | None,
) -> DictConfig:
    """The experiment config of an imported LLaVA: its own parts, or ``base`` with them put in.

    With a ``base`` preset the encoder and LLM are the checkpoint's (the base's LoRA,
    gradient checkpointing, dtype and attention kept); a Face Info Mining fusion gets the projector
    as its visual branch (its face branch stays at initialisation), any other fusion is
    replaced by the projector.
    """
    from emofer.config import load_config

    if base is None:
        model = {
            "encoder": encoder,
            "face_prior": {"name": "none"},
            "fusion": {"name": projector},
            "llm": llm,
            "prompt": {"template": template},
            "freeze": ["encoder"],
        }
        return load_config({"model": model})
    cfg = OmegaConf.to_container(base, resolve=True)
    node = cfg["model"]
    node["encoder"] = encoder
    old = node.get("llm", {})
    kept = ("lora", "gradient_checkpointing", "trainable", "dtype", "attn_implementation")
    node["llm"] = {**llm, **{k: old[k] for k in kept if k in old}}
    if node.get("fusion", {}).get("name") == "face-info-mining":
        node["fusion"]["visual"] = {"name": projector}
    else:
        node["fusion"] = {"name": projector}
    node.setdefault("prompt", {})["template"] = template
    return load_config(cfg)


def projector_prefix(cfg: DictConfig) -> str:
    """Where the projector lives in the emofer model: the fusion, or Face Info Mining's visual branch."""
    return "fusion.visual.proj" if cfg.fusion.name == "face-info-mining" else "fusion.proj"


def fills(cfg: DictConfig) -> list[str]:
    """The parts an imported LLaVA fills completely: encoder, projector, LLM."""
    return ["encoder.", projector_prefix(cfg) + ".", "llm."]


def encoder_layer(hidden_state: int, layers: int) -> int:
    """LLaVA's hidden-state index (``-2``; 0 = the embeddings) as the hf-clip encoder's layer index (>= 0)."""
    index = hidden_state + layers if hidden_state < 0 else hidden_state - 1
    if not 0 <= index < layers:
        raise CheckpointError(
            f"vision feature layer {hidden_state} reads no encoder layer of a {layers}-layer tower "
            "(hidden state 0, the embeddings, is not supported)"
        )
    return index


def vision_rules(source_prefix: str, layers: int, kept: int) -> list[Rule]:
    """CLIP tower rules: keys under ``source_prefix`` into the hf-clip encoder, unused layers dropped.

    LLaVA reads the output of encoder layer ``kept`` (:func:`encoder_layer`), so the
    layers after it and the post-layernorm never run; emofer does not build them.
    """
    dropped = "|".join(str(i) for i in range(kept + 1, layers))
    rules = [
        Rule.drop(
            rf"{source_prefix}(?:vision_model\.)?post_layernorm\..*",
            "CLIP's post-layernorm: LLaVA reads an encoder layer's hidden state, never the pooled output",
        ),
        Rule.drop(rf"{source_prefix}(?:vision_model\.)?embeddings\.position_ids", "a constant buffer"),
        Rule.drop(rf"{source_prefix}(?:vision_model\.)?head\..*", "SigLIP's pooling head: LLaVA reads hidden states"),
    ]
    if dropped:
        rules.append(
            Rule.drop(
                rf"{source_prefix}(?:vision_model\.)?encoder\.layers\.({dropped})\..*",
                f"vision layers after the one LLaVA reads (layer {kept} of 0..{layers - 1})",
            )
        )
    rules.append(Rule.rename(rf"{source_prefix}(?:vision_model\.)?(.+)", r"encoder.model.\1"))
    return rules
