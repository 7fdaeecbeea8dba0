"""Values shared by the data, the method and the metrics."""

IGNORE_INDEX = 255  # label of pixels that no loss or metric counts (VOC's boundary band, padding, unreliable)
