"""Fusions built standalone from a FusionSpec and fake face priors: shapes, gradients, switches."""

from __future__ import annotations

import itertools

import pytest
import torch

from emofer.contracts import FacePriorOutput
from emofer.fusion import FUSIONS, FusionSpec, PriorSpec
from emofer.fusion._blocks import QueryTransformer, match_batch
from emofer.fusion.face_info_mining import IBUG68_REGIONS, FaceInfoMining, fourier_encode
from emofer.fusion.llama_vid import patch_grid
from emofer.fusion.temporal import TEMPORAL_STEPS, TemporalStep, build_temporal

B, N, D_VIS, D_OUT, D_TEXT = 2, 16, 24, 40, 20
PRIOR = PriorSpec(global_dim=18, local_dim=12, num_local=68, num_task_tokens=7, task_token_dim=10)
SPEC = FusionSpec(D_VIS, N, D_OUT, prior=PRIOR, text_dim=D_TEXT, encoder_name="fake-enc", prior_name="fake-prior")
SMALL = {"dim": 16, "num_heads": 2, "depth": 1}
TINY_KWARGS = {
    "llama-vid": {**SMALL, "qformer_queries": 4},
    "resampler": {**SMALL, "num_queries": 5},
    "face-info-mining": {**SMALL, "num_queries": 4, "visual": {"name": "llama-vid", **SMALL, "qformer_queries": 4}},
}


def make_priors(batch: int = B, prior: PriorSpec = PRIOR, landmarks: bool = True) -> FacePriorOutput:
    return FacePriorOutput(
        global_feat=torch.randn(batch, prior.global_dim),
        local_feat=torch.randn(batch, prior.num_local, prior.local_dim),
        landmarks=torch.rand(batch, prior.num_local, 2) * 2 - 1 if landmarks else None,
        attributes={"age": torch.randn(batch, 8)},
        task_tokens=torch.randn(batch, prior.num_task_tokens, prior.task_token_dim) if prior.num_task_tokens else None,
    )


def make_text(batch: int = B, length: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, -2:] = False  # padding
    return torch.randn(batch, length, D_TEXT), mask


def build(name: str, spec: FusionSpec = SPEC, **kwargs):
    return FUSIONS.build({"name": name, **TINY_KWARGS.get(name, {}), **kwargs}, spec=spec)


def check_forward_backward(fusion, visual, priors, text) -> torch.Tensor:
    out = fusion(visual, priors, text)
    assert out.shape == (visual.shape[0], fusion.num_output_tokens, fusion.spec.out_dim)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in fusion.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    return out


@pytest.mark.parametrize("name", FUSIONS.names())
@pytest.mark.parametrize("with_text", [True, False])
def test_every_fusion_shapes_and_gradients(name: str, with_text: bool) -> None:
    torch.manual_seed(0)
    fusion = build(name)
    priors = make_priors() if getattr(fusion, "requires_prior", False) else None
    text = make_text() if with_text else None
    if not with_text:
        # Parameters of an unused text path legitimately get no gradient.
        for n, p in fusion.named_parameters():
            if "text_proj" in n:
                p.requires_grad_(False)
    check_forward_backward(fusion, torch.randn(B, N, D_VIS), priors, text)


@pytest.mark.parametrize("name", FUSIONS.names())
def test_every_fusion_is_per_frame(name: str) -> None:
    """Frames flattened into the batch (``[B*T,...]``, text per sample) give each frame's own tokens."""
    torch.manual_seed(0)
    fusion = build(name).eval()
    frames = 3
    visual = torch.randn(B * frames, N, D_VIS)
    priors = make_priors(B * frames) if getattr(fusion, "requires_prior", False) else None
    text = make_text()
    out = fusion(visual, priors, text)
    for row in (0, frames + 1):
        sample = row // frames
        one_text = (text[0][sample : sample + 1], text[1][sample : sample + 1])
        one_priors = None if priors is None else priors.map(lambda t, r=row: t[r : r + 1])
        torch.testing.assert_close(out[row : row + 1], fusion(visual[row : row + 1], one_priors, one_text))


# -- face-info-mining switches --------------------------------------------------------------
SWITCHES = list(itertools.product([True, False], repeat=5))


