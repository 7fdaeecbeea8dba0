"""Pseudo-mask export: files, resume after a crash (byte-identical), refusals, CRF choices."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import asdt_lightning.pseudo_labels as pl
from asdt_lightning.data.voc import read_mask
from asdt_lightning.errors import ASDTUserError
from wsss_helpers import TINY_DATA, compose_plain, save_asdt_checkpoint

FAST = ["num_workers=0", "batch_size=3", "progress=false", "crf_params.iterations=2", "crf_params.window=5"]


def export(ckpt, out, *extra):
    return pl.run_export(compose_plain("pseudo_labels", f"ckpt={ckpt}", f"out={out}", *FAST, *extra))


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


@pytest.fixture
def ckpt(tmp_path):
    return save_asdt_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")


def test_export_writes_palette_masks_at_original_size_with_confidence(ckpt, tmp_path):
    summary = export(ckpt, tmp_path / "masks", "save_confidence=true", "confidence=0.5", "crf=local")
    assert summary["written"] == 10 and summary["skipped"] == 0
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(masks) == 10
    for path in masks:
        with Image.open(path) as im:
            assert im.mode == "P" and im.size == (48, 48)
            assert im.getpalette()[3:6] == [128, 0, 0]  # VOC colour of label 1
        mask = read_mask(path)
        conf = np.asarray(Image.open(tmp_path / "masks" / "confidence" / path.name))
        assert set(np.unique(mask)) <= set(range(7)) | {255}
        assert ((conf < 0.5 * 255 - 1) <= (mask == 255)).all()  # unconfident pixels are ignore
        assert (mask[conf > 0.5 * 255 + 1] != 255).all()


def test_interrupted_export_resumes_to_identical_files(ckpt, tmp_path, monkeypatch):
    export(ckpt, tmp_path / "full", "save_confidence=true")
    reference = digests(tmp_path / "full")
    assert len(reference) == 20

    real_write = pl.write_mask_png
    calls = {"n": 0}

    def crash_after_four(path, mask):
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed half way")
        calls["n"] += 1
        return real_write(path, mask)

    monkeypatch.setattr(pl, "write_mask_png", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        export(ckpt, tmp_path / "resumed", "save_confidence=true")
    assert len(list((tmp_path / "resumed").glob("*.png"))) == 4
    (tmp_path / "resumed" / ".syn_000009.png.abc.tmp").write_bytes(b"half a file")  # as a SIGKILL leaves it
    monkeypatch.setattr(pl, "write_mask_png", real_write)

    summary = export(ckpt, tmp_path / "resumed", "save_confidence=true")
    assert summary["skipped"] == 4 and summary["written"] == 6 and summary["stale_temporaries_removed"] == 1
    assert digests(tmp_path / "resumed") == reference
    assert not list((tmp_path / "resumed").glob(".*"))


def test_export_killed_half_way_resumes_to_identical_files(ckpt, tmp_path):
    """SIGKILL a real export process half way, run it again: every file valid and identical to a whole run."""
    more = ["dataset.synthetic.num_train=24"]  # enough images that the kill lands half way
    slow = ["crf=local", "crf_params.iterations=20", "batch_size=1"]
    export(ckpt, tmp_path / "full", *more, *slow)
    reference = digests(tmp_path / "full")
    assert len(reference) == 24

    out = tmp_path / "killed"
    args = [f"ckpt={ckpt}", f"out={out}", *FAST, *TINY_DATA, *more, *slow, "hydra.run.dir=" + str(tmp_path / "h")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "asdt_lightning.pseudo_labels", *args],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.png"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = len(list(out.glob("*.png")))
    assert 3 <= done < 24  # killed half way
    for path in out.glob("*.png"):  # whatever it left under a final name is a whole, valid mask
        assert read_mask(path).shape == (48, 48)

    summary = export(ckpt, out, *more, *slow)
    assert summary["skipped"] == done and summary["written"] == 24 - done
    assert digests(out) == reference
    assert not list(out.glob(".*"))  # no temporary left behind


def test_a_broken_mask_is_redone(ckpt, tmp_path):
    export(ckpt, tmp_path / "masks")
    reference = digests(tmp_path / "masks")
    victim = tmp_path / "masks" / "syn_000003.png"
    victim.write_bytes(victim.read_bytes()[:40])  # truncated by some other tool
    summary = export(ckpt, tmp_path / "masks")
    assert summary["written"] == 1
    assert digests(tmp_path / "masks") == reference


def test_folder_of_other_settings_is_refused(ckpt, tmp_path):
    export(ckpt, tmp_path / "masks")
    with pytest.raises(ASDTUserError, match="other settings.*crf"):
        export(ckpt, tmp_path / "masks", "crf=local")


@pytest.mark.parametrize(
    ("classes", "message"),
    [(["a", "b", "c"], "trained on 3 classes"), (["apple", "bell", "cone", "drum", "egg", "fig"], "class 5 is 'fig'")],
)
def test_checkpoint_of_another_dataset_is_refused_in_one_line(tmp_path, classes, message):
    ckpt = save_asdt_checkpoint(tmp_path / "other.ckpt", class_names=classes)
    with pytest.raises(ASDTUserError, match=message) as err:
        export(ckpt, tmp_path / "masks")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "masks").exists()  # refused before anything was written


def test_missing_or_foreign_checkpoint_is_refused(tmp_path):
    with pytest.raises(ASDTUserError, match="not found"):
        export(tmp_path / "nope.ckpt", tmp_path / "masks")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ASDTUserError, match="cannot read checkpoint"):
        export(junk, tmp_path / "masks")


def test_cam_branch_takes_the_threshold_from_the_run(ckpt, tmp_path):
    with pytest.raises(ASDTUserError, match="cam_threshold"):
        export(ckpt, tmp_path / "masks", "branch=cam")
    (ckpt.parent.parent / "metrics.json").write_text('{"cam_threshold": 0.99}')
    export(ckpt, tmp_path / "masks", "branch=cam")
    # a 0.99 background score beats almost every normalised CAM: (nearly) all background
    masks = np.stack([read_mask(p) for p in (tmp_path / "masks").glob("*.png")])
    assert (masks == 0).mean() > 0.9


def test_dense_crf_needs_the_extra_or_runs(ckpt, tmp_path, monkeypatch):
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        with pytest.raises(ASDTUserError, match="pip install"):
            export(ckpt, tmp_path / "masks", "crf=dense")
        return
    summary = export(ckpt, tmp_path / "masks", "crf=dense")
    assert summary["written"] == 10
    block_pydensecrf(monkeypatch)
    with pytest.raises(ASDTUserError, match="pip install 'asdt-lightning\\[crf\\]'"):
        export(ckpt, tmp_path / "masks2", "crf=dense")


def test_flip_tta_of_a_pixelwise_model_equals_the_plain_pass():
    """A pixel-wise model commutes with flips, so flip TTA equals the plain pass only if the flip is undone."""
    from asdt_lightning.method.fusion import tta_outputs

    def predict(x):
        return {"refine": torch.softmax(x[:, :2], 1), "cam": x[:, :1].abs()}

    images = torch.randn(2, 3, 16, 16)
    plain = tta_outputs(predict, images, (1.0,), False)
    flipped = tta_outputs(lambda x: predict(x), images, (1.0,), True)
    # the prediction is pixel-wise, so flip-and-unflip reproduces it exactly
    assert torch.allclose(plain["refine"], flipped["refine"], atol=1e-6)
    multi = tta_outputs(predict, images, (1.0, 0.5), True)
    assert multi["refine"].shape == plain["refine"].shape
    assert torch.allclose(multi["cam"].flatten(2).amax(2), torch.ones(2, 1))  # CAMs re-normalised to peak 1


def compose_voc(*overrides):
    """The pseudo_labels config with dataset=voc (no synthetic-only overrides)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="asdt_lightning.conf", version_base="1.3"):
        return OmegaConf.to_container(compose("pseudo_labels", overrides=["dataset=voc", *overrides]), resolve=True)


