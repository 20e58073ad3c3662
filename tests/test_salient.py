"""Foreground loss weights (train/salient.py)."""

import torch

from longvideo.train.salient import salient_weights


def test_salient_weights_pick_the_object_tokens():
    """A plain background (per-channel constant + small noise) with one object block: weight 1 + boost on
    exactly the block's tokens, 1 elsewhere; boost 0 gives ones; each clip uses its own background."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 1, 1, 1, generator=g) + 0.01 * torch.randn(2, 4, 5, 8, 8, generator=g)
    obj = torch.zeros(2, 1, 5, 8, 8, dtype=torch.bool)
    obj[0, :, 1:3, 2:4, 5:7] = True
    obj[1, :, :, 6:8, 0:1] = True
    x0 = x0 + 3.0 * obj * torch.tensor([1.0, -1.0, 0.5, 2.0]).view(1, 4, 1, 1, 1)
    w = salient_weights(x0, 4.0)
    assert w.shape == (2, 1, 5, 8, 8)
    assert torch.equal(w, torch.where(obj, 5.0, 1.0))
    assert torch.equal(salient_weights(x0, 0.0), torch.ones_like(w))
    # dilate 1: the block grown by one token in H and W (not in T), clipped at the edges
    grown = torch.nn.functional.max_pool3d(obj.float(), (1, 3, 3), stride=1, padding=(0, 1, 1)).bool()
    assert grown.sum() > obj.sum()
    assert torch.equal(salient_weights(x0, 4.0, dilate=1), torch.where(grown, 5.0, 1.0))
