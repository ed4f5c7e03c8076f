"""The window loop's memory: a float16 band plus float32 windows added a few classes at a time, and
a many-class head run a few classes at a time, both with the numbers of the whole operation."""

from __future__ import annotations

import numpy as np
import torch
from test_nnunet_predict import make_image, make_model

from voxpipe.pipelines.inference import predictor
from voxpipe.pipelines.inference.nnunet.model import NnUNetModel
from voxpipe.pipelines.inference.predictor import HeadChunks, _add


def test_adding_by_class_chunks_rounds_as_one_add():
    generator = torch.Generator().manual_seed(0)
    band = (torch.randn(21, 10, 6, 6, generator=generator) * 50).half()
    values = torch.randn(21, 4, 6, 6, generator=generator) * 30
    expected = band.clone()
    expected[:, 3:7] += values  # PyTorch's own mixed-type add: float32 arithmetic, float16 result
    _add(band, (slice(5, 9), slice(0, 6), slice(0, 6)), 2, values)
    assert torch.equal(band, expected)


def test_head_chunks_make_the_heads_output_class_by_class():
    torch.manual_seed(0)
    head = torch.nn.Conv3d(8, 40, 1)
    features = torch.randn(2, 8, 6, 5, 4)
    chunks = HeadChunks(features, head)
    assert chunks.shape == (2, 40, 6, 5, 4)
    with torch.no_grad():
        whole = head(features)
        for n in range(2):
            pieces = list(chunks.chunks(n))
            assert [c.start for c, _ in pieces] == [0, 16, 32]
            found = torch.cat([values for _, values in pieces])
            assert torch.allclose(found, whole[n], atol=1e-6)


def many_class_case(tmp_path):
    """A 40-class CT folder (more than twice the head's chunk) and a CT for it."""
    labels = {"background": 0, **{f"class_{c}": c for c in range(1, 40)}}
    folder = make_model(
        tmp_path / "model",
        spacing=[2.0, 2.0, 2.0],
        patch=[16, 16, 16],
        schemes=["CTNormalization"],
        labels=labels,
    )
    return folder, make_image(tmp_path / "ct_0000.nii.gz", shape=(20, 30, 30), spacing=(2.0, 2.0, 2.0))


def test_a_many_class_model_gives_the_same_logits_with_its_head_in_chunks(tmp_path, monkeypatch):
    folder, image = many_class_case(tmp_path)
    chunked = NnUNetModel(folder)
    made = []
    original = HeadChunks.chunks

    def counted(self, n):
        made.append(n)
        return original(self, n)

    monkeypatch.setattr(HeadChunks, "chunks", counted)
    from voxpipe.pipelines.inference.nnunet.readers import read_case

    found = chunked.logits(chunked.preprocess(read_case([image])))
    whole = NnUNetModel(folder)
    whole._head_chunks = False  # as when the probe finds the chunks differ: the head runs whole
    expected = whole.logits(whole.preprocess(read_case([image])))
    assert chunked._head_chunks is True and len(made) > 1  # probed, then used for the later windows
    assert torch.equal(found, expected)
    labels_found, _ = chunked.predict([image])
    labels_whole, _ = whole.predict([image])
    assert np.array_equal(labels_found, labels_whole)
    assert predictor.HEAD_CLASSES < 40 // 2
