"""LLM heads: the contract for every registered head, prompts, packing, shared-prefix scoring, generation, parsing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emofer.llm import LLM_HEADS, decoding
from emofer.llm.causal_lm import CausalLMHead
from emofer.llm.classifier import ClassifierHead
from emofer.llm.parsing import invalid_rate, parse_label
from emofer.llm.prompts import PROMPT_TEMPLATES, PromptTemplate, get_template, register_template
from emofer.llm.sequence import IGNORE_INDEX, pack
from emofer.testing import build_tiny_tokenizer, tiny_llm_dir

CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
QUESTIONS = [
    "Which expression?",
    "What is the facial expression of the person in the image? Choose one from the following options: "
    "{surprise, fear, disgust, happiness, sadness, anger, neutral}.",
    "Describe the facial cues of the person, please.",
]
CANDIDATES = ["happiness", "fear", "disappointment", "anger", "neutral"]
TINY_KWARGS = {
    "causal-lm": {"path": "tiny-llama"},
    "classifier": {"classes": CLASSES, "hidden_size": 32},
}


def build_tiny(name: str) -> nn.Module:
    if name not in TINY_KWARGS:
        pytest.fail(f"LLM head {name!r} has no tiny test kwargs; add it to TINY_KWARGS")
    return LLM_HEADS.build({"name": name, **TINY_KWARGS[name]})


@pytest.fixture(scope="module")
def head() -> CausalLMHead:
    return CausalLMHead(path="tiny-llama").eval()


def visual(batch: int, num: int = 5, dim: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, num, dim, generator=torch.Generator().manual_seed(seed))


# -- every registered head ------------------------------------------------
@pytest.mark.parametrize("name", LLM_HEADS.names())
def test_head_contract(name: str) -> None:
    head = build_tiny(name)
    tokens = visual(3, dim=head.hidden_size).requires_grad_(True)
    loss = head.loss(tokens, QUESTIONS, ["fear", "happiness", "anger"], torch.tensor([1, 3, 5]), CLASSES)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    head.eval()
    with torch.no_grad():
        scores = head.score(tokens.detach(), QUESTIONS, ["happiness", "fear", "disgust"])
        texts = head.generate(tokens.detach(), QUESTIONS, max_new_tokens=3)
    assert scores.shape == (3, 3) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and (scores <= 0).all()
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


# -- prompts --------------------------------------------------------------
def test_vicuna_v1_is_llava_conv_vicuna_v1() -> None:
    t = get_template("vicuna_v1")
    system = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )
    assert t.render("Q?") == f"{system} USER: <image>\nQ? ASSISTANT:"
    assert t.render("Q?") + t.answer("fear") == f"{system} USER: <image>\nQ? ASSISTANT: fear</s>"
    assert t.split("Q?", system="S") == ("S USER: ", "\nQ? ASSISTANT:")
    assert t.anchor == " ASSISTANT:"
    assert t.clean(" fear</s>junk") == "fear"


@pytest.mark.parametrize("name", sorted(PROMPT_TEMPLATES))
def test_templates_have_one_image_marker_and_close_answers(name: str) -> None:
    t = get_template(name)
    before, after = t.split("Q?")
    assert "<image>" not in before + after and "Q?" in after
    assert t.answer("fear").strip().startswith("fear")
    assert any(t.answer("fear").endswith(stop) for stop in t.stop)


def test_template_registry_errors() -> None:
    assert set(PROMPT_TEMPLATES) >= {"vicuna_v1", "llama3", "chatml", "plain"}
    with pytest.raises(KeyError, match=r"unknown prompt template 'vicuna'\. Did you mean 'vicuna_v1'\?"):
        get_template("vicuna")
    with pytest.raises(ValueError, match="already registered"):
        register_template(get_template("plain"))
    with pytest.raises(ValueError, match="needs one <image>"):
        PromptTemplate("bad", "", "{question}", "{answer}", ("</s>",))


def test_templates_are_a_registry_plugins_join() -> None:
    assert PROMPT_TEMPLATES.describe("vicuna_v1").startswith("LLaVA / LLaMA-VID's conv_vicuna_v1")
    mine = PromptTemplate("test-mine", "", "<image>{question}", "{answer}.", (".",))
    register_template(mine)
    try:
        assert get_template("test-mine") is mine and PROMPT_TEMPLATES.source("test-mine") == __name__
        register_template(mine, force=True)
    finally:
        PROMPT_TEMPLATES._entries.pop("test-mine")


# -- tokenizer and tiny assets -------------------------------------------
def test_tiny_tokenizer_is_deterministic_with_specials_and_multi_token_labels() -> None:
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert 500 <= len(a) <= 2048
    assert [a.bos_token, a.eos_token, a.pad_token, a.unk_token] == ["<s>", "</s>", "<pad>", "<unk>"]
    assert a("fear</s>").input_ids[0] == a.bos_token_id and a("fear</s>").input_ids[-1] == a.eos_token_id
    lengths = {c: len(a.tokenize(" " + c)) for c in CLASSES}
    assert min(lengths.values()) == 1 and max(lengths.values()) >= 2, lengths


def test_tiny_llama_loads_through_from_pretrained(head: CausalLMHead) -> None:
    directory = tiny_llm_dir()
    assert (directory / "model.safetensors").exists() and (directory / "tokenizer.json").exists()
    assert head.pretrained_source == "tiny-llama"
    assert head.hidden_size == 64 and head.model.config.num_hidden_layers == 2
    assert head.model.config.vocab_size == len(head.tokenizer)


# -- packing, padding, label masking ---------------------------------------
def test_pack_places_visual_slots_labels_and_padding_exactly() -> None:
    b = pack([[1, 10], [1]], 2, [[11, 12], [13]], [[20, 2], [21, 22, 2]], pad_id=0)
    assert b.input_ids.tolist() == [[1, 10, 0, 0, 11, 12, 20, 2], [1, 0, 0, 13, 21, 22, 2, 0]]
    assert b.visual_mask.nonzero().tolist() == [[0, 2], [0, 3], [1, 1], [1, 2]]
    assert b.labels.tolist() == [
        [IGNORE_INDEX] * 6 + [20, 2],
        [IGNORE_INDEX] * 4 + [21, 22, 2, IGNORE_INDEX],
    ]
    assert b.attention_mask.tolist() == [[1] * 8, [1] * 7 + [0]]
    assert b.lengths.tolist() == [8, 7]
    assert b.position_ids.tolist() == [list(range(8)), list(range(7)) + [6]]


def test_head_labels_only_answer_tokens(head: CausalLMHead) -> None:
    answers = ["fear", "disappointment", "happiness"]
    b = head.pack(4, QUESTIONS, answers)
    assert len(set(b.lengths.tolist())) == 3  # three different lengths, so padding matters
    for i, answer in enumerate(answers):
        ids = head.answer_ids(answer)
        length = int(b.lengths[i])
        assert b.labels[i, length - len(ids) : length].tolist() == ids
        assert (b.labels[i, : length - len(ids)] == IGNORE_INDEX).all()
        assert (b.labels[i, length:] == IGNORE_INDEX).all()
        assert int(b.visual_mask[i].sum()) == 4
        assert b.attention_mask[i].tolist() == [1] * length + [0] * (b.input_ids.shape[1] - length)
    assert head.answer_ids("fear")[-1] == head.tokenizer.eos_token_id


def test_loss_matches_transformers_masked_loss_and_is_padding_invariant(head: CausalLMHead) -> None:
    tokens, answers = visual(3), ["fear", "disappointment", "happiness"]
    loss = head.loss(tokens, QUESTIONS, answers)
    packed = head.pack(tokens.shape[1], QUESTIONS, answers)
    embeds = head.model.get_input_embeddings()(packed.input_ids)
    embeds = embeds.masked_scatter(packed.visual_mask[..., None], tokens)
    reference = head.model(
        inputs_embeds=embeds, attention_mask=packed.attention_mask, labels=packed.labels
    ).loss
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    counts = [len(head.answer_ids(a)) for a in answers]
    singles = [head.loss(tokens[i : i + 1], [QUESTIONS[i]], [answers[i]]) for i in range(3)]
    weighted = sum(n * s for n, s in zip(counts, singles, strict=True)) / sum(counts)
    torch.testing.assert_close(loss, weighted, atol=1e-5, rtol=1e-5)


def test_embed_text_gives_input_embeddings_and_mask(head: CausalLMHead) -> None:
    emb, mask = head.embed_text(["fear", "a much longer question here"])
    assert head.text_dim == 64 and emb.shape[0] == 2 and emb.shape[-1] == 64
    ids = head.tokenizer("fear", add_special_tokens=False).input_ids
    assert mask[0].tolist() == [True] * len(ids) + [False] * (emb.shape[1] - len(ids)) and mask[1].all()
    torch.testing.assert_close(emb[0, : len(ids)], head.model.get_input_embeddings().weight[ids])


# -- shared-prefix scoring ----------------------------------------------------
def naive_scores(head: CausalLMHead, tokens: torch.Tensor, questions: list[str]) -> torch.Tensor:
    """One full forward per sample and candidate, no cache, no padding."""
    return torch.tensor(
        [
            [head.answer_logprob(tokens[i : i + 1], [questions[i]], [c]).item() for c in CANDIDATES]
            for i in range(len(questions))
        ]
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("template", sorted(PROMPT_TEMPLATES))
def test_shared_prefix_score_equals_naive(template: str, attn: str) -> None:
    head = CausalLMHead(path="tiny-llama", template=template, attn_implementation=attn).eval()
    assert max(len(head.answer_ids(c)) for c in CANDIDATES) >= 4  # multi-token labels are summed
    tokens = visual(3, seed=1)
    assert len(set(head.pack(5, QUESTIONS).lengths.tolist())) == 3  # prefixes of different lengths
    with torch.no_grad():
        shared = head.score(tokens, QUESTIONS, CANDIDATES)
        naive = naive_scores(head, tokens, QUESTIONS)
    torch.testing.assert_close(shared, naive, atol=1e-4, rtol=0)


def test_shared_prefix_score_with_lora_and_single_token_candidates() -> None:
    head = CausalLMHead(path="tiny-llama", lora={"r": 4, "alpha": 8, "dropout": 0.0}).eval()
    with torch.no_grad():
        for name, p in head.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-trivial adapter, so both paths must apply it
        tokens = visual(3, seed=2)
        torch.testing.assert_close(
            head.score(tokens, QUESTIONS, CANDIDATES),
            naive_scores(head, tokens, QUESTIONS),
            atol=1e-4,
            rtol=0,
        )
        plain = CausalLMHead(path="tiny-llama").eval()
        assert not torch.allclose(
            head.score(tokens, QUESTIONS, CANDIDATES), plain.score(tokens, QUESTIONS, CANDIDATES)
        )
    one = CausalLMHead(path="tiny-llama", template="plain").eval()
    one.template = PromptTemplate("no-end", "", "<image>\n{question}\n", "{answer}", ("</s>",))
    one._answer_ids.clear()
    single = [c for c in CLASSES if len(one.answer_ids(c)) == 1]
    assert single, "the tiny tokenizer should keep some labels as one token"
    with torch.no_grad():
        scores = one.score(visual(2), QUESTIONS[:2], single)
        expected = [
            [one.answer_logprob(visual(2)[i : i + 1], [QUESTIONS[i]], [c]).item() for c in single]
            for i in range(2)
        ]
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-4, rtol=0)


def test_score_runs_one_packed_pass(head: CausalLMHead) -> None:
    calls: list[tuple[int, ...]] = []
    hook = head.model.model.layers[0].register_forward_hook(lambda m, a, out: calls.append(tuple(a[0].shape[:2])))
    try:
        with torch.no_grad():
            head.score(visual(3), QUESTIONS, CANDIDATES)
    finally:
        hook.remove()
    fed = sum(len(head.answer_ids(c)) - 1 for c in CANDIDATES)
    prefix = int(head.pack(5, QUESTIONS).lengths.max())
    assert calls == [(3, prefix + fed)]  # one pass: B rows of prefix + every candidate, not B*C rows


def test_score_keeps_its_graph_when_grad_is_on() -> None:
    head = CausalLMHead(path="tiny-llama").eval()
    tokens = visual(3, seed=5)
    with torch.no_grad():
        expected = head.score(tokens, QUESTIONS, CANDIDATES)
    scores = head.score(tokens.requires_grad_(True), QUESTIONS, CANDIDATES)
    torch.testing.assert_close(scores.detach(), expected, atol=1e-5, rtol=0)
    scores.sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0


def test_block_mask_keeps_candidates_apart() -> None:
    layout = decoding.candidate_layout(torch.tensor([[7, 8, 9], [5, 6, 0], [4, 0, 0]]),
                                       torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]))
    assert layout["ids"].tolist() == [7, 8, 5] and layout["target"].tolist() == [8, 9, 6]
    mask = decoding.block_mask(torch.tensor([[1, 1, 0]]), layout["owner"], layout["offset"], "sdpa", torch.float32)
    assert mask.shape == (1, 1, 6, 6)
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],  # the prefix's padding row sees the real prefix only
        [1, 1, 0, 1, 0, 0],  # candidate 0, token 0: the real prefix and itself
        [1, 1, 0, 1, 1, 0],  # candidate 0, token 1
        [1, 1, 0, 0, 0, 1],  # candidate 1, token 0: not candidate 0
    ]
    additive = decoding.block_mask(torch.tensor([[1, 1, 0]]), layout["owner"], layout["offset"], "eager",
                                   torch.float32)
    assert torch.equal(additive == 0, mask)


def test_score_lets_a_model_that_scales_its_logits_compute_them(head: CausalLMHead) -> None:
    """A head whose output the model transforms is not applied by hand: a second pass, same numbers."""
    tokens = visual(3, seed=1)
    with torch.no_grad():
        plain = head.score(tokens, QUESTIONS, CANDIDATES)
        calls: list[int] = []
        hook = head.model.model.layers[0].register_forward_hook(lambda m, a, out: calls.append(1))
        head.model.config.logit_scale = 2.0  # what e.g. Cohere's config says; LLaMA ignores it
        try:
            flagged = head.score(tokens, QUESTIONS, CANDIDATES)
        finally:
            del head.model.config.logit_scale
            hook.remove()
    assert len(calls) == 2
    torch.testing.assert_close(flagged, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(flagged, naive_scores(head, tokens, QUESTIONS), atol=1e-4, rtol=0)


def test_score_refuses_attention_without_block_masks(head: CausalLMHead) -> None:
    head.model.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="flash_attention_2"):
            head.score(visual(3), QUESTIONS, CANDIDATES)
    finally:
        head.model.config._attn_implementation = "sdpa"


# -- generation -------------------------------------------------------------
def uncached_greedy(head: CausalLMHead, tokens: torch.Tensor, question: str, steps: int) -> str:
    """Greedy decoding of one sample without any cache or padding: the whole sequence every step."""
    packed = head.pack(tokens.shape[1], [question])
    embeds = head.model.get_input_embeddings()(packed.input_ids)
    embeds = embeds.masked_scatter(packed.visual_mask[..., None], tokens)
    stop_ids, _ = head.stop_tokens()
    ids: list[int] = []
    for _ in range(steps):
        nxt = int(head.model(inputs_embeds=embeds).logits[0, -1].argmax())
        if nxt in stop_ids:
            break
        ids.append(nxt)
        embeds = torch.cat([embeds, head.model.get_input_embeddings().weight[nxt][None, None]], dim=1)
    return head.template.clean(head.tokenizer.decode(ids, skip_special_tokens=True))


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("template", sorted(PROMPT_TEMPLATES))
def test_generate_equals_uncached_greedy(template: str, lora: bool) -> None:
    torch.manual_seed(0)
    head = CausalLMHead(path="tiny-llama", template=template,
                        lora={"r": 4, "alpha": 8, "dropout": 0.0} if lora else None).eval()
    tokens = visual(3, seed=3)
    with torch.no_grad():
        if lora:
            for name, p in head.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        batched = head.generate(tokens, QUESTIONS, max_new_tokens=6)
        singles = [head.generate(tokens[i : i + 1], [QUESTIONS[i]], max_new_tokens=6)[0] for i in range(3)]
        reference = [uncached_greedy(head, tokens[i : i + 1], QUESTIONS[i], 6) for i in range(3)]
    assert batched == singles == reference
    assert any(batched), "the tiny model should produce some text"


def left_padded_prompts(head: CausalLMHead) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeds, mask)`` of the three questions with random visual tokens, packed for ``generate``."""
    packed = head.pack(5, QUESTIONS, left=True)
    return head._embed(packed, visual(3, seed=4)), packed.attention_mask


