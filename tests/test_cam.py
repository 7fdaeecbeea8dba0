import dataclasses

import pytest
import torch
import torch.nn.functional as F

from asdt_lightning.method.cam import (
    CAM_THRESHOLDS,
    IGNORE_INDEX,
    TeacherAParams,
    background_score,
    cam_label_maps,
    merge_multiscale_cams,
    normalize_cams,
    otsu_thresholds,
    refinement_teacher_labels,
    reliable_cam_labels,
)
from asdt_lightning.method.crf import CRFParams

H = W = 16
PARAMS = TeacherAParams(crf=CRFParams(iterations=5, window=5))


def scene():
    """A grey image with a red square object (rows/cols 4..11) and a CAM peaked at the object's centre."""
    img = torch.full((1, 3, H, W), 120.0)
    img[:, :, 4:12, 4:12] = torch.tensor([210.0, 40.0, 40.0])[:, None, None]
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    cam = torch.exp(-((yy - 7.5) ** 2 + (xx - 7.5) ** 2) / (2 * 2.5**2))
    cam[cam < 0.02] = 0.0
    raw = torch.stack([cam * 3.0, torch.rand(H, W)])[None]  # class 1's CAM is noise, and class 1 is absent
    labels = torch.tensor([[1.0, 0.0]])
    return img, raw, labels


def test_normalize_cams_keeps_image_classes_and_scales_to_one():
    _, raw, labels = scene()
    raw[0, 0, 0, 0] = -4.0
    norm = normalize_cams(raw, labels)
    assert torch.allclose(norm[0, 0].max(), torch.tensor(1.0), atol=1e-4)
    assert norm[0, 0].min() == 0.0
    assert torch.all(norm[0, 1] == 0)


def test_merge_multiscale_cams_resizes_and_averages():
    a, b = torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 4, 4)
    merged = merge_multiscale_cams([a, b], (8, 8))
    assert merged.shape == (2, 3, 8, 8) and torch.allclose(merged, torch.full_like(merged, 0.5))


def test_background_score_is_one_where_no_class_fires():
    norm = torch.zeros(1, 2, 4, 4)
    norm[0, 0, 0, 0] = 0.5
    bg = background_score(norm, power=2)
    assert bg.shape == (1, 1, 4, 4)
    assert bg[0, 0, 0, 0] == 0.25 and bg[0, 0, 3, 3] == 1.0


def test_reliable_labels_on_a_crafted_cam():
    img, raw, labels = scene()
    norm = normalize_cams(raw, labels)
    y = reliable_cam_labels(img, norm, labels, PARAMS)[0]
    assert y.shape == (H, W) and y.dtype == torch.long
    assert set(y.unique().tolist()) <= {0, 1, IGNORE_INDEX}
    assert y[7, 7] == 1 and y[8, 8] == 1  # the CAM's peak is the object
    assert y[0, 0] == 0 and y[15, 15] == 0  # far from any activation: background
    assert (y == IGNORE_INDEX).any()  # the CAM's fringe is not reliable
    assert torch.all(y[4:12, 4:12] != 0)  # no object pixel is called background


def test_stricter_percentile_keeps_fewer_foreground_pixels():
    img, raw, labels = scene()
    norm = normalize_cams(raw, labels)
    loose = reliable_cam_labels(img, norm, labels, dataclasses.replace(PARAMS, fg_percentile=0.0))
    strict = reliable_cam_labels(img, norm, labels, dataclasses.replace(PARAMS, fg_percentile=0.9))
    assert (strict == 1).sum() < (loose == 1).sum()
    assert (strict == 1).sum() > 0


def test_image_with_no_class_gets_no_foreground_label():
    img, raw, _ = scene()
    empty = torch.zeros(1, 2)
    y = reliable_cam_labels(img, normalize_cams(raw, empty), empty, PARAMS)
    assert set(y.unique().tolist()) <= {0, IGNORE_INDEX}
    assert (y == 0).float().mean() > 0.9


def test_padding_is_ignored():
    img, raw, labels = scene()
    valid = torch.ones(1, H, W, dtype=torch.bool)
    valid[:, :, 12:] = False
    y = reliable_cam_labels(img, normalize_cams(raw, labels), labels, PARAMS, valid=valid)
    assert torch.all(y[:, :, 12:] == IGNORE_INDEX)
    assert y[0, 0, 0] == 0


def test_without_background_labels_are_the_image_classes():
    img = torch.full((1, 3, H, W), 100.0)
    img[:, 1, :, 8:] = 220.0
    raw = torch.zeros(1, 3, H, W)
    raw[0, 0, :, :8] = torch.linspace(1, 2, 8)
    raw[0, 2, :, 8:] = torch.linspace(2, 1, 8)
    raw[0, 1] = 5.0  # class 1 is absent: its strong CAM must not matter
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    y = reliable_cam_labels(img, normalize_cams(raw, labels), labels, PARAMS, has_background=False)[0]
    assert set(y.unique().tolist()) <= {0, 2, IGNORE_INDEX}
    assert y[5, 7] == 0 and y[5, 8] == 2


def test_cam_label_maps_threshold_the_background():
    norm = torch.zeros(1, 2, 2, 2)
    norm[0, 0, 0, 0] = 0.9
    norm[0, 1, 1, 1] = 0.4
    labels = torch.tensor([[1.0, 1.0]])
    seg = cam_label_maps(norm, labels, [0.5])[0, 0]
    assert seg.tolist() == [[1, 0], [0, 0]]
    seg = cam_label_maps(norm, labels, [0.3])[0, 0]
    assert seg.tolist() == [[1, 0], [0, 2]]
    assert cam_label_maps(norm, torch.tensor([[0.0, 1.0]]), None)[0, 0].unique().tolist() == [1]