def voc_test_root(tmp_path, sizes):
    """A VOC root whose ``test`` list has images only (no Annotations/, no masks), of the given (H, W) sizes."""
    from PIL import Image as PILImage

    from data_roots import make_voc

    names = [f"t{i}" for i in range(len(sizes))]
    root = make_voc(tmp_path, {n: [] for n in names}, lists={"test": names})
    for i, (name, (h, w)) in enumerate(zip(names, sizes, strict=True)):
        rng = np.random.default_rng(i)
        PILImage.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
    for sub in ("Annotations", "SegmentationClass"):
        for f in (root / sub).iterdir():
            f.unlink()
        (root / sub).rmdir()
    return root, names


def test_voc_test_split_is_exported_with_image_labels_the_classifier_predicts(tmp_path, monkeypatch):
    from asdt_lightning.data.voc import VOC_CLASSES

    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root, names = voc_test_root(tmp_path, [(30, 40), (36, 28), (30, 40)])
    voc_ckpt = save_asdt_checkpoint(tmp_path / "voc_run" / "checkpoints" / "last.ckpt", class_names=VOC_CLASSES)
    data = [f"dataset.root={root}", "split=test", "num_workers=0", "progress=false"]
    cfg = compose_voc(f"ckpt={voc_ckpt}", f"out={tmp_path / 'test_masks'}", *data)
    summary = pl.run_export(cfg)
    assert summary["written"] == 3
    for name, size in zip(names, [(30, 40), (36, 28), (30, 40)], strict=True):
        mask = read_mask(tmp_path / "test_masks" / f"{name}.png")
        assert mask.shape == size
        assert set(np.unique(mask)) - {0, 255}, "at least one predicted class appears"
    manifest = (tmp_path / "test_masks" / "export.json").read_text()
    assert "predicted_image_labels_threshold" in manifest
    with pytest.raises(ASDTUserError, match="label_threshold"):
        pl.run_export({**cfg, "label_threshold": 1.5})