def test_generate_stops_rows_independently(head: CausalLMHead) -> None:
    """Rows end at their own stop id; a row that never stops runs to the budget."""
    with torch.no_grad():
        embeds, mask = left_padded_prompts(head)
        free = decoding.generate(head.model, embeds, mask, 4, set(), 0)
        assert [len(r) for r in free] == [4, 4, 4]
        stop = free[1][1]  # make row 1's second token a stop: row 1 ends there, the others go on
        rows = decoding.generate(head.model, embeds, mask, 4, {stop}, 0)
    assert rows[1] == free[1][:1]
    for r, f in zip(rows, free, strict=True):
        assert r == f[: f.index(stop)] if stop in f else r == f


def test_generate_stops_at_multi_token_stop_strings(head: CausalLMHead) -> None:
    """A stop string of two tokens ends a row once its text appears (pad ids follow); the criterion is built once."""
    with torch.no_grad():
        embeds, mask = left_padded_prompts(head)
        free = decoding.generate(head.model, embeds, mask, 5, set(), 0)
        stop = head.tokenizer.decode(free[1][1:3])
        rows = decoding.generate(head.model, embeds, mask, 5, set(), 0, (stop,), head.tokenizer)
    for r, f in zip(rows, free, strict=True):
        end = next((k for k in range(1, len(f) + 1) if stop in head.tokenizer.decode(f[:k])), len(f))
        assert r == f[:end] + [0] * (len(f) - end)  # a stopped row is padded to the batch's length
    assert rows[1][3:] == [0, 0]
    assert decoding.stop_string_criteria(head.tokenizer, (stop,)) is decoding.stop_string_criteria(head.tokenizer, (stop,))


