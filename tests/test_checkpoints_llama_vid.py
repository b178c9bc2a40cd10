"""LLaMA-VID import: a tiny random checkpoint in LLaMA-VID's own layout against transformers and LLaMA-VID's rules.

The folder is written as dvlab-research/LLaMA-VID saves one: ``config.json``
with ``model_type: llava`` and LLaMA-VID's fields, the weights sharded as
``pytorch_model-0000i-of-00002.bin`` with ``pytorch_model.bin.index.json``,
LAVIS key names for the BERT Q-Former; the vision tower is a LAVIS-layout
``eva_vit_g.pth``. The references are transformers' ``InstructBlipVisionModel``
and ``InstructBlipQFormerModel`` holding the same random weights, and LLaMA-VID's
``vlm_attention`` / ``token_generation`` rule re-implemented below from its code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoTokenizer,
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
    InstructBlipVisionConfig,
    InstructBlipVisionModel,
    LlamaForCausalLM,
)

import emofer
from emofer.checkpoints import CheckpointError, detect_format
from emofer.testing import tiny_bert_tokenizer_dir, tiny_llm_dir

EVA = {"hidden_size": 176, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
       "patch_size": 8, "image_size": 80, "layer_norm_eps": 1e-6, "qkv_bias": True, "initializer_range": 0.05}
"""A 3-block EVA (the file) at 80 px: 10x10 patches + CLS = 101 tokens, so LLaMA-VID drops the CLS."""
BERT = {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 64, "cross_attention_frequency": 2, "encoder_hidden_size": 176}
QUESTIONS = ["What is the facial expression of the person in the image?", "Describe the eyebrows."]


def lavis_eva(ref: InstructBlipVisionModel) -> dict[str, torch.Tensor]:
    """The reference tower's weights under LAVIS's EVA names (``q_bias``/``v_bias`` split from ``qkv.bias``)."""
    sd, d = ref.state_dict(), ref.config.hidden_size
    out = {"cls_token": sd["embeddings.class_embedding"], "pos_embed": sd["embeddings.position_embedding"],
           "patch_embed.proj.weight": sd["embeddings.patch_embedding.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embedding.bias"]}
    for i in range(ref.config.num_hidden_layers):
        hf, lv = f"encoder.layers.{i}.", f"blocks.{i}."
        bias = sd[hf + "self_attn.qkv.bias"]
        out |= {lv + "attn.q_bias": bias[:d], lv + "attn.v_bias": bias[2 * d :],
                lv + "attn.qkv.weight": sd[hf + "self_attn.qkv.weight"]}
        for w in ("weight", "bias"):
            out |= {lv + f"norm1.{w}": sd[hf + f"layer_norm1.{w}"], lv + f"norm2.{w}": sd[hf + f"layer_norm2.{w}"],
                    lv + f"attn.proj.{w}": sd[hf + f"self_attn.projection.{w}"],
                    lv + f"mlp.fc1.{w}": sd[hf + f"mlp.fc1.{w}"], lv + f"mlp.fc2.{w}": sd[hf + f"mlp.fc2.{w}"]}
    return {k: v.clone() for k, v in out.items()}


def lavis_bert(ref: InstructBlipQFormerModel) -> dict[str, torch.Tensor]:
    """The reference Q-Former's weights under LAVIS's BERT names, as LLaMA-VID saves them."""
    out = {}
    for key, value in ref.state_dict().items():
        key = key.replace("embeddings.layernorm.", "embeddings.LayerNorm.")
        key = key.replace(".attention.attention.", ".attention.self.").replace(
            ".crossattention.attention.", ".crossattention.self.")
        out["model.vlm_att_encoder.bert." + key] = value.clone()
    out["model.vlm_att_encoder.bert.embeddings.position_ids"] = torch.arange(BERT["max_position_embeddings"])[None]
    return out


class Source:
    """The reference modules and the folder written from them."""

    def __init__(self, root: Path, compress_type: str | None, safetensors: bool = False) -> None:
        torch.manual_seed(0)
        with torch.no_grad():
            self.vision = InstructBlipVisionModel(InstructBlipVisionConfig(**EVA)).eval()
            for layer in self.vision.encoder.layers:  # EVA has no key bias
                layer.self_attn.qkv.bias[EVA["hidden_size"] : 2 * EVA["hidden_size"]] = 0
        self.bert_tok = AutoTokenizer.from_pretrained(tiny_bert_tokenizer_dir(), truncation_side="left")
        self.qformer = InstructBlipQFormerModel(
            InstructBlipQFormerConfig(vocab_size=len(self.bert_tok) + 1, **BERT)).eval()  # + LLaMA-VID's [DEC]
        self.llm = LlamaForCausalLM.from_pretrained(tiny_llm_dir()).eval()
        d_vis, d_q, d_llm = EVA["hidden_size"], BERT["hidden_size"], self.llm.config.hidden_size
        self.att = {  # LLaMA-VID's attention modules with random weights
            "model.vlm_att_query": torch.randn(1, 4, d_q) * 0.5,
            "model.vlm_att_ln.weight": 1 + 0.1 * torch.randn(d_vis), "model.vlm_att_ln.bias": 0.1 * torch.randn(d_vis),
        }
        for name, (i, o) in {"vlm_att_projector": (d_q, d_vis), "vlm_att_key_projector": (d_vis, d_vis),
                             "vlm_att_val_projector": (d_vis, d_llm), "mm_projector.0": (d_vis, d_llm),
                             "mm_projector.2": (d_llm, d_llm)}.items():
            self.att[f"model.{name}.weight"] = torch.randn(o, i) / i**0.5
            self.att[f"model.{name}.bias"] = 0.1 * torch.randn(o)
        self.compress_type = compress_type
        self.safetensors = safetensors
        self.path, self.vision_file = self.write(root)

    def write(self, root: Path) -> tuple[Path, Path]:
        folder, eva = root / "llama-vid-tiny", root / "eva_vit_g.pth"
        folder.mkdir()
        torch.save(lavis_eva(self.vision), eva)
        llm = {k: v.clone() for k, v in self.llm.state_dict().items()}
        shards = [{**self.att, **lavis_bert(self.qformer)}, llm]  # LLaMA-VID's trainer shards by size
        index = {}
        for i, shard in enumerate(shards, 1):
            if self.safetensors:
                from safetensors.torch import save_file

                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file({k: v.contiguous() for k, v in shard.items()}, str(folder / name))
            else:
                name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
                torch.save(shard, folder / name)
            index.update(dict.fromkeys(shard, name))
        index_name = "model.safetensors.index.json" if self.safetensors else "pytorch_model.bin.index.json"
        (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": index}))
        config = {**self.llm.config.to_dict(), "model_type": "llava", "architectures": ["LlavaLlamaAttForCausalLM"],
                  "mm_vision_tower": "./model_zoo/LAVIS/eva_vit_g.pth", "bert_type": "qformer_pretrain",
                  "num_query": 4, "compress_type": self.compress_type, "mm_hidden_size": EVA["hidden_size"],
                  "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
                  "mm_vision_select_feature": "patch", "image_processor": "./llamavid/processor/clip-patch14-80",
                  "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False}
        (folder / "config.json").write_text(json.dumps(config))
        for file in tiny_llm_dir().iterdir():
            if file.name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(file, folder / file.name)
        return folder, eva

    def base(self) -> dict:
        """A preset-like config naming the local BERT tokenizer (LLaMA-VID's folder holds none)."""
        return {"model": {"fusion": {"name": "llama-vid", "tokenizer": str(tiny_bert_tokenizer_dir())},
                          "llm": {"name": "causal-lm"}}}

    @torch.no_grad()
    def tokens(self, pixels: torch.Tensor, questions: list[str]) -> torch.Tensor:
        """LLaMA-VID's ``vlm_attention`` + ``token_generation`` on the reference modules (from its code)."""
        att = self.att
        image_features = self.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        tok = self.bert_tok(questions, padding="longest", truncation=True, max_length=256, return_tensors="pt")
        img_feat_prompt, bert_feat = image_features, image_features.clone()
        if img_feat_prompt.shape[1] % 2 == 1:  # remove cls embedding
            img_feat_prompt = img_feat_prompt[:, 1:]
        query_tokens = att["model.vlm_att_query"].expand(bert_feat.shape[0], -1, -1)
        query_atts = torch.cat([torch.ones(query_tokens.shape[:-1], dtype=torch.long), tok.attention_mask], dim=1)
        mm_img_in = F.layer_norm(bert_feat, bert_feat.shape[-1:], att["model.vlm_att_ln.weight"],
                                 att["model.vlm_att_ln.bias"])
        mm_output = self.qformer(tok.input_ids, attention_mask=query_atts, query_embeds=query_tokens,
                                 encoder_hidden_states=mm_img_in).last_hidden_state[:, : query_tokens.shape[1]]
        text_q = self.linear("vlm_att_projector", mm_output)
        return self.token_generation(text_q, img_feat_prompt)

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.att[f"model.{name}.weight"], self.att[f"model.{name}.bias"])

    def token_generation(self, text_q: torch.Tensor, vis_embed: torch.Tensor) -> torch.Tensor:
        ctx_embed = self.linear("vlm_att_key_projector", vis_embed)
        ctx_embed = text_q @ ctx_embed.transpose(-1, -2)
        ctx_embed = ctx_embed / (vis_embed.shape[-1] ** 0.5)
        ctx_embed = (ctx_embed.softmax(-1) @ vis_embed).mean(1)
        ctx_embed = self.linear("vlm_att_val_projector", ctx_embed[:, None])
        if self.compress_type is not None:
            if "grid" in self.compress_type:
                grid_size = int(self.compress_type.split("grid:")[-1])
                cur_shape = int(vis_embed.shape[1] ** 0.5)
                vis_embed = vis_embed.reshape(vis_embed.shape[0], cur_shape, cur_shape, -1)
                grid_stride = cur_shape // grid_size
                vis_embed = F.avg_pool2d(vis_embed.permute(0, 3, 1, 2), padding=0, kernel_size=grid_stride,
                                         stride=grid_stride)
                vis_embed = vis_embed.permute(0, 2, 3, 1).flatten(1, 2)
            elif "mean" in self.compress_type:
                vis_embed = vis_embed.mean(dim=1, keepdim=True)
        vis_embed = self.linear("mm_projector.2", F.gelu(self.linear("mm_projector.0", vis_embed)))
        return torch.cat([ctx_embed, vis_embed], dim=1)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Source:
    return Source(tmp_path_factory.mktemp("llama-vid"), None)


