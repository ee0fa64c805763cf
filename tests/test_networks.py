"""The paper's networks (issue 4): Mean Imputation maths, T2Sag skips, variants, noise sampler."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from cordfuse.nn.networks import (
    CORRECTIONS,
    NET_PRESETS,
    AnchoredNet,
    CordNet,
    EarlyFusionNet,
    FeatureNoise,
    NetConfig,
    distillation_loss,
    mean_impute,
)
from cordfuse.sequences import SEQUENCES
from cordfuse.training.losses import deep_supervision_weights

SMALL = NET_PRESETS["small"]


def tiny_input(batch=2, channels=6, seed=0):
    """Random images of ``channels`` sequences (the network input is :func:`covered` of them)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *SMALL.patch_size, generator=generator)


def covered(images):
    """The network input of fully covered images: the images, then their coverage masks."""
    return torch.cat([images, torch.ones_like(images)], dim=1)


def assert_missing_sequences_cannot_change_the_answer(net):
    """Sample 0 has T2Sag and STIR, sample 1 T2Sag alone: new pixels of their missing sequences
    leave the logits as they were; new pixels of an available one change them."""
    x = tiny_input(batch=2)
    flags = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    reference = net(covered(x), flags).logits[0]
    x2 = x.clone()
    x2[0, 2:] = torch.randn_like(x2[0, 2:])
    x2[1, 1:] = torch.randn_like(x2[1, 1:])
    torch.testing.assert_close(net(covered(x2), flags).logits[0], reference)
    x3 = x.clone()
    x3[0, 1] = torch.randn_like(x3[0, 1])
    assert not torch.allclose(net(covered(x3), flags).logits[0][0], reference[0])
    return x, flags


class TestArchitecture:
    def test_paper_preset_matches_the_paper(self):
        paper = NET_PRESETS["paper"]
        assert paper.features == (32, 64, 128, 256, 320)
        assert paper.patch_size == (48, 48, 320)
        assert sum(1 for s in paper.strides if max(s) > 1) == 4, "four downsamplings"
        factor = np.prod(np.array(paper.strides), axis=0)
        assert (0.5 * factor).tolist() == [4.0, 4.0, 8.0], "bottleneck at 4x4x8 mm (paper 2.3)"
        net = CordNet(paper, ["T2Sag"])
        assert [
            m.out_channels
            for m in net.encoders["T2Sag"].stages[-1][0].convs[0].modules()
            if isinstance(m, torch.nn.Conv3d)
        ] == [320]

    def test_outputs_two_finest_deep_supervision_levels(self):
        net = CordNet(SMALL, ["T2Sag"])
        out = net(covered(tiny_input(channels=1)))
        assert len(out.logits) == 2
        assert out.logits[0].shape == (2, 2, *SMALL.patch_size)
        assert out.logits[1].shape == (2, 2, 12, 12, 32)
        assert deep_supervision_weights(2) == pytest.approx([2 / 3, 1 / 3])

    def test_invalid_configurations(self):
        with pytest.raises(ValueError, match="start with T2Sag"):
            CordNet(SMALL, ["STIR", "T2Sag"])
        with pytest.raises(ValueError, match="not divisible"):
            NetConfig(patch_size=(48, 48, 100))
        net = CordNet(SMALL, ["T2Sag", "STIR"])
        with pytest.raises(ValueError, match="every one of its sequences"):
            net(covered(tiny_input(channels=2)), torch.tensor([[True, True], [True, False]]))