def test_pack_left_moves_rows_to_the_right_edge() -> None:
    right = pack([[1, 2], [1, 2, 3]], 1, [[4], [4]], None, pad_id=0)
    left = pack([[1, 2], [1, 2, 3]], 1, [[4], [4]], None, pad_id=0, left=True)
    assert right.attention_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert left.attention_mask.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert left.input_ids.tolist() == [[0, 1, 2, 0, 4], [1, 2, 3, 0, 4]]
    assert left.visual_mask.tolist() == [[False, False, False, True, False], [False, False, False, True, False]]
    assert left.position_ids.tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert left.lengths.tolist() == right.lengths.tolist() == [4, 5]


# -- label parsing -----------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("happiness", "happiness"),
        ("Happiness.", "happiness"),
        ("happy", "happiness"),
        ("JOY!", "happiness"),
        ("unhappy", "sadness"),
        ("angry", "anger"),
        ("sad", "sadness"),
        ("surprised", "surprise"),
        ("scared", "fear"),
        ("afraid", "fear"),
        ("disgusted", "disgust"),
        ("calm", "neutral"),
        ("The person in the image looks surprised.", "surprise"),
        ("The expression is sadness", "sadness"),
        ("I cannot tell.", None),
        ("", None),
        ("happy or sad", None),
        ("contempt", None),  # not a candidate: never mapped to a guess
        ("sadnesses", None),
    ],
)
def test_parse_label(text: str, expected: str | None) -> None:
    assert parse_label(text, CLASSES) == expected