def constant_background_argmax(norm, labels, threshold):
    """The CAM baseline by its definition: argmax over [threshold, the image's CAMs] (absent classes -1)."""
    scores = norm.masked_fill(~(labels > 0)[:, :, None, None], -1.0)
    if threshold is None:
        return scores.argmax(1)
    return torch.cat([torch.full_like(scores[:, :1], threshold), scores], 1).argmax(1)


def test_cam_label_maps_equal_the_argmax_with_a_constant_background():
    torch.manual_seed(0)
    norm = torch.rand(3, 4, 6, 5).round(decimals=1)  # many exact ties with the thresholds and between classes
    labels = torch.tensor([[1.0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]])
    thresholds = [0.0, 0.3, 0.5, 0.9, 1.0]
    maps = cam_label_maps(norm, labels, thresholds)
    assert maps.shape == (5, 3, 6, 5) and maps.dtype == torch.uint8
    for t, threshold in enumerate(thresholds):
        assert torch.equal(maps[t].long(), constant_background_argmax(norm, labels, threshold))
    assert maps[:, 1].eq(0).all()  # an image without labels is background everywhere
    alone = cam_label_maps(norm, labels, None)  # no background class: the argmax over the image's classes
    assert alone.shape == (1, 3, 6, 5) and torch.equal(alone[0].long(), constant_background_argmax(norm, labels, None))
    assert set(alone[0, 0].unique().tolist()) <= {0, 2, 3} and alone[0, 2].eq(1).all()


def test_cam_label_maps_equal_the_argmax_of_the_cam_distribution_with_background():
    """The maps evaluate scored CAMs with before (argmax of ``cam_probabilities``): the same on realistic CAMs."""
    from asdt_lightning.method.fusion import cam_probabilities

    generator = torch.Generator().manual_seed(0)
    raw = F.interpolate(torch.randn(4, 6, 8, 8, generator=generator), (64, 64), mode="bilinear")
    labels = (torch.rand(4, 6, generator=generator) > 0.6).float()
    labels[:, 0] = 1
    norm = normalize_cams(raw, labels)
    maps = cam_label_maps(norm, labels, CAM_THRESHOLDS)
    for t, threshold in enumerate(CAM_THRESHOLDS):
        assert torch.equal(maps[t].long(), cam_probabilities(norm, labels, threshold).argmax(1))


def test_cam_label_maps_of_many_classes_are_long():
    norm = torch.rand(1, 300, 2, 3)
    labels = torch.ones(1, 300)
    maps = cam_label_maps(norm, labels, [0.5])
    assert maps.dtype == torch.long and torch.equal(maps[0], constant_background_argmax(norm, labels, 0.5))


def test_refinement_teacher_labels_stay_within_the_image_classes():
    img, _, _ = scene()
    probs = torch.softmax(torch.randn(1, 3, H, W) * 3, 1)
    labels = torch.tensor([[0.0, 1.0]])  # only class 2 (index 1) present
    y = refinement_teacher_labels(img, probs, labels, CRFParams(iterations=3, window=5), confidence=0.0)
    assert set(y.unique().tolist()) <= {0, 2}
    strict = refinement_teacher_labels(img, probs, labels, CRFParams(iterations=3, window=5), confidence=0.999)
    assert (strict == IGNORE_INDEX).sum() > (y == IGNORE_INDEX).sum()


def test_otsu_thresholds_split_each_image_between_its_two_modes():
    low, high = torch.full((1, 8, 8), 0.15), torch.full((1, 8, 8), 0.75)
    values = torch.cat([torch.cat([low, high], 2), torch.cat([high * 0 + 0.05, high * 0 + 0.35], 2)])  # (2, 8, 16)
    t = otsu_thresholds(values)
    assert t.shape == (2,)
    assert 0.15 < t[0] <= 0.75 and 0.05 < t[1] <= 0.35  # per image, between its own modes
    valid = torch.ones(2, 8, 16, dtype=torch.bool)
    valid[:, :, :8] = False  # only one mode left: the cut is not pulled towards the masked-out values
    values[0, :, 8:12] = 0.55
    assert 0.55 < otsu_thresholds(values, valid)[0] <= 0.75
    assert otsu_thresholds(values, torch.zeros_like(valid)).tolist() == [0.5, 0.5]  # nothing valid


def test_otsu_background_labels_the_rim_of_a_wide_cam_that_the_power_rule_leaves_unlabelled():
    img, _, labels = scene()
    cam = torch.full((H, W), 0.4)  # a pretrained backbone's wide CAM: 0.4 all over the background ...
    cam[5:11, 5:11] = 1.0  # ... and its peak on the object
    norm = torch.stack([cam, torch.zeros(H, W)])[None]
    rim = torch.zeros(H, W, dtype=torch.bool)
    rim[:2], rim[-2:], rim[:, :2], rim[:, -2:] = True, True, True, True
    power = reliable_cam_labels(img, norm, labels, PARAMS)[0]
    otsu = reliable_cam_labels(img, norm, labels, dataclasses.replace(PARAMS, background="otsu"))[0]
    assert (power[rim] == 0).float().mean() < 0.5
    assert (otsu[rim] == 0).float().mean() > 0.9
    assert otsu[7, 7] == 1 and torch.all(otsu[5:11, 5:11] != 0)  # the object stays foreground


def test_teacher_a_refuses_an_unknown_background_rule_or_margin():
    with pytest.raises(ValueError, match="background must be one of power, otsu"):
        TeacherAParams(background="mean")
    with pytest.raises(ValueError, match="otsu_margin"):
        TeacherAParams(otsu_margin=0.5)