def test_predicted_image_labels_keep_at_least_the_top_class():
    from types import SimpleNamespace

    from asdt_lightning.lit.inference import predicted_image_labels

    logits = torch.tensor([[3.0, -2.0, 0.5], [-4.0, -1.0, -3.0]])
    module = SimpleNamespace(net=lambda images: SimpleNamespace(class_logits=logits))
    labels = predicted_image_labels(module, torch.zeros(2, 3, 4, 4), threshold=0.5)
    assert labels.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]


def test_masks_do_not_depend_on_the_batch_size_when_image_sizes_differ(tmp_path, monkeypatch):
    """Images are batched with images of their own size only: nothing is padded into another image's input."""
    from asdt_lightning.data.inference import same_size_batches
    from asdt_lightning.data.voc import VOC_CLASSES

    assert same_size_batches([(2, 3), (4, 4), (2, 3), (2, 3), (4, 4)], 2) == [[0, 2], [1, 4], [3]]
    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root, _ = voc_test_root(tmp_path, [(30, 40), (64, 48), (30, 40), (20, 20), (64, 48)])
    voc_ckpt = save_asdt_checkpoint(tmp_path / "voc_run" / "checkpoints" / "last.ckpt", class_names=VOC_CLASSES)
    data = [f"dataset.root={root}", "split=test", "num_workers=0", "progress=false"]
    for batch_size in (1, 4):
        pl.run_export(
            compose_voc(f"ckpt={voc_ckpt}", f"out={tmp_path / f'b{batch_size}'}", *data, f"batch_size={batch_size}")
        )
    assert digests(tmp_path / "b1") == digests(tmp_path / "b4") and len(digests(tmp_path / "b1")) == 5


def test_fusion_defaults_to_the_checkpoints_own_and_an_explicit_one_overrides_it(tmp_path):
    ckpt = save_asdt_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", fusion="mean")
    for name, overrides in (("default", []), ("mean", ["fusion=mean"]), ("max", ["fusion=max"])):
        export(ckpt, tmp_path / name, *overrides)
    assert json.loads((tmp_path / "default" / "export.json").read_text())["params"]["fusion"] == "mean"
    assert digests(tmp_path / "default") == digests(tmp_path / "mean") != digests(tmp_path / "max")
    assert export(ckpt, tmp_path / "default", "fusion=mean")["skipped"] == 10  # the manifest holds the rule used


def block_pydensecrf(monkeypatch):
    """Make ``import pydensecrf...`` fail, as without the crf extra."""
    import builtins

    real_import = builtins.__import__

    def no_pydensecrf(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydensecrf)


def test_crf_auto_is_the_dense_crf_with_pydensecrf2_and_none_without(ckpt, tmp_path, monkeypatch, capsys):
    from asdt_lightning.method.dense_crf import resolve_crf

    pytest.importorskip("pydensecrf.densecrf")
    assert compose_plain("pseudo_labels", "ckpt=x")["crf"] == "auto"
    assert [resolve_crf(c) for c in ("auto", "none", "local", "dense")] == ["dense", "none", "local", "dense"]
    export(ckpt, tmp_path / "with")  # the default
    assert json.loads((tmp_path / "with" / "export.json").read_text())["params"]["crf"] == "dense"
    assert "crf=auto: the exact dense CRF" in capsys.readouterr().out
    export(ckpt, tmp_path / "dense", "crf=dense")
    assert digests(tmp_path / "with") == digests(tmp_path / "dense")

    block_pydensecrf(monkeypatch)
    assert resolve_crf("auto") == "none" and resolve_crf("local") == "local"
    export(ckpt, tmp_path / "without")
    assert json.loads((tmp_path / "without" / "export.json").read_text())["params"]["crf"] == "none"
    note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("crf=auto")]
    assert note == [
        "crf=auto: no CRF (pydensecrf2 is not installed; pip install 'asdt-lightning[crf]' for the exact dense CRF, "
        "or crf=local)"
    ]
    export(ckpt, tmp_path / "none", "crf=none")
    assert digests(tmp_path / "without") == digests(tmp_path / "none")


SERVER_DIR = "results/VOC2012/Segmentation/comp6_test_cls"


