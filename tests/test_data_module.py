"""EmoFERDataModule: the Batch contract, prompts, mixtures, class balance, DDP sharding, Lightning hooks."""

from __future__ import annotations

from collections import Counter

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from PIL import Image
from torchvision import transforms as T

from emofer.data.datamodule import EmoFERDataModule
from emofer.data.instructions import CATEGORY_TEMPLATE, category_question, make_prompt
from emofer.data.pipeline import collate
from emofer.data.sampler import GroupedBatchSampler, mixture_weights
from emofer.labels import BASIC7, FERID7

TF = T.Compose([T.Resize((16, 16)), T.ToTensor()])
PRIOR_TF = T.Compose([T.Resize((24, 24)), T.ToTensor()])


def _dm(data: dict, prior: bool = False, **kw) -> EmoFERDataModule:
    dm = EmoFERDataModule(data, transforms=lambda train: (TF, PRIOR_TF if prior else None), **kw)
    dm.setup()
    return dm


def test_ferid_wording_exactly():
    assert category_question(FERID7) == (
        "What is the facial expression of the person in the image? Choose one from the following options: "
        "{surprise, fear, disgust, happiness, sadness, anger, neutral}."
    )
    assert category_question(FERID7, video=True).startswith("What is the facial expression of the person in the video?")
    shuffled = {category_question(FERID7, rng=np.random.default_rng(s)) for s in range(10)}
    assert len(shuffled) > 5
    for q in shuffled:
        head, options = q.split("{")
        assert head == CATEGORY_TEMPLATE.split("{{")[0].format(medium="image")
        assert sorted(options.removesuffix("}.").split(", ")) == sorted(FERID7)
    q, a = make_prompt(BASIC7, 3, "conversation", rng=np.random.default_rng(0))
    assert "surprise" in a and q != category_question(BASIC7)


def test_eval_batch_follows_the_contract():
    dm = _dm({"train": [], "test": [{"name": "synthfer", "split": "test", "size": 10}], "eval_batch_size": 6},
             prior=True)
    batch = next(iter(dm.test_dataloader()[0]))
    assert set(batch) == {"ids", "pixels", "face_pixels", "questions", "answers", "classes", "targets",
                          "attributes", "landmarks"}
    assert batch["pixels"].shape == (6, 1, 3, 16, 16) and batch["pixels"].dtype == torch.float32
    assert batch["face_pixels"].shape == (6, 1, 3, 24, 24)
    assert batch["classes"] == list(BASIC7) and batch["targets"].tolist() == [0, 1, 2, 3, 4, 5]
    assert batch["answers"] == list(BASIC7[:6])
    assert set(batch["questions"]) == {category_question(BASIC7)}  # evaluation: fixed option order
    assert batch["attributes"]["race"].dtype == torch.long and batch["attributes"]["age"].max() < 8
    assert batch["landmarks"].shape == (6, 1, 68, 2) and batch["landmarks"].abs().max() < 1
    assert batch["ids"][0] == "synthfer-test-00000" and dm.names("test") == ["synthfer-test"]
    assert "face_pixels" not in next(iter(_dm({"train": [], "test": [{"name": "synthfer", "split": "test",
                                                                           "size": 2}]}).test_dataloader()[0]))


def test_train_batches_shuffle_options_and_can_converse():
    dm = _dm({"train": [{"name": "synthfer", "split": "train", "size": 42}], "batch_size": 7,
              "instruction": "mixed"})
    torch.manual_seed(0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 6
    questions = [q for b in batches for q in b["questions"]]
    category = [q for q in questions if q.startswith("What is the facial expression")]
    assert 5 < len(category) < len(questions) and len(set(category)) > 5
    for b in batches:
        for q, a, t in zip(b["questions"], b["answers"], b["targets"].tolist(), strict=True):
            assert (a == BASIC7[t]) if q in category else (BASIC7[t] in a)


def test_clips_batch_as_b_t_3_h_w_and_data_wide_num_frames_reaches_synthfer():
    dm = _dm({"train": [], "test": [{"name": "synthfer", "split": "test", "size": 4}], "num_frames": 3,
              "eval_batch_size": 4})
    assert dm.datasets["test"][0].num_frames == 3
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["pixels"].shape == (4, 3, 3, 16, 16) and batch["landmarks"].shape == (4, 3, 68, 2)
    assert "person in the video?" in batch["questions"][0]


def test_collate_pads_clips_of_different_length_and_rejects_mixed_classes():
    a = {"id": "a", "pixels": torch.zeros(2, 3, 4, 4), "question": "q", "answer": "x", "classes": ("x", "y"),
         "target": 0}
    b = {**a, "id": "b", "pixels": torch.ones(3, 3, 4, 4)}
    batch = collate([a, b])
    assert batch["pixels"].shape == (2, 3, 3, 4, 4) and batch["pixels"][0, 2].sum() == 0
    with pytest.raises(ValueError, match="different classes"):
        collate([a, {**b, "classes": ("x", "z")}])


def test_mixture_batches_never_mix_class_lists(tmp_path):
    for i in range(6):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / f"{i}.png")
    (tmp_path / "two.csv").write_text("path,label\n" + "\n".join(f"{i}.png,{'happy' if i % 2 else 'sad'}"
                                                                  for i in range(6)))
    data = {"train": [{"name": "synthfer", "split": "train", "size": 14, "weight": 1.0},
                      {"name": "csv", "file": str(tmp_path / "two.csv"), "weight": 3.0}], "batch_size": 2}
    dm = _dm(data)
    seen = Counter()
    for batch in dm.train_dataloader():  # collate raises if a batch mixed the two class lists
        assert batch["targets"].max() < len(batch["classes"])
        seen[tuple(batch["classes"])] += 1
    assert set(seen) == {BASIC7, ("happiness", "sadness")}


