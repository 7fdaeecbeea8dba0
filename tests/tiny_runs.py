"""The overrides that make a run tiny: the one copy, in parts that test files build on.

- ``tiny_synthetic``: the size of the synthetic dataset (``dataset=synthetic``, the default, only);
- ``tiny_batches``: crops, validation images and batches of a few pixels, no loader workers (any dataset);
- ``TINY_MODEL``: thin heads and one CAM scale (any dataset);
- ``TINY_TRAINING``: all that is dataset-independent: 64-px batches, the tiny model, on the CPU, no model summary
  (its FLOPs count costs a forward); for ``dataset=voc`` runs;
- ``TINY_RUN``: a whole tiny training run on the default dataset (8 synthetic 64-px images).
"""

SIZE = 64  # px: crops and validation images of the tiny runs


def tiny_synthetic(num_train: int = 8, num_val: int = 4, image_size: int = SIZE) -> list[str]:
    """The overrides of a synthetic dataset of ``num_train`` + ``num_val`` images of ``image_size`` px."""
    return [
        f"dataset.synthetic.num_train={num_train}",
        f"dataset.synthetic.num_val={num_val}",
        f"dataset.synthetic.image_size={image_size}",
    ]


def tiny_batches(size: int = SIZE) -> list[str]:
    """Crops and validation images of ``size`` px in batches of 2, loaded in the main process."""
    crops = [f"dataset.crop_size={size}", f"dataset.val_size={size}"]
    return [*crops, "dataset.batch_size=2", "dataset.val_batch_size=2", "dataset.num_workers=0"]


TINY_MODEL = ["model.net.head_channels=8", "model.cam_scales=[1.0]"]
TINY_TRAINING = [*tiny_batches(), *TINY_MODEL, "trainer.accelerator=cpu", "trainer.enable_model_summary=false"]
TINY_SYNTHETIC = tiny_synthetic()
TINY_RUN = [*TINY_SYNTHETIC, *TINY_TRAINING]
NO_PROGRESS_BAR = ["trainer.enable_progress_bar=false"]