def imported(source: Source):
    return emofer.from_checkpoint(source.path, vision=source.vision_file, cfg=source.base()).eval()


def test_detects_llama_vid_and_names_what_it_found(source: Source) -> None:
    fmt = detect_format(source.path)
    assert fmt.name == "llama-vid"
    assert "vlm_att_encoder" in fmt.detect(source.path) and "bert_type" in fmt.detect(source.path)
    assert detect_format(source.vision_file).name == "eva-lavis"


@pytest.mark.parametrize(("compress_type", "safetensors"),
                         [(None, False), ("mean", False), ("grid:3", False), ("grid:4", True)])
def test_tokens_equal_llama_vids(tmp_path, compress_type, safetensors) -> None:
    """Q-Former (transformers' InstructBLIP one), EVA (penultimate layer) and token generation, all modes.

    The grid is 10x10: grid:3 pools 3x3 windows (stride 3, the last row and column unused) and
    grid:4 pools 2x2 windows into 5x5 tokens, where adaptive pooling would differ. The last case
    writes the folder as sharded safetensors.
    """
    src = Source(tmp_path, compress_type, safetensors)
    model = imported(src)
    assert model.import_report.kept == []
    pixels = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        visual = model.encoder(pixels)
        want_visual = src.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(visual, want_visual, rtol=0, atol=1e-5)
        got = model.fusion(visual, None, None, questions=QUESTIONS)
    want = src.tokens(pixels, QUESTIONS)
    expected = {None: 1 + 100, "mean": 2, "grid:3": 1 + 9, "grid:4": 1 + 25}[compress_type]
    assert got.shape == want.shape == (2, expected, src.llm.config.hidden_size)
    assert model.fusion.num_output_tokens == expected
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_qformer_output_equals_instructblip_qformer(source: Source) -> None:
    model = imported(source)
    features = torch.randn(2, 101, EVA["hidden_size"])
    with torch.no_grad():
        got = model.fusion.qformer(features, QUESTIONS)
        tok = source.bert_tok(QUESTIONS, padding="longest", return_tensors="pt")
        queries = source.att["model.vlm_att_query"].expand(2, -1, -1)
        mask = torch.cat([torch.ones(2, queries.shape[1], dtype=torch.long), tok.attention_mask], dim=1)
        normed = F.layer_norm(features, (EVA["hidden_size"],), source.att["model.vlm_att_ln.weight"],
                              source.att["model.vlm_att_ln.bias"])
        want = source.qformer(tok.input_ids, attention_mask=mask, query_embeds=queries,
                              encoder_hidden_states=normed).last_hidden_state[:, : queries.shape[1]]
    assert tok.input_ids[0, 0] == source.bert_tok.cls_token_id  # [CLS] q [SEP]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_import_fills_every_part_and_the_llm(source: Source) -> None:
    model = imported(source)
    report = model.import_report
    assert report.kept == []
    assert set(report.dropped.values()) == {
        "the BERT position ids: a constant buffer (0, 1, 2, ...) transformers rebuilds",
        "EVA blocks after the first 2: LLaMA-VID and BLIP-2 take the penultimate block's output",
    }
    assert model.cfg.prompt.template == "vicuna_v1" and model.cfg.fusion.content == "null"
    assert model.cfg.encoder.pad and model.cfg.encoder.image_size == 80
    torch.testing.assert_close(model.llm.lm.lm_head.weight, source.llm.lm_head.weight)
    torch.testing.assert_close(model.llm.lm.model.embed_tokens.weight, source.llm.model.embed_tokens.weight)