class TestMeanImputation:
    def test_per_sample_imputation_in_a_mixed_batch(self):
        generator = torch.Generator().manual_seed(1)
        features = torch.randn(3, 6, 4, 2, 2, 2, generator=generator)
        available = torch.tensor(
            [[1, 0, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool
        )
        batch = mean_impute(features, available)
        for i in range(3):
            alone = mean_impute(features[i : i + 1], available[i : i + 1])
            torch.testing.assert_close(batch[i : i + 1], alone)
        expected = features[0, [0, 2, 5]].mean(dim=0)
        torch.testing.assert_close(batch[0, 1], expected)
        torch.testing.assert_close(batch[0, 2], features[0, 2])  # available ones untouched
        torch.testing.assert_close(batch[1], features[1])

    def test_t2sag_only_replicates_its_features_six_times(self):
        net = CordNet(SMALL, list(SEQUENCES), mean_imputation=True).eval()
        x = tiny_input(batch=1)
        only_t2 = torch.tensor([[True] + [False] * 5])
        out = net(covered(x), only_t2)
        fused_input = mean_impute(out.features, only_t2)
        for k in range(6):
            torch.testing.assert_close(fused_input[:, k], out.features[:, 0])
        # Other sequences' pixels cannot matter when they are marked missing.
        x2 = x.clone()
        x2[:, 1:] = torch.randn_like(x2[:, 1:])
        torch.testing.assert_close(net(covered(x2), only_t2).logits[0], out.logits[0])

    def test_replicated_features_through_fusion_equal_one_conv_with_summed_weights(self):
        net = CordNet(SMALL, list(SEQUENCES), mean_imputation=True)
        c = SMALL.bottleneck_channels
        f = torch.randn(2, c, 6, 6, 4)
        replicated = net.fusion(torch.cat([f] * 6, dim=1))
        summed = torch.nn.Conv3d(c, c, 1)
        with torch.no_grad():
            summed.weight.copy_(net.fusion.weight.view(c, 6, c, 1, 1, 1).sum(dim=1))
            summed.bias.copy_(net.fusion.bias)
        torch.testing.assert_close(replicated, summed(f), rtol=1e-4, atol=1e-4)

    def test_skips_come_from_t2sag_only(self):
        net = CordNet(SMALL, list(SEQUENCES), mean_imputation=True)
        c = SMALL.bottleneck_channels
        with torch.no_grad():  # cut the bottleneck path of every non-T2Sag encoder
            net.fusion.weight[:, c:] = 0
        out = net(covered(tiny_input()))
        out.logits[0].sum().backward()
        for seq in SEQUENCES[1:]:
            grads = [p.grad for p in net.encoders[seq].parameters()]
            assert all(g is None or torch.count_nonzero(g) == 0 for g in grads), seq
        t2_grads = [p.grad for p in net.encoders["T2Sag"].stages[0].parameters()]
        assert any(g is not None and torch.count_nonzero(g) > 0 for g in t2_grads)


class TestVariants:
    def test_frozen_encoder_is_bit_identical_after_training_steps(self):
        net = CordNet(SMALL, list(SEQUENCES), mean_imputation=True)
        net.freeze_encoder("T2Sag")
        before = {k: v.clone() for k, v in net.encoders["T2Sag"].state_dict().items()}
        other = {k: v.clone() for k, v in net.encoders["STIR"].state_dict().items()}
        optimiser = torch.optim.SGD(
            [p for p in net.parameters() if p.requires_grad],
            lr=0.1,
            momentum=0.99,
            nesterov=True,
            weight_decay=3e-5,
        )
        for step in range(3):
            out = net(covered(tiny_input(seed=step)))
            loss = sum(o.float().pow(2).mean() for o in out.logits)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        for key, value in net.encoders["T2Sag"].state_dict().items():
            assert torch.equal(value, before[key]), key
        changed = [
            not torch.equal(v, other[k]) for k, v in net.encoders["STIR"].state_dict().items()
        ]
        assert any(changed)

    def test_distillation_loss_is_equation_2(self):
        features = torch.zeros(3, 6, 2, 1, 1, 1)
        features[:, 0] = 1.0  # T2Sag
        features[0, 1] = 3.0  # |1-3| = 2
        features[0, 2] = 0.0  # |1-0| = 1
        features[1, 4] = -1.0  # |1+1| = 2
        available = torch.tensor(
            [[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool
        )
        loss = distillation_loss(features, available)
        # subject 0: (2 + 1) / 2 = 1.5; subject 1: 2 / 1 = 2; subject 2 (T2Sag only): 0.
        assert float(loss) == pytest.approx((1.5 + 2.0 + 0.0) / 3)
        only_t2 = torch.zeros(2, 6, dtype=torch.bool)
        only_t2[:, 0] = True
        assert float(distillation_loss(torch.randn(2, 6, 3, 1, 1, 1), only_t2)) == 0.0

    def test_feature_noise_only_during_training(self):
        noisy = CordNet(SMALL, ["T2Sag"], feature_noise=FeatureNoise())
        x = tiny_input(channels=1)
        noisy.eval()
        torch.testing.assert_close(noisy(covered(x)).logits[0], noisy(covered(x)).logits[0])
        noisy.train()
        assert not torch.allclose(noisy(covered(x)).logits[0], noisy(covered(x)).logits[0])


class TestFeatureNoise:
    def test_mixture_fraction_and_variance(self):
        noise = FeatureNoise()
        draws = noise.sample((400_000,), generator=torch.Generator().manual_seed(0)).double()
        small = (draws.abs() < 0.05).double().mean().item()
        p_logistic = 1.0  # logistic(0, 0.002) lies within 0.05 with probability ~1
        p_normal = stats.norm.cdf(0.05 / 0.4) - stats.norm.cdf(-0.05 / 0.4)
        expected = 0.25 * p_logistic + 0.75 * p_normal
        assert small == pytest.approx(expected, abs=0.005)
        variance = 0.25 * (np.pi**2 * 0.002**2 / 3) + 0.75 * 0.4**2
        assert draws.var().item() == pytest.approx(variance, rel=0.02)
        assert abs(draws.mean().item()) < 0.003
        tiny = draws[draws.abs() < 0.05]
        # Within the logistic core the draws follow logistic(0, 0.002): quartiles at +-s ln 3.
        core = tiny[tiny.abs() < 0.02]
        q1, q3 = np.percentile(core.numpy(), [25, 75])
        assert q3 - q1 == pytest.approx(2 * 0.002 * np.log(3), rel=0.15)

    def test_parameters_are_configurable(self):
        noise = FeatureNoise(weight=0.5, logistic_scale=0.01, normal_sigma=1.0)
        draws = noise.sample((200_000,), generator=torch.Generator().manual_seed(1)).double()
        assert draws.var().item() == pytest.approx(0.5 + 0.5 * np.pi**2 * 1e-4 / 3, rel=0.03)


class TestAllLevelFusion:
    def test_every_skip_carries_every_sequence(self):
        """With all-level fusion a non-T2Sag encoder reaches the output through its skips even
        when its bottleneck path is cut; with the paper's fusion it does not (see above)."""
        net = CordNet(SMALL, list(SEQUENCES), mean_imputation=True, fusion="all-levels")
        assert len(net.skip_fusions) == len(SMALL.features) - 1
        c = SMALL.bottleneck_channels
        with torch.no_grad():
            net.fusion.weight[:, c:] = 0
        out = net(covered(tiny_input()))
        out.logits[0].sum().backward()
        for seq in SEQUENCES[1:]:
            first_stage = [p.grad for p in net.encoders[seq].stages[0].parameters()]
            assert any(g is not None and torch.count_nonzero(g) > 0 for g in first_stage), seq

    def test_missing_sequences_are_imputed_at_every_level(self):
        """A sequence marked missing cannot change the answer, at any level, and T2Sag alone
        gives each level's T2Sag features replicated (equation 1 per level)."""
        net = CordNet(SMALL, list(SEQUENCES), mean_imputation=True, fusion="all-levels").eval()
        x, flags = assert_missing_sequences_cannot_change_the_answer(net)
        skips = net.encoders["T2Sag"](covered(x[1:, :1]))
        fuse = net.skip_fusions[0]
        replicated = fuse(torch.cat([skips[0]] * 6, dim=1))
        alone = net._fuse_level(fuse, [skips[0]] + [torch.zeros_like(skips[0])] * 5, flags[1:])
        torch.testing.assert_close(alone, replicated)

    def test_t2sag_may_be_missing_only_with_all_level_fusion(self):
        flags = torch.tensor([[0, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
        net = CordNet(SMALL, list(SEQUENCES), mean_imputation=True, fusion="all-levels").eval()
        x = tiny_input()
        reference = net(covered(x), flags).logits[0]
        x2 = x.clone()
        x2[0, 0] = torch.randn_like(x2[0, 0])  # the missing T2Sag of sample 0 cannot matter
        torch.testing.assert_close(net(covered(x2), flags).logits[0], reference)
        paper = CordNet(SMALL, list(SEQUENCES), mean_imputation=True)
        with pytest.raises(ValueError, match="every sample needs T2Sag"):
            paper(covered(x), flags)

    def test_needs_several_sequences(self):
        with pytest.raises(ValueError, match="more than one sequence"):
            CordNet(SMALL, ["T2Sag"], fusion="all-levels")
        with pytest.raises(ValueError, match="fusion must be one of"):
            CordNet(SMALL, list(SEQUENCES), fusion="everywhere")


def test_unused_deep_supervision_heads_are_gone_and_old_checkpoints_load():
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import build_model

    model = build_model(TrainConfig(model="baseline", preset="small"))
    levels = model.config.deep_supervision_levels
    heads = list(model.decoder.seg_layers)
    assert all(isinstance(h, torch.nn.Identity) for h in heads[:-levels])
    assert all(isinstance(h, torch.nn.Conv3d) for h in heads[-levels:])
    out = model(covered(torch.randn(2, 1, *model.config.patch_size)))
    assert len(out.logits) == levels and all(t.shape[1] == 2 for t in out.logits)
    # A checkpoint of the time when every head had weights still loads, strictly.
    old = dict(model.state_dict())
    old["decoder.seg_layers.0.weight"] = torch.zeros(2, 4, 1, 1, 1)
    old["decoder.seg_layers.0.bias"] = torch.zeros(2)
    model.load_state_dict(old)


class TestCoverageInput:
    def test_uncovered_does_not_look_like_an_average_cord_voxel(self):
        """Outside a field of view the image is 0, which after the z-score is an average cord
        voxel: only the coverage channel tells the network which of the two it is."""
        net = CordNet(SMALL, ["T2Sag"]).eval()
        images = tiny_input(batch=1, channels=1)
        images[..., :20] = 0.0  # the lower slices: zero in the image channel
        inside = covered(images)
        outside = inside.clone()
        outside[:, 1, ..., :20] = 0.0  # ... because the scan does not reach them
        assert not torch.allclose(net(inside).logits[0], net(outside).logits[0])

    def test_old_networks_read_images_only(self):
        old = CordNet(replace(SMALL, coverage_input=False), ["T2Sag", "STIR"])
        assert old.encoders["T2Sag"].stages[0][0].convs[0].conv.in_channels == 1
        assert old(tiny_input(channels=2)).logits[0].shape[0] == 2
        with pytest.raises(ValueError, match="expected 4 channels, got 2"):
            CordNet(SMALL, ["T2Sag", "STIR"])(tiny_input(channels=2))


class TestEarlyFusion:
    def test_a_missing_sequence_cannot_change_the_answer(self):
        assert_missing_sequences_cannot_change_the_answer(
            EarlyFusionNet(SMALL, list(SEQUENCES)).eval()
        )

    def test_one_encoder_over_every_channel_and_t2sag_required(self):
        net = EarlyFusionNet(SMALL, list(SEQUENCES))
        assert net.encoder.stages[0][0].convs[0].conv.in_channels == 12
        out = net(covered(tiny_input()))
        assert [t.shape[1] for t in out.logits] == [2, 2]
        with pytest.raises(ValueError, match="every sample needs T2Sag"):
            net(covered(tiny_input()), torch.tensor([[0, 1, 1, 1, 1, 1]] * 2, dtype=torch.bool))


@pytest.mark.parametrize("correction", CORRECTIONS)
class TestAnchored:
    @staticmethod
    def anchored_and_anchor(correction):
        torch.manual_seed(3)
        anchor = CordNet(SMALL, ["T2Sag"]).eval()
        net = AnchoredNet(SMALL, list(SEQUENCES), correction=correction)
        net.anchor.load_state_dict(anchor.state_dict())
        return net, anchor

    def test_the_correction_starts_at_zero(self, correction):
        net, anchor = self.anchored_and_anchor(correction)
        net.eval()
        x = covered(tiny_input())
        out = net(x)  # every sequence: the correction runs, and adds exactly zero
        expected = anchor(x[:, [0, 6]]).logits
        for got, want in zip(out.logits, expected, strict=True):
            assert torch.equal(got, want)

    def test_t2sag_alone_is_the_anchor_bit_for_bit_after_training(self, correction):
        net, anchor = self.anchored_and_anchor(correction)
        before = {k: v.clone() for k, v in net.anchor.state_dict().items()}
        optimiser = torch.optim.SGD(
            [p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9
        )
        net.train()
        for step in range(2):
            out = net(covered(tiny_input(seed=step)))
            out.logits[0][:, 1].mean().backward()
            optimiser.step()
            optimiser.zero_grad()
        assert not net.anchor.training, "the anchor always predicts as in evaluation"
        for key, value in net.anchor.state_dict().items():
            assert torch.equal(value, before[key]), key
        net.eval()
        x = covered(tiny_input(seed=5))
        only_t2 = torch.tensor([[True] + [False] * 5] * 2)
        alone = net(x, only_t2).logits
        for got, want in zip(alone, anchor(x[:, [0, 6]]).logits, strict=True):
            assert torch.equal(got, want)
        # With more sequences the trained correction does change the answer, and in a mixed
        # batch a sample with T2Sag alone still gets the anchor's logits exactly.
        mixed = torch.tensor([[True] * 6, [True] + [False] * 5])
        both = net(x, mixed).logits[0]
        assert not torch.allclose(both[0], alone[0][0])
        assert torch.equal(both[1], alone[0][1])

    def test_needs_more_than_t2sag(self, correction):
        with pytest.raises(ValueError, match="more sequences"):
            AnchoredNet(SMALL, ["T2Sag"], correction=correction)


class TestSequenceSupervision:
    @pytest.mark.parametrize("fusion", ["bottleneck", "all-levels"])
    def test_one_other_encoder_segments_alone_in_training(self, fusion):
        torch.manual_seed(0)
        net = CordNet(
            SMALL, list(SEQUENCES), mean_imputation=True, fusion=fusion, sequence_supervision=True
        )
        flags = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 1]], dtype=torch.bool)
        out = net(covered(tiny_input()), flags)
        alone, has, index = out.extra["sequence_alone"]
        assert [t.shape for t in alone] == [t.shape for t in out.logits]
        # The auxiliary loss alone reaches the first stage of exactly one non-T2Sag encoder.
        sum(t[has].sum() for t in alone).backward()
        reached = [
            seq
            for seq in SEQUENCES[1:]
            if any(
                p.grad is not None and torch.count_nonzero(p.grad) > 0
                for p in net.encoders[seq].stages[0].parameters()
            )
        ]
        assert len(reached) == 1
        assert SEQUENCES.index(reached[0]) == index
        assert has.tolist() == flags[:, index].tolist()
        net.eval()
        assert "sequence_alone" not in net(covered(tiny_input()), flags).extra

    def test_needs_mean_imputation(self):
        with pytest.raises(ValueError, match="sequence supervision needs"):
            CordNet(SMALL, list(SEQUENCES), sequence_supervision=True)


def _conv_kernels(model, x, available) -> set[str]:
    """The convolution kernels a forward pass of ``model`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x, available)
    return {
        e.key
        for e in prof.key_averages()
        if e.key.startswith(("aten::mkldnn_conv", "aten::slow_conv3d"))
    }


def test_onednn_convolutions_replace_the_slow_kernel_and_give_the_same_logits():
    """One window of the small preset alone: PyTorch gives its deep levels to the slow im2col
    kernel; after use_onednn_convolutions every convolution is oneDNN's, with the same logits."""
    from cordfuse.nn.device import OneDNNConv3d, use_onednn_convolutions
    from cordfuse.nn.sliding import predict_probabilities

    torch.manual_seed(0)
    net = CordNet(SMALL, ["T2Sag", "STIR"], mean_imputation=True).eval()
    x = torch.randn(1, 2 * (1 + SMALL.coverage_input), *SMALL.patch_size)
    available = torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        before = net(x, available).logits[0]
        assert "aten::slow_conv3d_forward" in _conv_kernels(net, x, available)
        use_onednn_convolutions(net)
        after = net(x, available).logits[0]
        kernels = _conv_kernels(net, x, available)
    assert "aten::slow_conv3d_forward" not in kernels and "aten::mkldnn_convolution" in kernels
    assert all(type(m) is not torch.nn.Conv3d for m in net.modules())
    assert any(isinstance(m, OneDNNConv3d) for m in net.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # the sliding window makes a CPU model's convolutions oneDNN's (validation in training too)
    fresh = CordNet(SMALL, ["T2Sag", "STIR"], mean_imputation=True).eval()
    predict_probabilities(fresh, x[0].numpy(), np.ones(2, bool), patch_z=SMALL.patch_size[2])
    assert all(type(m) is not torch.nn.Conv3d for m in fresh.modules())
    # with gradients (training) PyTorch chooses again: a backward pass still works
    net.train()
    net(x, available).logits[0].sum().backward()
    assert all(p.grad is not None for p in net.encoders["T2Sag"].parameters())
