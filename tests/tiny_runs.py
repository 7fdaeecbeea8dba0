"""The overrides that make a training run tiny (8 synthetic 64-px images, thin heads, no workers): one copy."""

TINY_RUN = [
    "dataset.synthetic.num_train=8",
    "dataset.synthetic.num_val=4",
    "dataset.synthetic.image_size=64",
    "dataset.crop_size=64",
    "dataset.val_size=64",
    "dataset.batch_size=2",
    "dataset.val_batch_size=2",
    "dataset.num_workers=0",
    "model.net.head_channels=8",
]