@pytest.mark.parametrize(("use_global", "use_local", "text_guided", "regions", "use_task_tokens"), SWITCHES)
def test_face_info_mining_every_switch_combination(use_global, use_local, text_guided, regions, use_task_tokens):
    torch.manual_seed(0)
    kwargs = dict(
        use_global=use_global, use_local=use_local, text_guided=text_guided,
        regions=regions, use_task_tokens=use_task_tokens, k_g=3,
    )
    if not (use_global or use_local):
        with pytest.raises(ValueError, match="use_global and use_local are both off"):
            build("face-info-mining", **kwargs)
        return
    if use_task_tokens and not use_global:
        with pytest.raises(ValueError, match="use_task_tokens adds global clues"):
            build("face-info-mining", **kwargs)
        return
    fusion = build("face-info-mining", **kwargs)
    expected_clues = (3 + (7 if use_task_tokens else 0)) * use_global + (5 if regions else 68) * use_local
    assert fusion.num_clue_tokens == expected_clues
    assert fusion.num_output_tokens == 2 + 4  # llama-vid context + content, then the 4 queries
    out = check_forward_backward(fusion, torch.randn(B, N, D_VIS), make_priors(), make_text())
    assert out.shape == (B, 6, D_OUT)


@pytest.mark.parametrize(
    ("kwargs", "visual_tokens"),
    [
        ({"visual": None}, 0),
        ({"visual": {"name": "llama-vid", **SMALL, "content": "grid:2"}}, 5),
        ({"visual": {"name": "resampler", **SMALL, "num_queries": 3}}, 3),
        ({"visual": "mlp2x-gelu"}, N),
        ({"num_queries": 1, "depth": 3, "k_g": 1}, 2),
        ({"num_queries": 9, "depth": 2}, 2),
    ],
)
def test_face_info_mining_visual_branch_and_sizes(kwargs: dict, visual_tokens: int) -> None:
    fusion = build("face-info-mining", **kwargs)
    assert fusion.num_output_tokens == visual_tokens + fusion.aggregator.num_queries
    check_forward_backward(fusion, torch.randn(B, N, D_VIS), make_priors(), make_text())


def test_face_info_mining_output_is_visual_then_face_tokens() -> None:
    torch.manual_seed(0)
    fusion = build("face-info-mining").eval()
    visual, priors, text = torch.randn(B, N, D_VIS), make_priors(), make_text()
    out = fusion(visual, priors, text)
    torch.testing.assert_close(out[:, :2], fusion.visual(visual, priors, text))
    torch.testing.assert_close(out[:, 2:], fusion.face_tokens(priors, text))


def _face_change(fusion: FaceInfoMining, edit) -> float:
    torch.manual_seed(1)
    priors, text = make_priors(), make_text()
    before = fusion.face_tokens(priors, text)
    edit(priors)
    return (fusion.face_tokens(priors, text) - before).abs().max().item()


def test_face_info_mining_branches_read_only_their_inputs() -> None:
    def new_global(p):
        p.global_feat = torch.randn_like(p.global_feat)

    def new_local(p):
        p.local_feat = torch.randn_like(p.local_feat)

    def new_landmarks(p):
        p.landmarks = torch.rand_like(p.landmarks) * 2 - 1

    torch.manual_seed(0)
    local_only = build("face-info-mining", use_global=False).eval()
    global_only = build("face-info-mining", use_local=False).eval()
    assert _face_change(local_only, new_global) == 0
    assert _face_change(local_only, new_local) > 1e-4
    assert _face_change(local_only, new_landmarks) > 1e-4
    assert _face_change(global_only, new_global) > 1e-4
    assert _face_change(global_only, new_local) == 0
    assert _face_change(global_only, new_landmarks) == 0


def test_face_info_mining_regions_pool_ibug_ranges() -> None:
    assert sorted(i for r in IBUG68_REGIONS.values() for i in r) == list(range(68))
    fusion = build("face-info-mining", regions=True).eval()
    priors = make_priors()
    clues = fusion.local_clues(priors)
    assert clues.shape == (B, 5, 16)
    per_landmark = build("face-info-mining", regions=False)
    per_landmark.load_state_dict(fusion.state_dict())
    tokens = per_landmark.local_clues(priors)
    torch.testing.assert_close(clues[:, 4], tokens[:, 48:68].mean(dim=1))  # mouth