def rewrite(src: Source, edit) -> None:
    """Applies ``edit`` to the first shard's tensors and rewrites the shard and the index."""
    index_file = src.path / "pytorch_model.bin.index.json"
    index = json.loads(index_file.read_text())
    shard = src.path / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    edit(state)
    torch.save(state, shard)
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not v.endswith("00001-of-00002.bin")}
    index["weight_map"].update(dict.fromkeys(state, shard.name))
    index_file.write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.update({"model.vlm_att_extra.weight": torch.zeros(2)}), r"no rule maps or drops.*model\.vlm_att_extra\.weight"),
        (lambda s: s.pop("model.vlm_att_key_projector.bias"), r"missing keys.*fusion\.key_proj\.bias"),
        (lambda s: s.update({"model.vlm_att_query": torch.zeros(1, 5, 128)}),
         r"wrong shape.*model\.vlm_att_query \(1, 5, 128\) -> fusion\.qformer\.query_tokens \(1, 4, 128\)"),
    ],
    ids=["extra", "missing", "misshaped"],
)
def test_extra_missing_and_misshaped_keys_are_named(tmp_path, edit, match) -> None:
    src = Source(tmp_path, "mean")
    rewrite(src, edit)
    with pytest.raises(CheckpointError, match=match):
        imported(src)