@pytest.mark.parametrize("kind", ["asdt", "segmenter"])
def test_voc_test_is_exported_in_the_evaluation_servers_layout(tmp_path, monkeypatch, kind):
    """``layout=voc_server``: exactly results/VOC2012/Segmentation/comp6_test_cls/<name>.png, VOC-palette 'P' PNGs at
    each image's size with labels 0..20 only, resumable, and the archive command it prints packs that folder."""
    import shlex
    import tarfile

    from asdt_lightning.data.voc import VOC_CLASSES, voc_palette
    from segmenter_helpers import save_segmenter_checkpoint

    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    sizes = [(30, 40), (36, 28), (30, 40)]
    root, names = voc_test_root(tmp_path, sizes)
    run = tmp_path / "run" / "checkpoints" / "last.ckpt"
    save = save_asdt_checkpoint if kind == "asdt" else save_segmenter_checkpoint
    voc_ckpt = save(run, class_names=VOC_CLASSES)
    out = tmp_path / "server"
    args = [f"ckpt={voc_ckpt}", f"out={out}", f"dataset.root={root}", "split=test", "layout=voc_server", *FAST]
    summary = pl.run_export(compose_voc(*args))
    assert summary["written"] == 3 and summary["mask_dir"] == str(out / SERVER_DIR)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted([*(f"{SERVER_DIR}/{n}.png" for n in names), "export.json"])
    for name, (h, w) in zip(names, sizes, strict=True):
        with Image.open(out / SERVER_DIR / f"{name}.png") as im:
            assert (im.format, im.mode, im.size) == ("PNG", "P", (w, h))
            assert im.getpalette()[:768] == voc_palette()
        assert set(np.unique(read_mask(out / SERVER_DIR / f"{name}.png"))) <= set(range(21))
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["layout"] == "voc_server" and manifest["params"]["restrict"] is False
    assert summary["upload"] == f"tar -czf results.tgz -C {out} results"
    assert pl.run_export(compose_voc(*args))["skipped"] == 3  # resumable as the flat layout

    subprocess.run(shlex.split(summary["upload"]), check=True, cwd=tmp_path)  # the printed command as it is
    with tarfile.open(tmp_path / "results.tgz") as tar:
        packed = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert packed == sorted(f"{SERVER_DIR}/{n}.png" for n in names)
    no_out = [a for a in args if not a.startswith("out=")]
    default = pl.run_export(compose_voc(*no_out))["out"]  # beside the run's pseudo_masks/
    assert default == str(tmp_path / "run" / "voc_server" / "test")


def test_voc_server_export_never_takes_ground_truth_image_labels(tmp_path, monkeypatch):
    """Even on a list with annotations (val), the server layout predicts every image's classes with the classifier
    and scores R, S and fused over all classes (evaluate image_labels=false); the flat layout takes the labels."""
    from asdt_lightning.data.voc import VOC_CLASSES
    from data_roots import make_voc

    monkeypatch.setenv("ASDT_CACHE", str(tmp_path / "cache"))
    root = make_voc(tmp_path, {"a": ["cat"], "b": ["dog", "person"]})
    voc_ckpt = save_asdt_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", class_names=VOC_CLASSES)
    predicted, restricted = [], []
    real_predicted, real_outputs = pl.predicted_image_labels, pl.model_outputs
    monkeypatch.setattr(pl, "predicted_image_labels", lambda *a: predicted.append(1) or real_predicted(*a))
    monkeypatch.setattr(pl, "model_outputs", lambda *a: restricted.append(a[-1]) or real_outputs(*a))
    common = [f"ckpt={voc_ckpt}", f"dataset.root={root}", "split=val", *FAST]
    pl.run_export(compose_voc(*common, f"out={tmp_path / 'flat'}"))
    assert (predicted, set(restricted)) == ([], {True})
    restricted.clear()
    pl.run_export(compose_voc(*common, f"out={tmp_path / 'server'}", "layout=voc_server"))
    assert predicted and set(restricted) == {False}
    assert "predicted_image_labels_threshold" in json.loads((tmp_path / "server" / "export.json").read_text())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["layout=zip"], "unknown layout 'zip'; choose one of flat, voc_server"),
        (["layout=voc_server"], "layout=voc_server is the PASCAL VOC server's; use dataset=voc, not synthetic"),
        (["layout=voc_server", "dataset=voc", "confidence=0.5"], "needs confidence=0: the server scores labels 0..20"),
        (["layout=voc_server", "dataset=voc", "save_confidence=true"], "writes label maps only"),
    ],
)
def test_server_layout_refusals_come_before_the_checkpoint_is_read(tmp_path, overrides, message):
    given = [
        f"ckpt={tmp_path / 'missing.ckpt'}",
        f"out={tmp_path / 'o'}",
        *(o for o in overrides if o != "dataset=voc"),
    ]
    cfg = compose_voc(*given) if "dataset=voc" in overrides else compose_plain("pseudo_labels", *given)
    with pytest.raises(ASDTUserError, match=re.escape(message)) as err:
        pl.run_export(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "o").exists()