def test_face_info_mining_runs_without_landmarks() -> None:
    fusion = build("face-info-mining")
    out = fusion(torch.randn(B, N, D_VIS), make_priors(landmarks=False), make_text())
    assert out.shape == (B, fusion.num_output_tokens, D_OUT)


def test_face_info_mining_text_guidance() -> None:
    """Text changes the face tokens only when text-guided; padded text positions never matter."""
    torch.manual_seed(0)
    guided = build("face-info-mining").eval()
    unguided = build("face-info-mining", text_guided=False).eval()
    priors = make_priors()
    text_a, text_b = make_text(), make_text()
    assert (guided.face_tokens(priors, text_a) - guided.face_tokens(priors, text_b)).abs().max() > 1e-4
    torch.testing.assert_close(unguided.face_tokens(priors, text_a), unguided.face_tokens(priors, text_b))
    padded = (text_a[0].clone(), text_a[1])
    padded[0][0, -2:] = 100.0  # masked positions of sample 0
    torch.testing.assert_close(guided.face_tokens(priors, padded)[0], guided.face_tokens(priors, text_a)[0])
    # no text at run time: the learned queries alone (documented fallback)
    assert torch.isfinite(guided.face_tokens(priors, None)).all()


def test_face_info_mining_without_text_dim_builds_unguided() -> None:
    spec = FusionSpec(D_VIS, N, D_OUT, prior=PRIOR, text_dim=None)
    fusion = build("face-info-mining", spec=spec, text_guided=True)
    assert not fusion.text_guided and fusion.aggregator.text_proj is None
    assert fusion(torch.randn(B, N, D_VIS), make_priors(), None).shape == (B, 6, D_OUT)


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        (FusionSpec(D_VIS, N, D_OUT, prior=None, prior_name="none"), {}, "needs a face prior.*face_prior: none"),
        (
            FusionSpec(D_VIS, N, D_OUT, prior=PriorSpec(18, 12, 68)),
            {"use_task_tokens": True},
            "exposes no task tokens",
        ),
        (FusionSpec(D_VIS, N, D_OUT, prior=PriorSpec(18, 12, 5)), {"regions": True}, "68 iBUG landmarks.*gives 5"),
        (SPEC, {"k_g": 0}, "k_g must be >= 1"),
        (SPEC, {"num_queries": 0}, "num_queries >= 1"),
        (SPEC, {"dim": 15}, "not divisible by num_heads"),
    ],
)
def test_face_info_mining_errors(spec: FusionSpec, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build("face-info-mining", spec=spec, **kwargs)


def test_face_info_mining_needs_priors_at_run_time() -> None:
    with pytest.raises(ValueError, match="priors=None"):
        build("face-info-mining")(torch.randn(B, N, D_VIS), None, make_text())


# -- llama-vid ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("num_tokens", "content", "context", "expected"),
    [(16, "mean", True, 2), (16, "grid:2", True, 5), (17, "grid:4", True, 17), (16, "grid:3", False, 16), (9, "mean", False, 1)],
)
def test_llama_vid_token_counts(num_tokens: int, content: str, context: bool, expected: int) -> None:
    spec = FusionSpec(D_VIS, num_tokens, D_OUT, text_dim=D_TEXT)
    fusion = build("llama-vid", spec=spec, content=content, context=context)
    assert fusion.num_output_tokens == expected
    check_forward_backward(fusion, torch.randn(B, num_tokens, D_VIS), None, make_text())


def test_llama_vid_grid_skips_class_token_and_pools() -> None:
    assert patch_grid(16) == (0, 4) and patch_grid(257) == (1, 16)
    spec = FusionSpec(D_VIS, 17, D_OUT)
    fusion = build("llama-vid", spec=spec, content="grid:2", context=False)
    visual = torch.randn(B, 17, D_VIS)
    grid = visual[:, 1:].reshape(B, 4, 4, D_VIS)
    top_left = grid[:, :2, :2].mean(dim=(1, 2))
    torch.testing.assert_close(fusion(visual)[:, 0], fusion.projector(top_left))


