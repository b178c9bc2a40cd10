"""Regenerates ``facexformer_reference.json`` from the official FaceXFormer code.

Usage (from the repository root, with a checkout of Kartik-3004/facexformer)::

    python tests/data/make_facexformer_reference.py /path/to/facexformer tests/data/facexformer_reference.json

The official model is built with random backbone weights (its ImageNet
download is bypassed), given the seeded weights of ``seeded_state`` in
``tests/test_facexformer.py``, and run once per task id on copies of
``reference_input()``; the outputs for the first copy are stored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torchvision


def main(official_checkout: str, out_path: str) -> None:
    sys.path.insert(0, official_checkout)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import network.models.facexformer as official
    from test_facexformer import reference_input, seeded_state

    official.swin_b = lambda weights=None: torchvision.models.swin_b(weights=None)
    model = official.FaceXFormer().eval()
    model.load_state_dict(seeded_state(model.state_dict()), strict=True)
    pixels = reference_input().expand(6, -1, -1, -1).contiguous()
    with torch.no_grad():
        lm, pose, attr, vis, age, gender, race, parsing = model(pixels, None, torch.arange(6))
    reference = {
        "landmarks": lm.view(-1, 68, 2)[0].flatten().tolist(),
        "headpose": pose[0].tolist(),
        "attributes": attr[0].tolist(),
        "visibility": vis[0].tolist(),
        "age": age[0].tolist(),
        "gender": gender[0].tolist(),
        "race": race[0].tolist(),
        "parsing_subsampled": parsing[0, :, ::16, ::16].flatten().tolist(),
        "parsing_mean": parsing.mean().item(),
    }
    Path(out_path).write_text(json.dumps(reference))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
