"""LoRA on the video DiT (longvideo.train.lora): exact init, training touches only the adapters, save/load
round trip, merge back into a plain VideoDiT, config errors."""

from __future__ import annotations

import json

import pytest
import torch

from longvideo.errors import UserError
from longvideo.models.dit import build_dit
from longvideo.train.lora import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    LoRAConfig,
    add_lora,
    load_lora,
    load_lora_folder,
    lora_state_dict,
    merge_lora,
    save_lora,
)

FAMILIES = ["tiny-full3d", "tiny-motion"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _base(preset: str) -> torch.nn.Module:
    """A tiny DiT with every weight random: the real init zeroes proj_out, so its output would be all zero
    whatever the adapters do."""
    torch.manual_seed(0)
    model = build_dit(preset, device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.eval()


def _inputs(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    cfg = model.cfg
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, 2, 4, 4, generator=g)  # 2 frames of 2x2 patches
    t = torch.tensor([10.0, 700.0])
    text = torch.randn(2, 5, cfg.text_dim, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    return x, t, text, mask


def _run(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(*_inputs(model), None)  # (x, t, text, text_mask, cond): the unchanged signature


def _random_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero adapters (as after training) without the cost of training."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("preset", [*FAMILIES, "tiny-parallel"])
def test_init_is_exactly_the_base_model(preset):
    base_out = _run(_base(preset))
    model = add_lora(_base(preset), LoRAConfig(rank=4, feed_forward=True))
    assert base_out.abs().max() > 0.1  # a meaningful comparison
    assert torch.equal(_run(model), base_out)


@pytest.mark.parametrize("preset", FAMILIES)
def test_training_changes_only_the_adapters(preset):
    model = add_lora(_base(preset), LoRAConfig(rank=4, alpha=8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    base_out = _run(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    target = torch.randn_like(base_out)
    model.train()
    for _ in range(3):
        loss = (model(*_inputs(model)) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == ("lora_" in n), n  # every adapter weight moved (A from step 2), nothing else did
    assert (_run(model) - base_out).abs().max() > 1e-4


def test_trainable_parameter_count():
    # tiny-full3d: dim 48, 2 blocks x (attn1 + attn2) x (q, k, v, out) = 16 Linears 48 -> 48 (cross k/v read
    # the caption already projected to 48): rank 4 adds 4 * (48 + 48) each = 16 * 384 = 6144
    model = add_lora(_base("tiny-full3d"), LoRAConfig(rank=4))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 6144
    sd = lora_state_dict(model)
    assert len(sd) == 32 and sum(v.numel() for v in sd.values()) == 6144
    assert sd["transformer_blocks.1.attn2.to_out.0.lora_B.weight"].shape == (48, 4)
    # + feed-forward per block: 48 -> 192 and 192 -> 48, 2 * 4 * (48 + 192) = 1920
    model = add_lora(_base("tiny-full3d"), LoRAConfig(rank=4, feed_forward=True))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 6144 + 2 * 1920
    # a regex target: only block 0's self-attention q and k
    only = LoRAConfig(rank=2, targets=[r"transformer_blocks\.0\.attn1\.to_[qk]"])
    model = add_lora(_base("tiny-full3d"), only)
    assert sorted(lora_state_dict(model)) == [
        f"transformer_blocks.0.attn1.to_{c}.lora_{ab}.weight" for c in "kq" for ab in "AB"
    ]


def test_rank_zero_is_off():
    model = _base("tiny-full3d")
    keys = list(model.state_dict())
    assert add_lora(model, LoRAConfig(rank=0)) is model
    assert list(model.state_dict()) == keys and all(p.requires_grad for p in model.parameters())
    assert lora_state_dict(model) == {}


@pytest.mark.parametrize("preset", FAMILIES)
def test_save_load_round_trip(preset, tmp_path):
    cfg = LoRAConfig(rank=3, alpha=6.0, targets=["to_q", "to_v"], feed_forward=True)
    model = _random_lora(add_lora(_base(preset), cfg))
    save_lora(tmp_path / "lora", model, cfg)
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temps
    cfg2, sd = load_lora_folder(tmp_path / "lora")
    assert cfg2 == cfg
    fresh = load_lora(add_lora(_base(preset), cfg2), sd)
    assert torch.equal(_run(fresh), _run(model))


@pytest.mark.parametrize("preset", [*FAMILIES, "tiny-parallel"])
def test_merge_gives_a_plain_model(preset):
    keys = list(_base(preset).state_dict())
    model = _random_lora(add_lora(_base(preset), LoRAConfig(rank=4, feed_forward=True)))
    out = _run(model)
    merged = merge_lora(model)
    assert list(merged.state_dict()) == keys and not hasattr(merged, "peft_config")
    assert (_run(merged) - out).abs().max() <= 1e-5
    assert (out - _run(_base(preset))).abs().max() > 1e-3  # the adapters did something
    plain = build_dit(preset, device="cpu").eval()
    plain.load_state_dict(merged.state_dict())  # strict
    assert torch.equal(_run(plain), _run(merged))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rank": -1},
        {"rank": 4, "alpha": 0.0},
        {"rank": 4, "dropout": 1.0},
        {"rank": 4, "dropout": -0.1},
        {"rank": 4, "targets": []},
        {"rank": 4, "targets": ["to_q["]},
        {"rank": 4, "targets": [""]},
        {"rank": 4, "targets": "to_q"},  # a string, not a list
        {"rank": "4"},
        {"rank": 4, "alpha": "8"},
    ],
)
def test_bad_config(kwargs):
    with pytest.raises(UserError, match=r"^lora: "):
        LoRAConfig(**kwargs).validate()


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="matches no Linear"):
        add_lora(_base("tiny-full3d"), LoRAConfig(rank=4, targets=["to_qq"]))
    with pytest.raises(UserError, match="matches no Linear"):  # a Conv3d is not a LoRA target here
        add_lora(_base("tiny-full3d"), LoRAConfig(rank=4, targets=["pos_embed.proj"]))
    model = add_lora(_base("tiny-full3d"), LoRAConfig(rank=4))
    with pytest.raises(UserError, match="already has LoRA"):
        add_lora(model, LoRAConfig(rank=4))
    sd = lora_state_dict(model)
    missing = dict(list(sd.items())[1:])
    with pytest.raises(UserError, match="1 missing"):
        load_lora(model, missing)
    with pytest.raises(UserError, match="1 unexpected"):
        load_lora(model, {**sd, "transformer_blocks.0.ff.net.2.lora_A.weight": torch.zeros(4, 192)})
    other = lora_state_dict(add_lora(_base("tiny-full3d"), LoRAConfig(rank=2)))
    with pytest.raises(UserError, match="shape"):
        load_lora(model, other)
    with pytest.raises(UserError, match="rank 4 differs"):
        save_lora(tmp_path / "x", model, LoRAConfig(rank=2))
    with pytest.raises(UserError, match="alpha 4 differs"):
        save_lora(tmp_path / "x", model, LoRAConfig(rank=4, alpha=8))
    with pytest.raises(UserError, match="no LoRA adapters"):
        save_lora(tmp_path / "x", _base("tiny-full3d"), LoRAConfig(rank=4))
    with pytest.raises(UserError, match="not found"):
        load_lora_folder(tmp_path / "nothing")
    save_lora(tmp_path / "ok", model, LoRAConfig(rank=4))
    (tmp_path / "ok" / CONFIG_FILE).write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    with pytest.raises(UserError, match="not a longvideo-lora config"):
        load_lora_folder(tmp_path / "ok")