def test_vision_file_with_unknown_keys_is_named(tmp_path) -> None:
    src = Source(tmp_path, "mean")
    state = torch.load(src.vision_file, weights_only=True)
    state["rel_pos_bias.relative_position_bias_table"] = torch.zeros(3)
    torch.save(state, src.vision_file)
    with pytest.raises(CheckpointError, match=r"vision_tower\.rel_pos_bias\.relative_position_bias_table"):
        imported(src)


def test_unsupported_bert_type_is_refused(tmp_path) -> None:
    src = Source(tmp_path, "mean")
    config = json.loads((src.path / "config.json").read_text())
    (src.path / "config.json").write_text(json.dumps({**config, "bert_type": "raw_bert"}))
    with pytest.raises(CheckpointError, match="bert_type 'raw_bert' is not supported"):
        imported(src)


def test_into_emo_llama_keeps_the_face_branch(source: Source) -> None:
    """With a Face Info Mining preset the LLaMA-VID tokens fill its visual branch; the face branch is kept."""
    base = emofer.load_config("emo-llama-tiny")
    base.model.fusion.visual.tokenizer = str(tiny_bert_tokenizer_dir())
    model = emofer.from_checkpoint(source.path, vision=source.vision_file, cfg=base)
    assert model.cfg.fusion.name == "face-info-mining" and model.cfg.fusion.visual.qformer == "bert"
    kept = model.import_report.kept
    assert kept and all(k.startswith(("fusion.", "face_prior")) and not k.startswith("fusion.visual") for k in kept)
    assert model.cfg.face_prior.name == base.model.face_prior.name


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = -200) -> list[int]:
    """LLaVA / LLaMA-VID's chunk-wise tokenisation around ``<image>`` (from ``llava.mm_utils``)."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    input_ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(chunks[0][0])
    separated = [x for pair in zip(chunks, [[image_token_index] * (offset + 1)] * len(chunks), strict=True) for x in pair][:-1]
    for x in separated:
        input_ids.extend(x[offset:])
    return input_ids


@pytest.mark.parametrize("frames", [1, 3])
def test_answer_logits_equal_llama_vid_on_the_same_pixels_and_conversation(source: Source, frames: int) -> None:
    """The whole model: LLaMA-VID's vicuna_v1 conversation, chunk-wise ids, its tokens at the image slot.

    For a video LLaMA-VID puts every frame's tokens, in frame order, in the one image slot,
    the question repeated per frame for its Q-Former.
    """
    model = imported(source)
    question, answer = QUESTIONS[0], "happiness"
    clips = torch.randn(2, frames, 3, 80, 80)
    got = model.answer_logits({"pixels": clips}, question, answer)
    system = ("A chat between a curious user and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the user's questions.")
    prompt = f"{system} USER: <image>\n{question} ASSISTANT: {answer}</s>"  # conv_vicuna_v1 with the answer turn
    ids = tokenizer_image_token(prompt, model.llm.tok)
    slot = ids.index(-200)
    with torch.no_grad():
        per_frame = source.tokens(clips.flatten(0, 1), [question] * 2 * frames)
        visual = per_frame.reshape(2, frames, *per_frame.shape[1:]).flatten(1, 2)  # LLaMA-VID's image_counts path
        embed = source.llm.get_input_embeddings()
        before, after = embed(torch.tensor(ids[:slot])), embed(torch.tensor(ids[slot + 1 :]))
        rows = torch.stack([torch.cat([before, v, after]) for v in visual])
        want = source.llm(inputs_embeds=rows).logits
    answer_len = got.shape[1]
    assert answer_len == len(model.llm.tok(f" {answer}</s>", add_special_tokens=False).input_ids)
    torch.testing.assert_close(got, want[:, -answer_len - 1 : -1], rtol=0, atol=1e-4)
    print(f"max |Δ logits| = {(got - want[:, -answer_len - 1 : -1]).abs().max().item():.2e}")


def test_import_command_and_a_folder_that_rereads_the_checkpoint(tmp_path, source: Source, capsys) -> None:
    from emofer.cli import main
    from emofer.model import EmoFERModel

    args = ["import", str(source.path), f"model.fusion.visual.tokenizer={tiny_bert_tokenizer_dir()}",
            "--vision", str(source.vision_file), "-c", "emo-llama-tiny", "--out", str(tmp_path / "model")]
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "llama-vid" in out and "kept at initialisation: face_prior, fusion.aggregator" in out
    model = EmoFERModel.from_pretrained(tmp_path / "model")
    pixels = torch.randn(1, 3, 80, 80)
    got = model.fusion.visual(model.eval().encoder(pixels), None, None, questions=QUESTIONS[:1])
    torch.testing.assert_close(got, source.tokens(pixels, QUESTIONS[:1]), rtol=0, atol=1e-5)


def test_import_into_emo_llama_7b_on_the_meta_device(source: Source) -> None:
    """The 7B preset's structure around a (tiny) LLaMA-VID: its parts filled, the face branch reported as kept."""
    base = emofer.load_config("emo-llama-7b", [f"model.fusion.visual.tokenizer={tiny_bert_tokenizer_dir()}"])
    with torch.device("meta"):
        model = emofer.from_checkpoint(source.path, vision=source.vision_file, cfg=base)
    assert model.cfg.encoder.name == "eva-vit-g" and model.cfg.fusion.visual.qformer == "bert"
    assert model.cfg.llm.lora.r == 64 and model.cfg.llm.dtype == "bfloat16"  # the preset's training settings
    kept = model.import_report.kept
    assert "face_prior" in kept and "fusion.aggregator" in kept
    assert not [k for k in kept if k.startswith(("encoder", "fusion.visual", "llm"))]