def test_sampler_weights_balance_and_epochs():
    groups = [0] * 90 + [1] * 10
    labels = [[0] * 80 + [1] * 10, [0] * 10]
    w = mixture_weights([90, 10], [1.0, 1.0], labels)
    sampler = GroupedBatchSampler(groups, batch_size=10, weights=w, num_batches=400, seed=0)
    batches = list(sampler)
    share = sum(b[0] >= 90 for b in batches) / len(batches)
    assert 0.4 < share < 0.6  # equal weights: half the draws from the small set
    first = [i for b in batches if b[0] < 90 for i in b]
    minority = sum(i >= 80 for i in first) / len(first)
    assert 0.4 < minority < 0.6  # class 1 is 1/9 of the set but half of its draws
    assert mixture_weights([5, 5]) is None and mixture_weights([5, 10], [1, 2]) is None
    plain = GroupedBatchSampler([0] * 10, batch_size=5, seed=1)
    epoch0, epoch1 = list(plain), list(plain)
    assert sorted(sum(epoch0, [])) == list(range(10)) and epoch0 != epoch1
    plain.set_epoch(0)
    assert list(plain) == epoch0


def test_sampler_shards_batches_across_ranks_through_lightning_wrapper():
    def sampler() -> GroupedBatchSampler:  # every rank holds its own copy, as DDP processes do
        return GroupedBatchSampler([0] * 40 + [1] * 40, batch_size=4, seed=3)

    whole = list(sampler())
    ranks = [list(DistributedSamplerWrapper(sampler(), num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 10
    assert sorted(map(tuple, ranks[0] + ranks[1])) == sorted(map(tuple, whole))


def test_lightning_can_inject_its_distributed_sampler_into_the_train_loader():
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DataLoader

    dm = _dm({"train": [{"name": "synthfer", "split": "train", "size": 28}], "batch_size": 4})
    with _replace_dunder_methods(DataLoader, "dataset"):  # what Lightning does around the hook
        loader = dm.train_dataloader()
    assert len(loader) == 7
    rank1 = _update_dataloader(loader, DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=1,
                                                                 shuffle=False))
    assert isinstance(rank1.sampler, DistributedSamplerWrapper) and len(rank1) == 4
    batches = list(rank1)
    assert len(batches) == 4 and all(b["pixels"].shape == (4, 1, 3, 16, 16) for b in batches)


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 7)
        self.seen: list[str] = []

    def training_step(self, batch, _):
        self.seen += batch["ids"]
        assert "skipped" not in batch
        return torch.nn.functional.cross_entropy(self.head(batch["pixels"].mean((1, 3, 4))), batch["targets"])

    def test_step(self, batch, _, dataloader_idx=0):
        self.seen += batch["ids"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trains_and_tests_from_the_datamodule():
    dm = EmoFERDataModule(
        {"train": [{"name": "synthfer", "split": "train", "size": 14}],
         "test": [{"name": "synthfer", "split": "test", "size": 7}, {"name": "synthfer", "split": "val", "size": 7}],
         "batch_size": 7},
        transforms=lambda train: (TF, None),
    )
    model = _Tiny()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 14
    model.seen = []
    trainer.test(model, datamodule=dm, verbose=False)
    assert sorted(model.seen)[:1] == ["synthfer-test-00000"] and len(model.seen) == 14


def test_a_plain_user_dataset_plugs_in(tmp_path):
    from torch.utils.data import Dataset

    from emofer.data import DATASETS

    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "train.txt").write_text("\n".join(f"{tmp_path / f'{i}.png'} {int(i < 4)}" for i in range(6)))

    @DATASETS.register("test-my-faces", force=True)
    class MyFaces(Dataset):
        """My lab's faces: one image per line."""

        def __init__(self, root: str, split: str = "train"):
            self.rows = [line.split() for line in open(f"{root}/{split}.txt")]

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            path, label = self.rows[i]
            return {"id": path, "media": path, "label": int(label), "classes": ["neutral", "happiness"]}

    dm = _dm({"train": [{"name": "test-my-faces", "root": str(tmp_path)}], "batch_size": 3,
              "balanced_sampler": True})
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and batches[0]["classes"] == ["neutral", "happiness"]
    assert batches[0]["pixels"].shape == (3, 1, 3, 16, 16) and "attributes" not in batches[0]