def test_parse_label_custom_candidates_and_invalid_rate() -> None:
    assert parse_label("contemptuous", ["contempt", "neutral"]) == "contempt"
    assert parse_label("a smirk", ["smirk", "grin"]) == "smirk"
    assert parse_label("calm", ["happiness", "sadness"]) is None
    assert invalid_rate(["fear", None, "anger", None]) == 0.5 and invalid_rate([]) == 0.0


# -- causal-lm options ---------------------------------------------------------
def test_lora_trains_adapters_only_and_policies() -> None:
    head = CausalLMHead(path="tiny-llama", lora={"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]})
    trainable = [n for n, p in head.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    config = head.lm.peft_config["default"]
    assert (config.r, config.lora_alpha, set(config.target_modules)) == (8, 16, {"q_proj", "v_proj"})
    assert head.adapter_keys() == set(trainable)
    head.freeze()
    assert head.is_frozen
    head.unfreeze()
    assert [n for n, p in head.named_parameters() if p.requires_grad] == trainable
    every = CausalLMHead(path="tiny-llama", lora={"r": 2}, trainable="all")
    assert all(p.requires_grad for p in every.parameters())
    assert CausalLMHead(path="tiny-llama", trainable="none").is_frozen
    with pytest.raises(ValueError, match="trainable='lora' needs lora settings"):
        CausalLMHead(path="tiny-llama", trainable="lora")
    with pytest.raises(ValueError, match=r"lora: unknown key\(s\) \['rank'\]"):
        CausalLMHead(path="tiny-llama", lora={"rank": 8})


def test_lora_passes_peft_keywords_through_and_loads_with_peft(tmp_path) -> None:
    head = CausalLMHead(path="tiny-llama", lora={"r": 4, "alpha": 8, "use_rslora": True, "target_modules": "q_proj"})
    config = head.lm.peft_config["default"]
    assert (config.r, config.lora_alpha, config.use_rslora, set(config.target_modules)) == (4, 8, True, {"q_proj"})
    assert config.lora_dropout == 0.05  # emofer's default where peft's differs
    with torch.no_grad():
        for name, p in head.named_parameters():
            if "lora_B" in name:
                p.normal_()
    head.save_adapter(tmp_path / "new")
    assert {f.name for f in (tmp_path / "new").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    legacy = tmp_path / "legacy"  # a folder with peft's pickle-free .bin fallback
    legacy.mkdir()
    from peft import get_peft_model_state_dict

    torch.save(get_peft_model_state_dict(head.lm), legacy / "adapter_model.bin")
    for folder in (tmp_path / "new", legacy):
        other = CausalLMHead(path="tiny-llama", lora={"r": 4, "alpha": 8, "use_rslora": True, "target_modules": "q_proj"})
        other.load_adapter(folder)
        assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), other.state_dict().values(), strict=True))
    with pytest.raises(FileNotFoundError, match="holds no peft adapter"):
        other.load_adapter(tmp_path)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    tokens = visual(2)
    results = []
    for checkpointing in (False, True):
        head = CausalLMHead(path="tiny-llama", gradient_checkpointing=checkpointing).train()
        loss = head.loss(tokens, QUESTIONS[:2], ["fear", "anger"])
        loss.backward()
        results.append((loss.detach(), head.model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


def test_build_from_config_on_meta_device_has_llama_7b_size() -> None:
    vicuna_7b = {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
    }
    with torch.device("meta"):
        head = CausalLMHead(config=vicuna_7b, dtype="bfloat16")
    assert head.hidden_size == 4096 and head.pretrained_source is None and head.tokenizer is None
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in head.parameters())
    assert sum(p.numel() for p in head.parameters()) == 6_738_415_616
    with pytest.raises(RuntimeError, match="without a tokenizer; set llm.tokenizer"):
        head.embed_text(["hi"])


def test_missing_local_weights_fail_offline(tmp_path) -> None:
    with pytest.raises(OSError):
        CausalLMHead(path=str(tmp_path / "no-such-model"))


# -- classifier --------------------------------------------------------------
def test_classifier_maps_candidates_and_targets() -> None:
    torch.manual_seed(0)
    head = ClassifierHead(CLASSES, hidden_size=16).eval()
    tokens = torch.randn(4, 3, 16)
    scores = head.score(tokens, [""] * 4, ["anger", "fear"])
    torch.testing.assert_close(scores.logsumexp(-1), torch.zeros(4))
    torch.testing.assert_close(head.score(tokens, [""] * 4, ["fear", "anger"]), scores.flip(-1))
    batch_classes = ["neutral", "fear", "anger"]  # a data set with its own order
    targets = torch.tensor([0, 1, 2, 1])
    expected = nn.functional.cross_entropy(head.logits(tokens), torch.tensor([6, 1, 5, 1]))
    torch.testing.assert_close(head.loss(tokens, [""] * 4, [""] * 4, targets, batch_classes), expected)
    assert head.generate(tokens, [""] * 4) == [CLASSES[i] for i in head.logits(tokens).argmax(-1).tolist()]
    assert head.embed_text(["x"]) is None and head.text_dim is None
    with pytest.raises(ValueError, match=r"classifier has no class\(es\) \['contempt'\]"):
        head.score(tokens, [""] * 4, ["contempt"])


def test_token_ids_stay_right_when_the_memo_fills_up(monkeypatch):
    """A call whose texts are partly memoised and overflow the memo gets every text's ids (was a KeyError)."""
    from emofer.llm.causal_lm import CausalLMHead

    head = LLM_HEADS.build({"name": "causal-lm", "path": "tiny-llama"})
    assert isinstance(head, CausalLMHead)
    monkeypatch.setattr(CausalLMHead, "TEXT_MEMO_SIZE", 3)
    texts = ["happy face", "sad face", "an angry face", "a calm face"]
    want = [head.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert head.token_ids(texts[:2]) == want[:2]
    assert head.token_ids(texts) == want  # 2 memoised + 2 new > 3: cleared, all tokenized again
    assert head.token_ids(texts[1:3]) == want[1:3]
