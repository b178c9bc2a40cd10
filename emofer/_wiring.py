"""How :func:`emofer.build_model` connects parts: the config node, the dims each part exposes, named errors.

Every check here names both sides of a connection that cannot be made.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from emofer.config import LOAD_CHECKS
from emofer.contracts import FacePriorOutput
from emofer.encoders import ENCODERS, FACE_PRIORS
from emofer.fusion import FUSIONS
from emofer.fusion.base import Fusion, FusionSpec, PriorSpec
from emofer.llm import LLM_HEADS
from emofer.registry import accepted_arguments

PARTS = ("encoder", "face_prior", "fusion", "llm")


class WiringError(ValueError):
    """Two parts of a model that cannot be connected (dims, a missing prior, ...)."""


def model_node(cfg: Any) -> tuple[DictConfig, list[str]]:
    """The validated ``model`` node of an experiment config (or of the node itself) and its custom imports."""
    from emofer.config import import_custom, validate

    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    imports: list[str] = []
    if "model" in node:
        imports = list(node.get("custom_imports") or [])
        node = node.model
    import_custom(imports)
    return validate({"model": OmegaConf.to_container(node, resolve=True)}).model, imports


def check_component_types(cfg: DictConfig) -> None:
    """The model's component arguments checked against their builders' annotations, at load time."""
    model = cfg.model
    for key, registry in (("encoder", ENCODERS), ("face_prior", FACE_PRIORS), ("fusion", FUSIONS), ("llm", LLM_HEADS)):
        registry.check_types(model[key], f"model.{key}")


LOAD_CHECKS.append(check_component_types)


def expect_part(part: Any, base: type, kind: str, name: str) -> Any:
    """``part`` itself, when it is a ``base`` (the contract neighbours are wired from); else a named error."""
    if not isinstance(part, base):
        raise WiringError(
            f"{kind} {name!r} built a {type(part).__name__}, not a {base.__name__}: subclass "
            f"{base.__module__}.{base.__name__} so its dims can be read (see docs/registries.md)"
        )
    return part


def llm_overrides(cfg: DictConfig) -> dict[str, Any]:
    """What the LLM head takes from elsewhere in the config: prompt template and system, classes."""
    names, _, _ = accepted_arguments(LLM_HEADS.get(cfg.llm.name))
    overrides: dict[str, Any] = {}
    for key, value in (("template", cfg.prompt.template), ("system", cfg.prompt.system)):
        if key in cfg.llm:
            raise WiringError(f"set the prompt {key} with model.prompt.{key}, not model.llm.{key}")
        if key in names:
            overrides[key] = value
    if "classes" in names and "classes" not in cfg.llm:
        overrides["classes"] = list(cfg.classes)
    return overrides


def check_agr(cfg: DictConfig, prior: Any) -> None:
    """The age-gender-race prompt needs a prior predicting age, gender and race (unless from ground truth)."""
    prompt = cfg.prompt
    if not prompt.agr or prompt.agr_source != "predicted":
        return
    if prior is None:
        raise WiringError(
            "prompt.agr is on with agr_source 'predicted', but face_prior is 'none': the age-gender-race "
            "sentence needs a face prior's predictions (set model.face_prior, or prompt.agr_source=ground_truth)"
        )
    lacking = [k for k in ("age", "gender", "race") if k not in prior.attribute_labels]
    if lacking:
        raise WiringError(
            f"prompt.agr needs age, gender and race predictions; face prior {cfg.face_prior.name!r} lacks {lacking}"
        )


def fusion_spec(cfg: DictConfig, encoder: nn.Module, prior: Any, llm: nn.Module) -> FusionSpec:
    """The dims the fusion is wired from, read off the built encoder, prior and LLM head."""
    fusion_name = cfg.fusion.name
    if getattr(FUSIONS.get(fusion_name), "requires_prior", False) and prior is None:
        raise WiringError(
            f"fusion {fusion_name!r} needs a face prior, but face_prior is 'none'; "
            "set model.face_prior or choose a fusion without one"
        )
    prior_spec = None
    if prior is not None:
        prior_spec = PriorSpec(
            global_dim=prior.global_dim,
            local_dim=prior.local_dim,
            num_local=prior.num_local,
            num_task_tokens=prior.num_task_tokens,
            task_token_dim=prior.task_token_dim,
        )
    return FusionSpec(
        visual_dim=encoder.embed_dim,
        num_visual_tokens=encoder.num_tokens,
        out_dim=llm.hidden_size,
        prior=prior_spec,
        text_dim=llm.text_dim,
        encoder_name=cfg.encoder.name,
        prior_name=cfg.face_prior.name,
        llm_name=cfg.llm.name,
    )


def build_fusion(cfg: DictConfig, spec: FusionSpec) -> nn.Module:
    """Builds the fusion from ``spec`` and checks its output width against the LLM head's."""
    name = cfg.fusion.name
    try:
        fusion = FUSIONS.build(cfg.fusion, spec=spec)
    except ValueError as err:
        raise WiringError(
            f"fusion {name!r} cannot be wired to encoder {spec.encoder_name!r} (embed_dim {spec.visual_dim}, "
            f"{spec.num_visual_tokens} tokens), face prior {spec.prior_name!r} and LLM head {spec.llm_name!r} "
            f"(hidden_size {spec.out_dim}): {err}"
        ) from err
    expect_part(fusion, Fusion, "fusion", name)
    width = probe_width(fusion, spec)
    if width != spec.out_dim:
        raise WiringError(
            f"fusion {name!r} outputs tokens of width {width}, but LLM head {spec.llm_name!r} "
            f"reads width {spec.out_dim}"
        )
    return fusion


def probe_width(fusion: nn.Module, spec: FusionSpec) -> int:
    """The width of the fusion's output tokens, from a forward on meta tensors (shapes only, no compute)."""
    weight = next((p for p in fusion.parameters() if p.is_floating_point()), None)
    dtype = weight.dtype if weight is not None else torch.float32

    def meta(*shape: int) -> torch.Tensor:
        return torch.zeros(*shape, dtype=dtype, device="meta")

    priors = None
    if spec.prior is not None:
        p = spec.prior
        priors = FacePriorOutput(
            global_feat=meta(1, p.global_dim),
            local_feat=meta(1, p.num_local, p.local_dim),
            landmarks=meta(1, p.num_local, 2),
            task_tokens=meta(1, p.num_task_tokens, p.task_token_dim) if p.num_task_tokens else None,
        )
    text = None
    if spec.text_dim is not None:
        text = (meta(1, 4, spec.text_dim), torch.ones(1, 4, dtype=torch.bool, device="meta"))
    state = {
        k: torch.empty_like(v, device="meta")
        for k, v in itertools.chain(fusion.named_parameters(), fusion.named_buffers())
    }
    visual = meta(1, spec.num_visual_tokens, spec.visual_dim)
    return int(torch.func.functional_call(fusion, state, (visual, priors, text)).shape[-1])


def check_classes(names: Any) -> None:
    """``model.classes``: a non-empty list of distinct canonical expression names (the labels the
    model is trained and scored on; a typo would otherwise be a class no sample ever has)."""
    from emofer.labels import CANONICAL

    names = list(names)
    unknown = [n for n in names if n not in CANONICAL]
    if not names or unknown or len(set(names)) != len(names):
        what = f"unknown label(s) {unknown}" if unknown else "no label" if not names else "a repeated label"
        raise WiringError(f"model.classes {names} has {what}; expected distinct names of {list(CANONICAL)}")


def check_freeze(names: Any) -> None:
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        raise WiringError(f"freeze lists unknown part(s) {unknown}; parts are {list(PARTS)}")