def test_llama_vid_text_changes_only_the_context_token() -> None:
    torch.manual_seed(0)
    fusion = build("llama-vid").eval()
    visual = torch.randn(B, N, D_VIS)
    a, b = fusion(visual, None, make_text()), fusion(visual, None, make_text())
    torch.testing.assert_close(a[:, 1:], b[:, 1:])
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-4
    torch.testing.assert_close(a[:, 1], fusion.projector(visual.mean(dim=1)))
    assert torch.isfinite(fusion(visual, None, None)).all()  # learned queries without text


@pytest.mark.parametrize(
    ("num_tokens", "content", "match"),
    [(16, "max", "'mean' or 'grid:k'"), (16, "grid:0", "'mean' or 'grid:k'"), (16, "grid:5", "only 4x4"), (12, "grid:2", "no square patch grid")],
)
def test_llama_vid_errors(num_tokens: int, content: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build("llama-vid", spec=FusionSpec(D_VIS, num_tokens, D_OUT), content=content)


# -- resampler and shared blocks ------------------------------------------------------------
def test_resampler_reads_priors_only_when_asked() -> None:
    torch.manual_seed(0)
    plain = build("resampler")
    assert not plain.requires_prior
    with_priors = build("resampler", use_priors=True)
    assert with_priors.requires_prior
    check_forward_backward(with_priors, torch.randn(B, N, D_VIS), make_priors(), None)
    with pytest.raises(ValueError, match="needs a face prior"):
        build("resampler", spec=FusionSpec(D_VIS, N, D_OUT), use_priors=True)


def test_match_batch_repeats_text_per_frame() -> None:
    emb, mask = make_text()
    rep, rep_mask = match_batch((emb, mask), B * 3)
    torch.testing.assert_close(rep[3:6], emb[1:2].expand(3, -1, -1))
    assert rep_mask.shape == (B * 3, 5)
    with pytest.raises(ValueError, match="cannot be matched"):
        match_batch((emb, mask), 5)


def test_query_transformer_without_text_path_rejects_text() -> None:
    qt = QueryTransformer(16, 2, 1, 2, context_dim=8)
    with pytest.raises(ValueError, match="without a text path"):
        qt(torch.randn(1, 3, 8), text=(torch.randn(1, 2, 16), torch.ones(1, 2)))


def test_fourier_encode_shape_and_values() -> None:
    coords = torch.tensor([[[0.5, -1.0]]])
    enc = fourier_encode(coords, 3)
    assert enc.shape == (1, 1, 2 + 12)
    torch.testing.assert_close(enc[..., :2], coords)
    torch.testing.assert_close(enc[0, 0, 2], torch.sin(torch.tensor(0.5 * torch.pi)))


# -- temporal steps -----------------------------------------------------
@pytest.mark.parametrize("name", TEMPORAL_STEPS.names())
def test_every_temporal_step_is_identity_shaped_on_images_and_pools_video(name: str) -> None:
    step = build_temporal(name, 8)
    assert isinstance(step, TemporalStep) and step.dim == 8
    tokens = torch.randn(2 * 3, 4, 8)
    out = step(tokens, 3)
    assert out.shape == (2, step.output_tokens(4, 3), 8) and torch.isfinite(out).all()
    assert step(tokens, 1).shape == (6, 4, 8)


def test_temporal_step_plugin_registers_like_any_part() -> None:
    class LastFrame(TemporalStep):
        """Keeps the last frame."""

        def forward(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
            return self._split(tokens, num_frames)[:, -1]

    TEMPORAL_STEPS.register("test-last-frame")(LastFrame)
    try:
        step = build_temporal("test-last-frame", 8)
        assert "test-last-frame" in TEMPORAL_STEPS.names() and step(torch.randn(6, 4, 8), 3).shape == (2, 4, 8)
    finally:
        TEMPORAL_STEPS._entries.pop("test-last-frame")
    with pytest.raises(KeyError, match=r"unknown temporal step 'meen'\. Did you mean 'mean'\?"):
        build_temporal("meen", 8)
