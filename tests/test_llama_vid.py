"""LLaMA-VID's parts: the EVA-ViT-g encoder from a LAVIS file, the BERT Q-Former fusion, questions in the model."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_checkpoints_llama_vid import lavis_eva
from transformers import InstructBlipVisionConfig, InstructBlipVisionModel

import emofer
from emofer import ENCODERS, FUSIONS, build_model
from emofer.fusion import FusionSpec
from emofer.fusion.llama_vid import class_token_skip, grid_tokens
from emofer.testing import tiny_bert_tokenizer_dir

EVA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
       "patch_size": 8, "image_size": 32, "initializer_range": 0.05}
BERT = {"dim": 16, "depth": 2, "num_heads": 2, "bert_config": {"vocab_size": 500, "max_position_embeddings": 64}}
SPEC = FusionSpec(visual_dim=24, num_visual_tokens=17, out_dim=40, text_dim=20)


def lavis_file(tmp_path, ref: InstructBlipVisionModel):
    """``ref``'s weights saved under LAVIS's EVA names."""
    torch.save(lavis_eva(ref), tmp_path / "eva_vit_g.pth")
    return tmp_path / "eva_vit_g.pth"


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    ref = InstructBlipVisionModel(InstructBlipVisionConfig(**EVA)).eval()
    with torch.no_grad():
        for layer in ref.encoder.layers:
            layer.self_attn.qkv.bias[EVA["hidden_size"] : 2 * EVA["hidden_size"]] = 0
    return ref


def test_eva_encoder_reads_lavis_file_as_penultimate_layer(tmp_path, reference) -> None:
    path = lavis_file(tmp_path, reference)
    config = {k: v for k, v in EVA.items() if k != "image_size"} | {"num_hidden_layers": 2}
    enc = ENCODERS.build({"name": "eva-vit-g", "checkpoint": str(path), "config": config, "image_size": 32}).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(enc(pixels), want, rtol=0, atol=1e-5)
        # at 48 px the position embeddings are resized as LLaMA-VID (and transformers) do
        big = ENCODERS.build({"name": "eva-vit-g", "checkpoint": str(path), "config": config, "image_size": 48})
        pixels = torch.randn(1, 3, 48, 48)
        want = reference(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True)
        torch.testing.assert_close(big.eval()(pixels), want.hidden_states[-2], rtol=0, atol=1e-5)
    assert enc.num_tokens == 17 and big.num_tokens == 37
    state = torch.load(path, weights_only=True)
    state["blocks.0.attn.extra"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.extra"):
        ENCODERS.build({"name": "eva-vit-g", "checkpoint": str(path), "config": config, "image_size": 32})


def test_eva_lavis_format_fills_the_encoder_of_a_preset(tmp_path, reference) -> None:
    path = lavis_file(tmp_path, reference)
    with pytest.raises(emofer.checkpoints.CheckpointError, match="holds only a vision tower"):
        emofer.from_checkpoint(path)
    base = emofer.load_config("emo-llama-tiny")
    base.model.encoder = {"name": "eva-vit-g", "config": {"num_attention_heads": 2}}
    model = emofer.from_checkpoint(path, cfg=base)
    assert model.cfg.encoder.config.num_hidden_layers == 2 and model.cfg.encoder.image_size == 32
    assert "encoder" not in " ".join(model.import_report.kept)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(model.encoder.eval()(pixels), want, rtol=0, atol=1e-5)


def test_eva_g_preset_size_and_pad_transform() -> None:
    with torch.device("meta"):
        enc = ENCODERS.build("eva-vit-g")
    assert (enc.num_tokens, enc.embed_dim) == (257, 1408)
    assert 0.95e9 < sum(p.numel() for p in enc.parameters()) < 1.05e9  # EVA-ViT-g minus its last block
    from PIL import Image

    config = {k: v for k, v in EVA.items() if k != "image_size"}
    padded = ENCODERS.build({"name": "eva-vit-g", "config": config, "image_size": 32, "pad": True})
    wide = Image.new("RGB", (64, 16), (255, 0, 0))
    top_row = padded.transform()(wide)[:, 0, 16]  # padding with the mean colour normalises to ~0
    assert top_row.abs().max() < 0.02


def test_class_token_rule_and_grid_counts() -> None:
    assert [class_token_skip(n) for n in (257, 577, 256, 9, 17, 10)] == [1, 1, 0, 0, 1, 0]
    assert [grid_tokens(16, k) for k in (2, 3, 4, 5, 6)] == [2, 3, 4, 5, 8]


def test_bert_qformer_fusion_shapes_gradients_and_text() -> None:
    torch.manual_seed(0)
    fusion = FUSIONS.build({"name": "llama-vid", "qformer": "bert", "content": "null", "qformer_queries": 3,
                            "tokenizer": str(tiny_bert_tokenizer_dir()), **BERT}, spec=SPEC)
    assert fusion.reads_questions and fusion.num_output_tokens == 1 + 16
    visual = torch.randn(4, 17, 24)
    out = fusion(visual, None, None, questions=["Which expression?", "Describe the mouth."])  # 2 frames each
    assert out.shape == (4, 17, 40)
    torch.testing.assert_close(out[:, 1:], fusion.projector(visual[:, 1:]))  # content: the patches, CLS dropped
    out.square().mean().backward()
    assert not [n for n, p in fusion.named_parameters() if p.grad is None]
    assert fusion.qformer.bert.config.cross_attention_frequency == 2
    fusion.eval()  # no dropout: the same question gives the same tokens, another changes the context token
    with torch.no_grad():
        out = fusion(visual, None, None, questions=["Which expression?", "Describe the mouth."])
        other = fusion(visual, None, None, questions=["Which expression?", "Is the person smiling?"])
    torch.testing.assert_close(other[:2], out[:2])
    assert (other[2:, 0] - out[2:, 0]).abs().max() > 1e-4
    torch.testing.assert_close(other[:, 1:], out[:, 1:])


def test_bert_qformer_needs_a_tokenizer_to_read_questions() -> None:
    fusion = FUSIONS.build({"name": "llama-vid", "qformer": "bert", **BERT}, spec=SPEC)
    assert fusion(torch.randn(1, 17, 24)).shape == (1, 2, 40)  # the queries alone, no text given
    with pytest.raises(ValueError, match="built without a tokenizer"):
        fusion(torch.randn(1, 17, 24), questions=["Which expression?"])
    with pytest.raises(ValueError, match="belong to qformer=bert"):
        FUSIONS.build({"name": "llama-vid", "tokenizer": "x"}, spec=SPEC)


def test_num_queries_is_deprecated_for_qformer_queries() -> None:
    with pytest.warns(DeprecationWarning, match="renamed 'qformer_queries'"):
        fusion = FUSIONS.build({"name": "llama-vid", "num_queries": 3, "dim": 16, "depth": 1, "num_heads": 2},
                               spec=SPEC)
    assert fusion.qformer.num_queries == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FUSIONS.build({"name": "llama-vid", "qformer_queries": 3, "dim": 16, "depth": 1, "num_heads": 2}, spec=SPEC)


def test_model_hands_questions_to_the_bert_qformer_per_frame() -> None:
    from test_model import QUESTIONS, config, make_batch

    visual = {"name": "llama-vid", "qformer": "bert", "content": "mean", "qformer_queries": 2,
              "tokenizer": str(tiny_bert_tokenizer_dir()), **BERT}
    model = build_model(config(fusion=visual))
    seen = []
    model.fusion.qformer.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    model(make_batch(frames=2)).backward()
    assert seen == [QUESTIONS]  # per sample; the Q-Former repeats them per frame
    assert model.fusion.qformer.query_tokens.grad is not None


def test_7b_preset_builds_the_bert_qformer_on_meta() -> None:
    cfg = emofer.load_config("emo-llama-7b")
    visual = cfg.model.fusion.visual
    assert visual.qformer == "bert" and cfg.model.encoder.name == "eva-vit-g"
    with torch.device("meta"):
        fusion = FUSIONS.build(visual, spec=FusionSpec(1408, 257, 4096, text_dim=4096))
    bert = fusion.qformer.bert.config
    assert (bert.hidden_size, bert.num_hidden_layers, bert.vocab_size, bert.encoder_hidden_size) == (768, 12, 30523, 1408)
    assert fusion.qformer.query_tokens.shape == (1, 32, 768)
    assert fusion.num_output_tokens == 2
